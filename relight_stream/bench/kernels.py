"""``relight-stream bench kernels``: milliseconds per image for each relighting kernel at 512² and 1024².

Reads nothing from disk (a scikit-image photo with an elliptical subject mask, built in memory); returns the bench
dict ``{"target": "kernels", "rows": [...], ...}`` that the bench runner prints as a table plus a JSON last line.
CPU rows run single-threaded (``cv2.setNumThreads(1)`` while timing; the kernels avoid BLAS on NumPy, see
``kernels/ops.py``); besides wall-clock medians each row has ``cpu_ms``, the process CPU time per call, which stays
meaningful when other jobs share the machine. When CuPy can reach a GPU, every kernel is timed again on it
with synchronised timers. The headline row is ``albedo+<degradation>``: sRGB decode to linear, Retinex albedo,
sampling and rendering one degradation, tone mapping, compositing and sRGB encode — the per-sample work of the
``albedo`` and ``relight`` stages (target: < 150 ms at 1024² on one CPU core, < 2 ms on an H100).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterator

import numpy as np

from relight_stream.bench.timing import machine_info, measure, synchronize
from relight_stream.config import BenchConfig, RunConfig
from relight_stream.kernels import color, lights, normals, render, retinex
from relight_stream.kernels.pattern_sampling import sample_pattern
from relight_stream.kernels.patterns import PATTERNS, pattern_transmission
from relight_stream.kernels.shading import light_direction, shade_sh
from relight_stream.kernels.shadows import cast_shadow
from relight_stream.kernels.specular import specular
from relight_stream.kernels.xp import cupy_status, has_cupy

log = logging.getLogger(__name__)

TARGET_CPU_MS = 150.0
TARGET_GPU_MS = 2.0
#: The reference pipeline's Retinex (8.7 s) + shading and pattern (5.7 s) at 1024² on 2 cores (FACTS.md §1).
REFERENCE_1024_MS = 14_400.0


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """OpenCV on one thread for the duration (restored afterwards)."""
    try:
        import cv2
    except ImportError:  # pragma: no cover
        yield
        return
    old = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(old)


def make_inputs(size: int) -> dict[str, Any]:
    """A photo at ``size``² with a head-and-shoulders mask and classical geometry (NumPy)."""
    try:
        from skimage import data

        import cv2

        rgb = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    except ImportError:  # pragma: no cover
        rgb = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    mask = ((((xx - 0.49) / 0.21) ** 2 + ((yy - 0.26) / 0.23) ** 2 < 1)
            | (((xx - 0.5) / 0.45) ** 2 + ((yy - 1.0) / 0.5) ** 2 < 1)).astype(np.uint8) * 255
    lin = color.srgb_to_linear(rgb)
    depth, nrm = normals.normals_from_mask(mask, lin)
    albedo, _ = retinex.estimate_albedo(lin, mask)
    return {"rgb": rgb, "mask": mask, "lin": lin, "depth": depth, "normals": nrm, "albedo": albedo}


def _records(seed: int = 0) -> dict[str, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return {k: lights.sample_relight(rng, degradation=k) for k in lights.DEGRADATIONS}


def kernel_cases(inp: dict[str, Any], *, tiny: bool) -> dict[str, Callable[[], Any]]:
    """Name -> zero-argument callable, for one set of inputs (NumPy or CuPy arrays)."""
    rgb, mask, lin, depth, nrm, alb = (inp[k] for k in ("rgb", "mask", "lin", "depth", "normals", "albedo"))
    shape = depth.shape
    d = light_direction(30.0, 35.0)
    recs = _records()
    rng = np.random.default_rng(1)
    sh_coeffs = lights.sample_relight(rng, degradation="sh")["sh"]

    def pipeline(kind: str) -> Callable[[], Any]:
        def run() -> Any:
            x = color.srgb_to_linear(rgb)
            a, _ = retinex.estimate_albedo(x, mask)
            rec = lights.sample_relight(np.random.default_rng(7), degradation=kind)
            relit, _ = render.render_relight(a, nrm, depth, mask, rec)
            return color.linear_to_srgb_u8(render.composite(color.tonemap(relit), mask))
        return run

    cases: dict[str, Callable[[], Any]] = {
        "srgb_to_linear": lambda: color.srgb_to_linear(rgb),
        "linear_to_srgb_u8": lambda: color.linear_to_srgb_u8(lin),
        "normals_from_depth": lambda: normals.normals_from_depth(depth, mask),
        "normals_from_mask": lambda: normals.normals_from_mask(mask, lin),
        "albedo_retinex": lambda: retinex.estimate_albedo(lin, mask, method="retinex"),
        "albedo_lab": lambda: retinex.estimate_albedo(lin, mask, method="lab"),
        "albedo_intrinsic": lambda: retinex.estimate_albedo(lin, mask, method="intrinsic"),
        "cast_shadow": lambda: cast_shadow(depth, d, size_deg=2.0),
        "specular_ggx": lambda: specular(nrm, d, model="ggx"),
        "specular_blinn_phong": lambda: specular(nrm, d, model="blinn_phong"),
        "shade_sh": lambda: shade_sh(nrm, sh_coeffs),
    }
    for kind in PATTERNS if not tiny else PATTERNS[:3]:
        rec = sample_pattern(np.random.default_rng(3), kind)
        cases[f"pattern_{kind}"] = (lambda r=rec: pattern_transmission(r, shape, depth=depth, direction=d))
    for kind, rec in recs.items():
        cases[f"render_{kind}"] = (lambda r=rec: render.render_relight(alb, nrm, depth, mask, r))
    for kind in lights.DEGRADATIONS:
        cases[f"albedo+{kind}"] = pipeline(kind)
    return cases


def _backends(cfg: BenchConfig, run: RunConfig) -> list[str]:
    """``cfg.backend``: ``auto`` = NumPy, plus CuPy when a GPU answers (and ``run.device`` is not ``cpu``)."""
    choice = getattr(cfg, "backend", "auto") or "auto"
    if choice not in ("auto", "numpy", "cupy"):
        raise ValueError(f"bench kernels: backend must be auto, numpy or cupy, got {choice!r}")
    if choice == "cupy" and not has_cupy():
        raise ValueError(f"bench kernels: backend 'cupy' requested but unavailable: {cupy_status()[1]}")
    if choice == "auto":
        return ["numpy"] + (["cupy"] if has_cupy() and run.device != "cpu" else [])
    return [choice]


def bench_kernels(cfg: BenchConfig, run: RunConfig) -> dict[str, Any]:
    """Time every kernel; see the module docstring. ``cfg.tiny``: 64² only, one repeat (for tests)."""
    sizes = [64] if cfg.tiny else [512, 1024]
    repeats = 1 if cfg.tiny else cfg.repeats
    warmup = 0 if cfg.tiny else cfg.warmup
    backends = _backends(cfg, run)
    rows: list[dict[str, Any]] = []
    synchronize()  # imports torch/CuPy once, outside the timed (and CPU-time-counted) calls
    for size in sizes:
        host = make_inputs(size)
        for backend in backends:
            if backend == "cupy":  # pragma: no cover - GPU only
                import cupy

                inp = {k: cupy.asarray(v) for k, v in host.items()}
            else:
                inp = host
            cases = kernel_cases(inp, tiny=cfg.tiny)
            with single_thread() if backend == "numpy" else contextlib.nullcontext():
                for name, fn in cases.items():
                    cpu0 = time.process_time()
                    t = measure(fn, warmup=warmup, repeats=repeats)
                    cpu_ms = (time.process_time() - cpu0) * 1e3 / (warmup + t["repeats"])
                    rows.append({"name": name, "size": size, "backend": backend,
                                 "median_ms": round(t["median_ms"], 3), "min_ms": round(t["min_ms"], 3),
                                 "p90_ms": round(t["p90_ms"], 3), "cpu_ms": round(cpu_ms, 3), "repeats": t["repeats"]})
    summary: dict[str, Any] = {}
    for backend in backends:
        pipe = [r for r in rows if r["backend"] == backend and r["name"].startswith("albedo+")
                and r["size"] == max(sizes)]
        if pipe:
            worst = max(r["median_ms"] for r in pipe)
            worst_cpu = max(r["cpu_ms"] for r in pipe)
            target = TARGET_CPU_MS if backend == "numpy" else TARGET_GPU_MS
            summary[backend] = {"size": max(sizes), "albedo_plus_degradation_worst_ms": worst,
                                "albedo_plus_degradation_mean_ms": round(float(np.mean([r["median_ms"] for r in pipe])),
                                                                         3),
                                "albedo_plus_degradation_worst_cpu_ms": round(worst_cpu, 3),
                                "target_ms": target, "meets_target": worst < target,
                                "meets_target_cpu_time": worst_cpu < target}
            if max(sizes) == 1024:
                summary[backend]["reference_ms"] = REFERENCE_1024_MS
                summary[backend]["speedup_vs_reference"] = round(REFERENCE_1024_MS / worst, 1)
    columns = ["name", "size", "backend", "median_ms", "min_ms", "p90_ms", "cpu_ms"]
    return {"target": "kernels", "rows": rows, "columns": columns,
            "summary": summary, "machine": machine_info(), "threads": "1 (cv2), numpy element-wise single-threaded"}
