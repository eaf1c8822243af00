"""``new_run`` (RELIABILITY.md B8, C5): the previous outputs move to ``previous-<UTC time>/``; local outputs only."""

from __future__ import annotations

import calendar
import json
import os
import time
from pathlib import Path

import pytest

import fixtures_images as fx
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig
from relight_stream.pipeline import shard as S
from relight_stream.pipeline.recipes import run_generate
from relight_stream.pipeline.verify import verify_dir

DEC = {"resolution": 32, "min_size": 16, "batch_size": 2, "backend": "pil", "num_workers": 1}


def _gen(src: Path, out: Path, *, sps: int = 2, **shard) -> int:
    cfg = GenerateConfig(inputs=[str(src)], out=str(out), decode=DecodeConfig(**DEC),
                         shard=ShardConfig(samples_per_shard=sps, **shard))
    return run_generate(cfg, RunConfig(seed=0), stages=[])


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "run.lock"}


@pytest.fixture
def src(tmp_path) -> Path:
    return Path(fx.ffhq_tree(tmp_path / "in", n=4, size=48))


def test_b8_new_run_moves_the_previous_outputs_aside_and_starts_afresh(src, tmp_path):
    out = tmp_path / "out"
    assert _gen(src, out) == 0
    before = _tree(out)
    (out / "notes.txt").write_text("mine")  # not an output: stays where it is
    p = src / "00000" / "00001.png"
    p.write_bytes(fx.png_bytes(fx.noise(48, 48, seed=99)))  # an input replaced between runs
    os.utime(p, ns=(time.time_ns() + 10**9,) * 2)
    with pytest.raises(ValueError, match="input files changed.*--overwrite"):
        _gen(src, out)
    assert _gen(src, out, new_run=True) == 0
    (prev,) = [d for d in out.iterdir() if d.is_dir()]
    assert prev.name.startswith("previous-") and len(prev.name) == len("previous-YYYYmmdd-HHMMSS")
    assert _tree(prev) == before  # every old output, byte for byte
    assert (out / "notes.txt").read_text() == "mine" and verify_dir(str(out))[0] == []
    recs = [json.loads((out / f"shard-00000{k}.json").read_text()) for k in range(2)]
    assert sum(r["counts"]["ok"] for r in recs) == 4
    assert (out / "shard-000000.tar").read_bytes() != before["shard-000000.tar"]  # the new input is in it
    # a second new run in the same second gets its own folder
    assert _gen(src, out, new_run=True) == 0
    assert len([d for d in out.iterdir() if d.name.startswith("previous-")]) == 2


def test_move_aside_names_and_nothing_to_move(tmp_path):
    assert S.move_aside(str(tmp_path)) is None
    (tmp_path / "shard-000000.tar").write_bytes(b"x")
    (tmp_path / "stats.json").write_text("{}")
    (tmp_path / "keep.csv").write_text("a")
    t = calendar.timegm((2026, 1, 2, 3, 4, 5, 0, 0, 0))
    dest = S.move_aside(str(tmp_path), now=t)
    assert dest == str(tmp_path / "previous-20260102-030405")
    assert sorted(os.listdir(dest)) == ["shard-000000.tar", "stats.json"] and (tmp_path / "keep.csv").exists()


def test_new_run_refuses_overwrite_and_several_processes(src, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="exclude each other"):
        _gen(src, tmp_path / "o", new_run=True, overwrite=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="single process"):
        _gen(src, tmp_path / "o", new_run=True)
    assert not (tmp_path / "o").exists()


def test_new_run_is_not_part_of_the_config_hash():
    assert "shard.new_run" in S.HASH_EXCLUDE


@pytest.mark.parametrize("url", ["s3://bucket/out", "gs://b/o", "file:///tmp/x"])
def test_fsspec_outputs_fail_early_with_a_clear_message(src, url, monkeypatch):
    from relight_stream.config import VerifyConfig
    from relight_stream.pipeline import recipes
    from relight_stream.pipeline.verify import run_verify

    monkeypatch.setattr(recipes, "make_plan", lambda *a, **k: pytest.fail("must fail before planning"))
    with pytest.raises(ValueError, match="fsspec/object-store outputs are not supported"):
        run_generate(GenerateConfig(inputs=[str(src)], out=url), RunConfig(seed=0), stages=[])
    with pytest.raises(ValueError, match="not supported"):
        run_verify(VerifyConfig(out=url), RunConfig())


def test_dry_run_with_new_run_reports_the_move_and_touches_nothing(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert _gen(src, out) == 0
    before = _tree(out)
    cfg = GenerateConfig(inputs=[str(src)], out=str(out), dry_run=True, decode=DecodeConfig(**DEC),
                         shard=ShardConfig(samples_per_shard=2, new_run=True))
    assert run_generate(cfg, RunConfig(seed=0), stages=[]) == 0
    text = capsys.readouterr().out
    assert "previous outputs move to" in text and "to do 2, to skip (done) 0" in text
    assert _tree(out) == before and not any(d.is_dir() for d in out.iterdir())
