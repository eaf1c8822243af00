"""``bench kernels`` and ``bench albedo`` in their tiny form: every kernel timed, every method scored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relight_stream.bench.albedo import BASELINES, bench_albedo
from relight_stream.bench.kernels import bench_kernels
from relight_stream.config import BenchConfig, RunConfig
from relight_stream.kernels import lights
from relight_stream.kernels.retinex import METHODS


def test_bench_kernels_tiny_times_every_kernel() -> None:
    out = bench_kernels(BenchConfig(tiny=True), RunConfig(device="cpu"))
    assert out["target"] == "kernels"
    names = {r["name"] for r in out["rows"]}
    assert {"srgb_to_linear", "albedo_retinex", "cast_shadow", "specular_ggx", "shade_sh"} <= names
    assert {f"albedo+{k}" for k in lights.DEGRADATIONS} <= names
    assert all(r["median_ms"] >= 0 and np.isfinite(r["median_ms"]) for r in out["rows"])
    assert "numpy" in out["summary"] and out["summary"]["numpy"]["target_ms"] == 150.0
    json.dumps(out, default=str)
    assert {r["backend"] for r in bench_kernels(BenchConfig(tiny=True, backend="numpy"), RunConfig())["rows"]} == {
        "numpy"}


def test_bench_kernels_rejects_an_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        bench_kernels(BenchConfig(tiny=True, backend="opencl"), RunConfig())


def test_bench_albedo_tiny_scores_every_method_and_baseline() -> None:
    out = bench_albedo(BenchConfig(tiny=True), RunConfig(seed=0))
    assert out["target"] == "albedo"
    assert {r["method"] for r in out["rows"]} == set(METHODS + BASELINES)
    assert all(0 <= r["lmse"] < 1 for r in out["rows"])
    assert out["best_method"] in METHODS
    json.dumps(out, default=str)
