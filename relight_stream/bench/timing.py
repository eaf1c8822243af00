"""Benchmark timing: warm-up, synchronised GPU timers, medians, machine description, JSON-last-line output.

Speed claims live here, never in timed tests. Every ``bench`` target returns a dict of results; the runner
prints a table and then one JSON line (the last line of stdout), and can save it under ``bench/results/``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


def synchronize(device: Any = None) -> None:
    """Wait for queued GPU work (torch and CuPy) so wall-clock timings are real."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize(device)
    except ImportError:
        pass
    from relight_stream.kernels.xp import has_cupy

    if has_cupy():
        import cupy

        cupy.cuda.Device().synchronize()


def measure(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, sync: bool = True) -> dict[str, float]:
    """Time ``fn`` after ``warmup`` calls; returns median/min/p90 in milliseconds over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    if sync:
        synchronize()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        if sync:
            synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"median_ms": statistics.median(times), "min_ms": times[0], "p90_ms": p90, "repeats": len(times)}


_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"
_reset_ok: bool | None = None  # did the last reset_peak_host() reset VmHWM? None: never tried


def _vmhwm_kib() -> int | None:
    """``VmHWM`` (peak resident set size, KiB) from ``/proc/self/status``, or ``None`` where unavailable."""
    try:
        with open(_STATUS, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_host() -> bool:
    """Reset this process's peak-RSS mark to its current RSS, so the next ``peak_host_mb()`` covers only what
    runs after this call (one bench row or target).

    Linux only: writes ``5`` to ``/proc/self/clear_refs`` (resets ``VmHWM``; kernel >= 4.0). Returns ``True``
    when the reset worked; otherwise ``False`` and ``peak_host_mb()`` stays the process-lifetime peak
    (``peak_host_scope()`` says which).
    """
    global _reset_ok
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")
    except OSError as exc:
        if _reset_ok is None:
            log.debug("cannot reset the peak RSS (%s); peak host memory is per process", exc)
        _reset_ok = False
        return False
    _reset_ok = _vmhwm_kib() is not None
    return _reset_ok


def peak_host_mb() -> float:
    """Peak resident memory in MiB: since the last ``reset_peak_host()`` where that worked (Linux ``VmHWM``),
    else over the process's lifetime (``VmHWM``, or ``ru_maxrss`` where ``/proc`` is unavailable)."""
    kib = _vmhwm_kib()
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024


def peak_host_scope(reset_scope: str = "row") -> str:
    """What ``peak_host_mb()`` covers now: ``reset_scope`` (e.g. ``"row"``, ``"target"``) when the last
    ``reset_peak_host()`` worked, else ``"process"`` (the lifetime peak, monotonic)."""
    return reset_scope if _reset_ok else "process"


# Distributions whose versions machine_info() records when installed; alternatives are the same library built
# for another platform/CUDA (every one installed is listed, so a conflicting pair shows up too).
VERSIONED_DISTS = (
    "onnxruntime", "onnxruntime-gpu", "onnx", "diffusers", "transformers", "accelerate", "open_clip_torch",
    "opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless",
    "nvidia-dali", "nvidia-dali-cuda110", "nvidia-dali-cuda120", "nvidia-dali-cuda130",
    "cupy", "cupy-cuda11x", "cupy-cuda12x", "cupy-cuda13x",
    "tensorrt", "tensorrt-cu11", "tensorrt-cu12", "tensorrt-cu13", "webdataset",
)


def library_versions() -> dict[str, str]:
    """``{distribution name: version}`` of the installed ``VERSIONED_DISTS``, from package metadata (nothing is
    imported); distributions that are not installed are omitted."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in VERSIONED_DISTS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, GPU, python/numpy/torch versions, and under ``versions``
    the installed versions of the other libraries a bench may use (``library_versions()``)."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    try:
        import numpy

        info["numpy"] = numpy.__version__
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    info["versions"] = library_versions()
    return info


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) over ``columns``."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    widths = [max(len(c), *(len(cell(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(cell(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(lines)


def json_line(result: dict[str, Any]) -> str:
    """The single-line JSON that ends every bench output."""
    return json.dumps(result, sort_keys=True, default=str)
