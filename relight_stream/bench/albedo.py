"""``relight-stream bench albedo``: MIT-style LMSE of each albedo method on the procedural intrinsic benchmark.

Reads nothing from disk: scenes come from ``kernels.intrinsic_bench.make_scene`` (exact albedo and shading).
Returns ``{"target": "albedo", "rows": [{"scene", "method", "lmse", "albedo_lmse", "shading_lmse", "ms"}, ...],
"mean_lmse": {method: ...}, ...}``; the bench runner prints the table and the JSON last line. Besides the three
methods it scores the benchmark's two trivial baselines (Grosse et al. 2009): ``constant_shading`` (albedo =
image) and ``constant_albedo`` (shading = image), so a method's numbers have a floor to beat.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from relight_stream.bench.timing import machine_info
from relight_stream.config import BenchConfig, RunConfig
from relight_stream.kernels.intrinsic_bench import SCENES, lmse, make_scene
from relight_stream.kernels.retinex import METHODS, estimate_albedo

BASELINES = ("constant_shading", "constant_albedo")


def _baseline(name: str, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if name == "constant_shading":
        return image, np.ones_like(image)
    return np.ones_like(image), image


def bench_albedo(cfg: BenchConfig, run: RunConfig) -> dict[str, Any]:
    """Score every method on every scene (``cfg.tiny``: 64², two scenes; else 256², all scenes, seeds 0-1)."""
    size = 64 if cfg.tiny else 256
    scenes = SCENES[:2] if cfg.tiny else SCENES
    seeds = [run.seed or 0] if cfg.tiny else [run.seed or 0, (run.seed or 0) + 1]
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        for name in scenes:
            sc = make_scene(name, size=size, seed=seed)
            for method in METHODS + BASELINES:
                t0 = time.perf_counter()
                if method in METHODS:
                    alb, sh = estimate_albedo(sc["image"], sc["mask"], method=method)
                else:
                    alb, sh = _baseline(method, sc["image"])
                ms = (time.perf_counter() - t0) * 1e3
                score = lmse(sc["albedo"], sc["shading"], alb, sh, sc["mask"])
                rows.append({"scene": name, "seed": seed, "method": method, "lmse": round(score["lmse"], 5),
                             "albedo_lmse": round(score["albedo"], 5), "shading_lmse": round(score["shading"], 5),
                             "ms": round(ms, 2)})
    mean = {m: round(float(np.mean([r["lmse"] for r in rows if r["method"] == m])), 5) for m in METHODS + BASELINES}
    best = min(METHODS, key=lambda m: mean[m])
    return {"target": "albedo", "rows": rows, "columns": ["scene", "seed", "method", "lmse", "albedo_lmse",
                                                          "shading_lmse", "ms"],
            "size": size, "mean_lmse": mean, "best_method": best, "machine": machine_info(),
            "metric": "MIT LMSE (Grosse et al. 2009): 20x20 windows, step 10, 0.5 albedo + 0.5 shading, grey"}
