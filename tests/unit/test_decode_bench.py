"""``bench decode`` runs every decoder on the same inputs and reports images/s (a smoke test, not a timing)."""

from __future__ import annotations

from relight_stream.bench.decode import bench_decode
from relight_stream.config import BenchConfig, RunConfig


def test_bench_decode_reports_every_decoder_for_jpeg_and_png():
    res = bench_decode(BenchConfig(target="decode", tiny=True, repeats=1, warmup=0), RunConfig())
    names = {r["name"] for r in res["rows"]}
    assert {"dali-cpu/jpeg", "pil/jpeg", "opencv/jpeg", "dali-cpu/png", "pil/png", "opencv/png",
            "pipeline-dali/jpeg", "pipeline-pil/png"} <= names
    assert all(r["images_per_s"] > 0 and r["images"] == res["images"] for r in res["rows"])
    only = bench_decode(BenchConfig(target="decode", tiny=True, repeats=1, warmup=0, backend="pil"), RunConfig())
    assert {r["backend"] for r in only["rows"]} == {"pil", "pipeline-pil"}
    assert {r["name"] for r in only["rows"]} == {"raw/jpeg", "pipeline/jpeg", "raw/png", "pipeline/png"}
