"""Benchmark timing: warm-up, synchronised GPU timers, medians, machine description, JSON-last-line output.

Speed claims live here, never in timed tests. Every ``bench`` target returns a dict of results; the runner
prints a table and then one JSON line (the last line of stdout), and can save it under ``bench/results/``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Any, Callable


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


def peak_host_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ``ru_maxrss`` is KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, GPU, library versions."""
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
