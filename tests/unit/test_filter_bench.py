"""``bench filter`` with --tiny on the CPU: every row is timed, onnxruntime matches eager, the result is JSON."""

from __future__ import annotations

import json
import os

import pytest

from relight_stream.bench.filter import bench_filter
from relight_stream.bench.timing import json_line
from relight_stream.config import BenchConfig, RunConfig


def test_bench_filter_tiny_reports_every_scorer_and_backend(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import torch

    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(tmp_path / "engines"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # decode threads share the CI's two cores with torch's
    try:
        res = bench_filter(BenchConfig(target="filter", tiny=True, repeats=1, warmup=0), RunConfig(device="cpu"))
    finally:
        torch.set_num_threads(threads)
    assert res["target"] == "filter" and res["clip_flavor"] == "tiny"
    by = {(r["name"], r["backend"]): r for r in res["rows"]}
    assert {("photometric", "numpy"), ("clip-tiny", "eager"), ("clip-tiny", "onnxruntime"),
            ("filter-e2e-photometric", "numpy")} <= set(by)
    for key in [("photometric", "numpy"), ("clip-tiny", "eager"), ("clip-tiny", "onnxruntime")]:
        assert by[key]["img_s"] > 0, key
    assert by[("clip-tiny", "onnxruntime")]["max_abs_diff_vs_eager"] < 1e-4  # the same model on both backends
    e2e = [r for r in res["rows"] if r["name"].startswith("filter-e2e")]
    assert len(e2e) == 2 and all(r["ok"] == r["images"] == 32 and r["img_s"] > 0 for r in e2e)
    assert json.loads(json_line(res))["target"] == "filter"
    # the e2e CLIP row runs with filter's CPU thread default: the cores the decode workers leave free
    clip = next(r for r in e2e if r["name"] == "filter-e2e-clip")
    assert clip["torch_threads"] == max(1, len(os.sched_getaffinity(0)) - clip["decode_workers"])
    assert torch.get_num_threads() == threads  # restored


def test_bench_precision_means_what_filter_runs_at():
    from relight_stream.bench.filter import _precision

    unset = BenchConfig().precision
    assert _precision("eager", False, "bf16") == "fp32"  # a CPU always measures fp32
    assert _precision("eager", True, unset) == _precision("eager", True, "auto") == "bf16"  # ClipConfig's auto
    assert _precision("onnxruntime", True, unset) == "fp16"  # no bf16 kernels in onnxruntime
    assert _precision("tensorrt", True, "fp16") == "fp16"
