"""``bench`` dispatcher: target dispatch, not-implemented targets, --compare semantics, JSON last line, saving."""

from __future__ import annotations

import json

import pytest

from relight_stream.bench import run as bench_run
from relight_stream.bench.run import parse_compare, run_bench
from relight_stream.config import BenchConfig, RunConfig


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _fake_target(cfg: BenchConfig, run: RunConfig) -> dict:
    """A target whose speed depends on the config, so the dispatcher's ratio can be checked exactly."""
    per_s = {"eager": 100.0, "fast": 250.0}.get(cfg.backend, 10.0) * (2 if cfg.precision == "bf16" else 1)
    rows = [{"name": "stage-a", "batch": b, "images_per_s": per_s * b, "ms": 1e3 / per_s} for b in (1, 4)]
    return {"target": "fake", "rows": rows, "backend": cfg.backend}


@pytest.fixture
def fake_targets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bench_run, "TARGETS", ("fake", "missing"))
    real = bench_run.load_target
    monkeypatch.setattr(bench_run, "load_target", lambda name: _fake_target if name == "fake" else real(name))


def test_compare_runs_both_configs_and_prints_the_ratio(fake_targets, capsys) -> None:
    assert run_bench(BenchConfig(target="fake", compare="eager,fast"), RunConfig()) == 0
    out = capsys.readouterr().out
    result = _last_json(out)
    assert result["compare"] == ["eager", "fast"]
    assert result["a"]["backend"] == "eager" and result["b"]["backend"] == "fast"
    assert [r["speedup"] for r in result["rows"]] == pytest.approx([2.5, 2.5])
    assert "speedup" in out.split("\n{")[0]  # the human table precedes the JSON line
    assert "machine" in result and "peak_host_mb" in result["a"]


def test_compare_with_field_overrides(fake_targets, capsys) -> None:
    run_bench(BenchConfig(target="fake", compare="backend=eager+precision=fp32,backend=eager+precision=bf16"),
              RunConfig())
    assert [r["speedup"] for r in _last_json(capsys.readouterr().out)["rows"]] == pytest.approx([2.0, 2.0])


def test_parse_compare_rejects_bad_specs() -> None:
    base = BenchConfig()
    assert [c.precision for _, c in parse_compare("precision=fp32,precision=bf16", base)] == ["fp32", "bf16"]
    with pytest.raises(ValueError, match="exactly two"):
        parse_compare("eager,compile,onnxruntime", base)
    with pytest.raises(ValueError, match="unknown bench field"):
        parse_compare("speed=1,speed=2", base)
    with pytest.raises(ValueError, match="precision"):
        parse_compare("precision=fp8,precision=bf16", base)


def test_missing_target_exits_2_and_all_skips_it(fake_targets, capsys, tmp_path) -> None:
    assert run_bench(BenchConfig(target="missing"), RunConfig()) == 2
    assert "not implemented yet" in capsys.readouterr().err
    assert run_bench(BenchConfig(target="all", out=str(tmp_path)), RunConfig()) == 0
    out = capsys.readouterr().out
    result = _last_json(out)
    assert result["skipped"] == ["missing"] and "fake" in result["results"]
    saved = list(tmp_path.glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["target"] == "all"


def test_unknown_target_and_bad_repeats_raise() -> None:
    with pytest.raises(ValueError, match="valid"):
        run_bench(BenchConfig(target="everything"), RunConfig())
    with pytest.raises(ValueError, match="repeats"):
        run_bench(BenchConfig(target="engines", repeats=0), RunConfig())


def test_bench_engines_tiny_emits_valid_json(capsys, tmp_path, monkeypatch) -> None:
    import torch

    monkeypatch.delenv("RELIGHT_BACKEND", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = BenchConfig(target="engines", tiny=True, repeats=1, warmup=0, batch_sizes=[2], backend="eager",
                          out=str(tmp_path / "r.json"))
        assert run_bench(cfg, RunConfig(device="cpu")) == 0
    finally:
        torch.set_num_threads(n)
    result = _last_json(capsys.readouterr().out)
    names = {r["name"] for r in result["rows"]}
    assert {"clip/image", "clip/text", "segmenter", "depth", "vae/encode", "unet-ip2p"} <= names
    for r in result["rows"]:
        assert r["batch"] == 2 and r["images_per_s"] > 0 and r["ms"] > 0 and r["gflop_per_image"] > 0
    assert result["machine"]["cores"] >= 1 and result["peak_host_mb"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == result["rows"]


def test_json_flag_prints_only_the_json_line(fake_targets, capsys) -> None:
    assert run_bench(BenchConfig(target="fake", json=True), RunConfig()) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["target"] == "fake"
