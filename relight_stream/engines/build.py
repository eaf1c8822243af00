"""``relight-stream build-engines``: export engine parts to ONNX, check them against eager torch, build TRT plans.

Reads a (kind, flavor, weights) from the registry; writes into the engine cache (``--out`` or the default root,
see ``engines.cache``) one ONNX graph per part (dynamic or fixed batch) and, for ``--backend tensorrt``, one plan
per part, each with a JSON sidecar holding its key, the ONNX-vs-torch parity errors and versions. Exports use the
TorchScript-based ``torch.onnx.export(dynamo=False)``: on these models it is ~10× faster than the dynamo exporter
and matches eager to ≤ 1e-6, while the dynamo exporter produced an invalid text-tower graph (duplicate names).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from relight_stream.engines.cache import EngineCacheMiss, EngineKey, cache_root, lookup, write_sidecar
from relight_stream.engines.spec import BuiltModel, EngineSpec, WeightsRef

log = logging.getLogger(__name__)
OPSET = 18
PARITY_TOL = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 5e-2}
"""Largest accepted max-abs error relative to the output's max magnitude, per precision."""


def input_shapes(built: BuiltModel, part: str) -> tuple[tuple[int, ...], ...]:
    """Shapes of ``part``'s inputs with ``-1`` on dynamic axes (batch, and any the part declares)."""
    io = built.io[part]
    shapes = []
    for name, x in zip(io.inputs, built.example_inputs[part](1), strict=True):
        shp = [-1, *x.shape[1:]]
        for axis in io.dynamic_axes.get(name, {}):
            shp[axis] = -1
        shapes.append(tuple(int(s) for s in shp))
    return tuple(shapes)


def onnx_key(spec: EngineSpec, built: BuiltModel, part: str, *, weights: WeightsRef, precision: str,
             batch: str = "dynamic") -> EngineKey:
    """Cache key of ``part``'s ONNX graph (device-independent)."""
    return EngineKey(spec.kind, spec.flavor, part, precision, input_shapes(built, part), batch, weights.ident,
                     "onnx", f"opset{OPSET}")


def export_onnx(module: Any, example_inputs: tuple[Any, ...], io: Any, path: Path, *, precision: str = "fp32",
                dynamic_batch: bool = True) -> Path:
    """Export ``module`` (a copy cast to ``precision``) to ``path`` atomically; batch axis dynamic if asked."""
    import torch

    from relight_stream.engines.backends.eager import torch_dtype

    dtype = torch_dtype(precision)
    mod = copy.deepcopy(module).to(dtype).eval()
    args = tuple(x.to(dtype) if x.is_floating_point() else x for x in example_inputs)
    axes: dict[str, dict[int, str]] = {}
    for name in (*io.inputs, *io.outputs):
        axes[name] = dict(io.dynamic_axes.get(name, {}))
        if dynamic_batch:
            axes[name][0] = "batch"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX symbolic
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript tracer warnings about python control flow on shapes
            torch.onnx.export(mod, args, str(tmp), input_names=list(io.inputs), output_names=list(io.outputs),
                              opset_version=OPSET, dynamo=False, dynamic_axes=axes or None, do_constant_folding=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    tmp.replace(path)
    return path


def parity(path: Path, module: Any, example_inputs: tuple[Any, ...], input_names: tuple[str, ...], *,
           precision: str = "fp32") -> dict[str, float]:
    """Run ``path`` in onnxruntime (CPU) and eager fp32 torch on the same inputs; max abs and relative error
    (max abs error over the reference's max magnitude), worst over the outputs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    if precision == "fp16":  # the CPU provider's full fusion set crashes (SIGSEGV) on fp16 attention graphs
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    np_dtype = np.float16 if precision == "fp16" else np.float32
    used = {i.name for i in sess.get_inputs()}  # the exporter drops inputs the graph does not use
    feed = {
        name: (x.numpy().astype(np_dtype) if x.is_floating_point() else x.numpy())
        for name, x in zip(input_names, example_inputs, strict=True)
        if name in used
    }
    outs = sess.run(None, feed)
    with torch.no_grad():
        ref = module.float().eval()(*example_inputs)
    max_abs = max_rel = 0.0
    for o, r in zip(outs, ref, strict=True):
        r = r.float().numpy()
        err = float(np.abs(o.astype(np.float32) - r).max())
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / max(float(np.abs(r).max()), 1e-12))
    return {"max_abs": max_abs, "max_rel": max_rel}


def ensure_onnx(spec: EngineSpec, built: BuiltModel, part: str, *, weights: WeightsRef, precision: str = "fp32",
                root: str | Path | None = None, dynamic_batch: bool = True, batch_size: int = 1,
                rebuild: bool = False) -> tuple[Path, dict[str, Any]]:
    """A valid cached ONNX graph for ``part`` (exported, checked and sidecar'd on a miss); returns (path, sidecar)."""
    batch = "dynamic" if dynamic_batch else str(batch_size)
    key = onnx_key(spec, built, part, weights=weights, precision=precision, batch=batch)
    if not rebuild:
        try:
            path = lookup(key, root)
            return path, {}
        except EngineCacheMiss:
            pass
    import onnx
    import torch

    path = key.path(root)
    n = 2 if dynamic_batch else batch_size
    inputs = built.example_inputs[part](n)
    t0 = time.perf_counter()
    export_onnx(built.parts[part], inputs, built.io[part], path, precision=precision, dynamic_batch=dynamic_batch)
    onnx.checker.check_model(str(path))
    seconds = time.perf_counter() - t0
    # check on a batch size other than the traced one, so a batch axis baked in as a constant is caught
    check_inputs = built.example_inputs[part](3 if dynamic_batch else batch_size)
    err = parity(path, built.parts[part], check_inputs, built.io[part].inputs, precision=precision)
    meta = {"parity": err, "export_s": round(seconds, 3), "torch": torch.__version__, "onnx": onnx.__version__,
            "io": {"inputs": list(built.io[part].inputs), "outputs": list(built.io[part].outputs)}}
    write_sidecar(path, key, meta)
    log.info("exported %s/%s %s -> %s in %.1fs (max abs err %.2e, rel %.2e vs eager torch)", spec.kind, spec.flavor,
             part, path, seconds, err["max_abs"], err["max_rel"])
    return path, meta


def _check_build_config(cfg: Any) -> None:
    if cfg.batch_size < 1 or cfg.max_batch < cfg.batch_size:
        raise ValueError(f"build-engines: need 1 <= batch_size <= max_batch, got {cfg.batch_size}, {cfg.max_batch}")
    if cfg.backend == "onnxruntime" and cfg.precision == "bf16":
        raise ValueError("build-engines: onnxruntime graphs are fp32 or fp16; bf16 is a TensorRT precision")


def run_build_engines(cfg: Any, run: Any) -> int:
    """Entry point of ``relight-stream build-engines``: export (and check) every part, build TRT plans if asked.

    Prints one row per part (format, precision, parity errors, seconds, path) and a JSON line last. Returns 0, or
    1 when a graph's error against eager torch exceeds ``PARITY_TOL`` for its precision.

    Raises:
        ValueError: unknown kind/flavor, unpinned weights, an unavailable backend, or bad batch settings — before
            anything is built.
    """
    import os

    from relight_stream.bench.timing import format_table, json_line
    from relight_stream.engines.backends import require
    from relight_stream.engines.registry import build_model, get_spec, resolve_device
    from relight_stream.engines.spec import parse_weights
    from relight_stream.engines.weights import check_weights

    if getattr(run, "offline", False):
        os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    spec = get_spec(cfg.kind, cfg.flavor)
    _check_build_config(cfg)
    ref = parse_weights(cfg.weights, spec)
    check_weights(ref, spec.hf_file)
    require("onnxruntime", "cpu")
    device = None
    if cfg.backend == "tensorrt":
        device = resolve_device(getattr(run, "device", "auto"))
        require("tensorrt", device)
    root = cfg.out or None
    built = build_model(spec, ref)
    rows, ok = [], True
    for part in built.parts:
        onnx_precision = cfg.precision if cfg.backend == "onnxruntime" else "fp32"  # TRT lowers precision itself
        path, meta = ensure_onnx(spec, built, part, weights=ref, precision=onnx_precision, root=root, rebuild=True,
                                 dynamic_batch=cfg.dynamic_batch, batch_size=cfg.batch_size)
        err = meta["parity"]
        good = err["max_rel"] <= PARITY_TOL[onnx_precision]
        ok &= good
        rows.append({"part": part, "format": "onnx", "precision": onnx_precision, "max_abs": err["max_abs"],
                     "max_rel": err["max_rel"], "parity": "ok" if good else "FAIL", "seconds": meta["export_s"],
                     "path": str(path)})
        if cfg.backend == "tensorrt":
            rows.append(_build_trt(spec, built, part, ref, cfg, path, device, root))
    print(format_table(rows, ["part", "format", "precision", "max_abs", "max_rel", "parity", "seconds", "path"]))
    if not ok:
        log.error("ONNX graph differs from eager torch beyond tolerance %s", PARITY_TOL)
    print(json_line({"command": "build-engines", "kind": spec.kind, "flavor": spec.flavor, "backend": cfg.backend,
                     "weights": ref.ident, "cache": str(cache_root(root)), "parts": rows, "ok": ok}))
    return 0 if ok else 1


def _build_trt(spec: EngineSpec, built: BuiltModel, part: str, ref: WeightsRef, cfg: Any, onnx_path: Path,
               device: Any, root: str | None) -> dict[str, Any]:
    from relight_stream.engines.backends import tensorrt as trt_backend
    from relight_stream.engines.cache import write_sidecar as _sidecar

    lo, hi = (1, cfg.max_batch) if cfg.dynamic_batch else (cfg.batch_size, cfg.batch_size)
    key = trt_backend.plan_key(spec, built, part, weights=ref, precision=cfg.precision, batch=f"{lo}-{hi}",
                               device=device)
    fixed = {n: tuple(x.shape) for n, x in zip(built.io[part].inputs, built.example_inputs[part](1), strict=True)}
    import torch

    t0 = time.perf_counter()
    with torch.cuda.device(device):  # TensorRT builds for the current device: the one the key names
        plan = trt_backend.build_plan(onnx_path, key.path(root), precision=cfg.precision, min_batch=lo,
                                      opt_batch=min(max(cfg.batch_size, lo), hi), max_batch=hi, fixed_shapes=fixed)
    seconds = round(time.perf_counter() - t0, 3)
    _sidecar(plan, key, {"onnx": str(onnx_path), "build_s": seconds, "gpu": _gpu_name(device)})
    return {"part": part, "format": "tensorrt", "precision": cfg.precision, "seconds": seconds, "path": str(plan)}


def _gpu_name(device: Any) -> str:
    import torch

    return torch.cuda.get_device_name(device)
