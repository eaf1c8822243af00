"""TensorRT backend: deserialises a cached plan and runs it with ``execute_async_v3`` on torch's CUDA stream.

Plans are built ahead of time by ``relight-stream build-engines --backend tensorrt`` (``build_plan`` below: ONNX
parser, optimisation profile over the batch axis, FP16/BF16 builder flags) and cached under a key that includes
the TensorRT version and the GPU's compute capability, with a JSON sidecar. A missing, stale (other weights,
shapes, precision) or foreign (other TensorRT version or GPU) plan is refused with the command that rebuilds it.
Written against the documented TensorRT 10 Python API; TensorRT cannot be installed on the project's CPU
machines, so this code runs only where ``import tensorrt`` works and CUDA is present.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from relight_stream.engines.cache import EngineKey, lookup

log = logging.getLogger(__name__)


def available(device: Any = None) -> tuple[bool, str]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        return False, f"cannot import tensorrt ({exc})"
    import torch

    if not torch.cuda.is_available():
        return False, "TensorRT needs a CUDA GPU and none is visible"
    if device is not None and getattr(device, "type", str(device)) != "cuda":
        return False, f"TensorRT runs on CUDA devices only, not {device}"
    return True, f"TensorRT {trt.__version__}"


def check_precision(precision: str, device: Any) -> None:
    """fp32, fp16 and bf16 are builder flags on the same fp32 ONNX graph."""


def trt_version() -> str:
    import tensorrt as trt

    return trt.__version__


def compute_capability(device: Any = None) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def plan_key(spec: Any, built: Any, part: str, *, weights: Any, precision: str, batch: str, device: Any = None,
             runtime: str | None = None, capability: str | None = None) -> EngineKey:
    """Cache key of a plan; ``runtime``/``capability`` default to this machine's TensorRT and GPU."""
    from relight_stream.engines.build import input_shapes

    return EngineKey(spec.kind, spec.flavor, part, precision, input_shapes(built, part), batch, weights.ident,
                     "tensorrt", runtime or f"trt{trt_version()}", capability or compute_capability(device))


def build_plan(onnx_path: Path, plan_path: Path, *, precision: str, min_batch: int, opt_batch: int, max_batch: int,
               fixed_shapes: dict[str, tuple[int, ...]] | None = None, workspace_gb: float = 8.0) -> Path:
    """Parse ``onnx_path`` and serialise an engine to ``plan_path`` (atomically).

    Dynamic non-batch axes take the sizes in ``fixed_shapes`` (input name -> full example shape).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list((fixed_shapes or {}).get(tensor.name, tensor.shape))
        rest = [int(s) for s in shape[1:]]
        if any(s < 0 for s in rest):
            raise ValueError(f"input {tensor.name} has dynamic non-batch axes {shape}; give fixed_shapes")
        profile.set_shape(tensor.name, (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan_path)
    return plan_path


class TrtRunner:
    """Runs one plan on its device; inputs are moved to the GPU and cast to the plan's input dtypes; batches
    above the profile's maximum are split, batches below its minimum padded; other shapes outside the profile
    raise ``ValueError``."""

    name = "tensorrt"

    def __init__(self, plan_path: Path, *, io: Any, device: Any) -> None:
        import tensorrt as trt
        import torch

        self.device = device
        self._trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(device):  # TensorRT works on the current device: make it this engine's one
            self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise ValueError(f"TensorRT could not deserialise {plan_path}; rebuild it with build-engines")
        with torch.cuda.device(device):
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        engine_inputs = {n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        if engine_inputs != set(io.inputs) or set(names) - engine_inputs != set(io.outputs):
            raise ValueError(f"{plan_path} has tensors {names}, expected {io.inputs} -> {io.outputs}; rebuild it")
        self.inputs, self.outputs = list(io.inputs), list(io.outputs)  # the part's positional order
        dt = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64,
              trt.bool: torch.bool}
        if hasattr(trt, "bfloat16"):
            dt[trt.bfloat16] = torch.bfloat16
        self.dtypes = {n: dt[self.engine.get_tensor_dtype(n)] for n in names}
        lo, _, hi = self.engine.get_tensor_profile_shape(self.inputs[0], 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.plan_path = plan_path

    def available(self) -> tuple[bool, str]:
        return available(self.device)

    def _run(self, inputs: list[Any]) -> tuple[Any, ...]:
        import torch

        stream = torch.cuda.current_stream(self.device)
        for name, x in zip(self.inputs, inputs, strict=True):
            if not self.context.set_input_shape(name, tuple(x.shape)):  # outside the optimisation profile
                lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
                raise ValueError(f"input {name} of shape {tuple(x.shape)} is outside the profile of {self.plan_path} "
                                 f"({tuple(lo)} .. {tuple(hi)}); rebuild it with build-engines for this shape")
            self.context.set_tensor_address(name, x.data_ptr())
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        with torch.cuda.device(self.device):
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
        return tuple(o.float() for o in outs)

    def _run_padded(self, xs: list[Any]) -> tuple[Any, ...]:
        """A batch below the profile's minimum (a fixed-batch plan, the last chunk of a split) is padded with
        copies of its last sample, and the outputs cut back."""
        import torch

        b = xs[0].shape[0]
        if b >= self.min_batch:
            return self._run(xs)
        pad = [torch.cat([x, x[-1:].expand(self.min_batch - b, *x.shape[1:])]).contiguous() for x in xs]
        return tuple(o[:b] for o in self._run(pad))

    def __call__(self, *inputs: Any) -> tuple[Any, ...]:
        import torch

        xs = [x.to(self.device, self.dtypes[n]).contiguous() for n, x in zip(self.inputs, inputs, strict=True)]
        b = xs[0].shape[0]
        if b <= self.max_batch:
            return self._run_padded(xs)
        chunks = [self._run_padded([x[i : i + self.max_batch] for x in xs]) for i in range(0, b, self.max_batch)]
        return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))


def precheck(spec: Any, weights: Any, precision: str, device: Any) -> None:
    """Refuse early (before the model is built) when no plan for this engine, precision, TensorRT and GPU exists."""
    from relight_stream.engines.cache import CACHE_ENV, EngineCacheMiss, cache_root

    want = {"weights": weights.ident, "precision": precision, "runtime": f"trt{trt_version()}",
            "device": compute_capability(device)}
    folder = cache_root() / spec.kind / spec.flavor
    for side in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        key = json.loads(side.read_text()).get("key", {})
        if key.get("fmt") == "tensorrt" and all(key.get(k) == v for k, v in want.items()):
            return
    cmd = (f"relight-stream build-engines --kind {spec.kind} --flavor {spec.flavor} --backend tensorrt "
           f"--precision {precision}")
    raise EngineCacheMiss(
        f"no TensorRT plan for {spec.kind}/{spec.flavor} ({precision}, TensorRT {trt_version()}, "
        f"{want['device']}, weights {weights.ident}) in {folder}; build it with `{cmd}` (and set {CACHE_ENV} to "
        "the folder given to --out)"
    )


def make_runner(
    part: str, module: Any, *, spec: Any, built: Any, weights: Any, precision: str, device: Any
) -> TrtRunner:
    key = plan_key(spec, built, part, weights=weights, precision=precision, batch="*", device=device)
    path = lookup(key, ignore=("batch",))
    return TrtRunner(path, io=built.io[part], device=device)
