"""onnxruntime backend: runs a part's ONNX graph from the engine cache (exported on first use if missing).

The graph is looked up by its key (``engines.cache``); on a miss it is exported once from the built torch module,
checked against it and cached, so ``create_engine(..., backend="onnxruntime")`` works without a separate
``build-engines`` step (which does the same ahead of time). A CPU device uses the CPU execution provider with as
many intra-op threads as torch; a CUDA device needs ``onnxruntime-gpu`` (CUDA provider). fp32 everywhere; fp16 on
CUDA only (the CPU provider lacks many fp16 kernels); bf16 is not offered (ONNX Runtime has almost no bf16
kernels). Inputs/outputs travel through NumPy (a host copy: use TensorRT or compile for GPU throughput).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _is_cuda(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def available(device: Any = None) -> tuple[bool, str]:
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        return False, f"cannot import onnx/onnxruntime ({exc})"
    if _is_cuda(device) and "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu for CUDA devices)"
    return True, f"onnxruntime {ort.__version__}"


def check_precision(precision: str, device: Any) -> None:
    if precision == "bf16":
        raise ValueError("backend 'onnxruntime' does not run bf16; use precision='fp32' (or 'fp16' on CUDA)")
    if precision == "fp16" and not _is_cuda(device):
        raise ValueError("backend 'onnxruntime' runs fp16 on CUDA only; use precision='fp32' on a CPU")


class OrtRunner:
    """Runs one ONNX graph: torch tensors in (any device), fp32 torch tensors out on ``device``."""

    name = "onnxruntime"

    def __init__(self, path: str, *, input_names: tuple[str, ...], precision: str, device: Any) -> None:
        import numpy as np
        import onnxruntime as ort

        self.device, self.path = device, path
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if _is_cuda(device) else ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if not _is_cuda(device):  # same CPU threads as torch, so eager-vs-onnxruntime comparisons are fair
            import torch

            opts.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        if _is_cuda(device) and self.session.get_providers()[0] != "CUDAExecutionProvider":
            log.warning("onnxruntime could not load its CUDA provider for %s (missing CUDA/cuDNN libraries?); "
                        "running on the CPU: %s", path, self.session.get_providers())
        self.names = tuple(input_names)  # positional order of __call__; the exporter may drop unused inputs
        self.graph_inputs = {i.name for i in self.session.get_inputs()}
        self.float_dtype = np.float16 if precision == "fp16" else np.float32

    def available(self) -> tuple[bool, str]:
        return available(self.device)

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        import torch

        feed = {}
        for name, x in zip(self.names, inputs, strict=True):
            if name not in self.graph_inputs:
                continue
            arr = x.detach().cpu().contiguous().numpy()
            feed[name] = arr.astype(self.float_dtype, copy=False) if x.is_floating_point() else arr
        outs = self.session.run(None, feed)
        return tuple(torch.from_numpy(o).float().to(self.device) for o in outs)


def make_runner(
    part: str, module: Any, *, spec: Any, built: Any, weights: Any, precision: str, device: Any
) -> OrtRunner:
    from relight_stream.engines.build import ensure_onnx

    path, _ = ensure_onnx(spec, built, part, weights=weights, precision=precision)
    return OrtRunner(str(path), input_names=built.io[part].inputs, precision=precision, device=device)
