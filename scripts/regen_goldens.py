"""Regenerate the kernel goldens in ``tests/assets/goldens/`` (run after an *intended* change of kernel output).

Writes ``kernels_records.json`` (light records drawn from fixed seeds: the reproducibility contract of
``meta.json``), ``kernels_render.npz`` (a 32x32 procedural subject rendered under each record, float16) and
``kernels_patterns.npz`` (every occluder pattern from a fixed seed, 48x48 transmission, float16).
``tests/unit/test_kernels_goldens.py`` compares the current code against them.

Usage: ``python scripts/regen_goldens.py``
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from relight_stream.kernels import intrinsic_bench, lights, render
from relight_stream.kernels.pattern_sampling import sample_pattern
from relight_stream.kernels.patterns import PATTERNS, pattern_transmission

OUT = Path(__file__).resolve().parents[1] / "tests" / "assets" / "goldens"


def golden_subject() -> dict[str, np.ndarray]:
    """The fixed subject of the goldens: the benchmark's face scene at 32x32."""
    sc = intrinsic_bench.make_scene("face", size=32, seed=0)
    return {k: sc[k] for k in ("albedo", "normals", "depth", "mask")}


def golden_records() -> dict[str, dict]:
    return {f"{kind}_{seed}": lights.sample_relight(np.random.default_rng(seed), degradation=kind)
            for kind in lights.DEGRADATIONS for seed in (0, 1)}


def golden_renders(records: dict[str, dict]) -> dict[str, np.ndarray]:
    s = golden_subject()
    return {name: render.render_relight(s["albedo"], s["normals"], s["depth"], s["mask"], rec)[0].astype(np.float16)
            for name, rec in records.items()}


def golden_patterns() -> dict[str, np.ndarray]:
    return {kind: pattern_transmission(sample_pattern(np.random.default_rng(11), kind), (48, 48)).astype(np.float16)
            for kind in PATTERNS}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    records = golden_records()
    (OUT / "kernels_records.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    np.savez_compressed(OUT / "kernels_render.npz", **golden_renders(records))
    np.savez_compressed(OUT / "kernels_patterns.npz", **golden_patterns())
    print(f"wrote {OUT}/kernels_records.json, kernels_render.npz and kernels_patterns.npz")


if __name__ == "__main__":
    main()
