"""``bench train``: the rows it promises exist and report real, positive throughput."""

from __future__ import annotations

import pytest

from relight_stream.bench.train import bench_train
from relight_stream.config import BenchConfig, RunConfig


def test_bench_train_tiny_cpu_rows():
    result = bench_train(BenchConfig(tiny=True), RunConfig(device="cpu"))
    names = [r["name"] for r in result["rows"]]
    assert names == ["tiny images eager", "tiny latents eager", "tiny example-script baseline"]
    for row in result["rows"]:
        assert row["samples_per_s"] > 0 and row["ms"] > 0 and row["peak_mem_mb"] > 0
        assert abs(row["samples_per_s"] - row["batch"] * 1000 / row["ms"]) < 0.02 * row["samples_per_s"]
    assert result["summary"]["sd15_cuda"].startswith("skipped")


@pytest.mark.gpu
@pytest.mark.slow
def test_bench_train_full_size_sd15_on_gpu():
    result = bench_train(BenchConfig(repeats=3, warmup=1), RunConfig())
    for res in (256, 512):
        s = result["summary"][f"sd15_{res}"]
        assert s["best_samples_per_s"] > 0 and s["baseline_samples_per_s"] > 0
