"""``bench generate --tiny``: per-stage and end-to-end rows with throughput (a smoke run, not a speed claim)."""

from __future__ import annotations

from relight_stream.bench.generate import bench_generate
from relight_stream.config import BenchConfig, RunConfig


def test_bench_generate_tiny_reports_every_stage_and_e2e() -> None:
    result = bench_generate(BenchConfig(tiny=True, repeats=1, warmup=0), RunConfig(seed=0))
    names = {(r["name"], r["resolution"]) for r in result["rows"]}
    for side in (64, 96):
        for stage in ("decode", "segment", "geometry", "albedo", "relight", "instruct", "encode", "e2e"):
            assert (stage, side) in names
    assert all(r["images_per_s"] > 0 for r in result["rows"])
    e2e = [r for r in result["rows"] if r["name"] == "e2e"]
    assert all(r["images"] == 4 and r["cpu_s_per_ok"] > 0 and r["ok_per_s"] > 0 for r in e2e)
    assert result["target"] == "generate" and result["e2e_images_per_s_96"] > 0
