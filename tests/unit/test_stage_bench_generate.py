"""``bench generate --tiny``: per-stage and end-to-end rows with throughput (a smoke run, not a speed claim)."""

from __future__ import annotations

import os

import pytest

from relight_stream.bench.generate import bench_generate
from relight_stream.config import BenchConfig, RunConfig


def test_bench_generate_tiny_reports_every_stage_and_e2e() -> None:
    result = bench_generate(BenchConfig(tiny=True, repeats=1, warmup=0), RunConfig(seed=0))
    names = {(r["name"], r["resolution"]) for r in result["rows"]}
    for side in (64, 96):
        for stage in ("decode", "segment", "geometry", "albedo", "relight", "instruct", "encode", "e2e",
                      "e2e-workers", "gpu-run-cpu"):
            assert (stage, side) in names
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    e2e = [r for r in result["rows"] if r["name"].startswith("e2e")]
    assert all(r["images"] == 8 and r["cpu_s_per_ok"] > 0 and r["ok_per_s"] > 0 for r in e2e)
    assert {r["workers"] for r in e2e} == {1, max(2, len(os.sched_getaffinity(0)))}
    assert result["target"] == "generate" and result["e2e_images_per_s_96"] > 0
    for r in (r for r in result["rows"] if r["name"] == "gpu-run-cpu"):  # what a GPU host's CPU must still do
        assert r["ms"] == pytest.approx(r["prior_ms"] + r["encode_ms"], abs=0.02)
        assert 0 < r["encode_lean_ms"] and 0 < r["encode_ms"]  # single timings: their order is left to the bench
        assert r["ceiling_img_s_16_cores"] == pytest.approx(16e3 / r["ms"], rel=0.01)
    for side in (64, 96):  # the summary holds the faster run and the ratio of the two
        runs = {r["workers"]: r["ok_per_s"] for r in e2e if r["resolution"] == side}
        assert result[f"e2e_workers_{side}"] == max(runs, key=runs.get)
        assert result[f"workers_speedup_{side}"] == round(runs[max(runs)] / runs[1], 2)
