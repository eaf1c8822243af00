"""The whole flow, as users run it: `demo` on bundled photos, and the commands one by one through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner
from PIL import Image

from relight_stream import config as C
from relight_stream.cli import cli
from relight_stream.demo import run_demo


def test_demo_runs_every_stage_and_reports_where_outputs_are(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as `make demo` uses: filter's CSV must still resolve
    out = Path("demo")
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "shard-000000.json").write_text("{}")  # a previous run's leftovers do not block a new demo
    code = run_demo(C.DemoConfig(out=str(out), num_images=4, resolution=128, train_steps=4), C.RunConfig())
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 4
    steps = summary["steps"]
    assert list(steps) == ["filter", "generate", "verify", "train", "infer"]
    assert all(s["status"] == "ok" for s in steps.values()), steps
    stats = json.loads((out / "shards" / "stats.json").read_text())
    assert stats["inputs"] == 4 and stats["ok"] >= 2, stats  # the photos were found through selected.csv
    assert (out / "filter" / "scores.parquet").is_file() and (out / "filter" / "selected.csv").is_file()
    assert sorted(p.name for p in (out / "shards").glob("shard-*.tar"))  # at least one committed shard
    assert Path(summary["preview"]).is_file()
    assert (out / "model" / "final" / "model_index.json").is_file()
    assert list((out / "infer").glob("*.png"))
    printed = capsys.readouterr().out
    assert "summary.json" in printed and "train" in printed


def _photos(folder: Path) -> list[Path]:
    from skimage import data

    paths = []
    for i, name in enumerate(["astronaut", "coffee", "rocket", "chelsea", "astronaut", "coffee"]):
        img = getattr(data, name)()[..., :3]
        if i >= 4:
            img = np.ascontiguousarray(img[:, ::-1])
        path = folder / f"{i // 3:05d}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def test_cli_generate_verify_train_infer(tmp_path, monkeypatch):
    monkeypatch.setenv("RELIGHT_NO_PROGRESS", "1")
    photos = _photos(tmp_path / "in")
    shards, model, relit = tmp_path / "shards", tmp_path / "model", tmp_path / "relit.png"
    runner = CliRunner()

    dry = runner.invoke(cli, ["generate", str(tmp_path / "in"), "--out", str(shards), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert not shards.exists()  # a dry run writes nothing

    r = runner.invoke(cli, ["--seed", "3", "generate", str(tmp_path / "in"), "--out", str(shards), "--resolution",
                            "128", "--samples-per-shard", "3", "--mix", "soft=1,shadow=1"])
    assert r.exit_code == 0, r.output
    records = [json.loads(p.read_text()) for p in sorted(shards.glob("shard-*.json"))]
    assert len(records) == 2
    rows = [row for rec in records for row in rec["rows"]]
    assert len(rows) == len(photos)  # ok + skipped + failed == inputs
    ok_keys = [row["key"] for row in rows if row["status"] == "ok"]
    assert ok_keys, rows
    assert (shards / "config.yaml").is_file() and (shards / "stats.json").is_file()

    samples = list(wds.WebDataset(sorted(str(p) for p in shards.glob("shard-*.tar")), shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(ok_keys)
    for s in samples:
        meta = json.loads(s["meta.json"])
        assert meta["relight"]["degradation"] in ("soft", "shadow"), meta["relight"]
        assert {"input.jpg", "target.jpg", "instruction.txt", "mask.png", "normals.png"} <= set(s)

    assert runner.invoke(cli, ["verify", str(shards)]).exit_code == 0

    r = runner.invoke(cli, ["--seed", "1", "train", str(shards), "--out", str(model), "--model", "tiny", "--resolution",
                            "64", "--max-steps", "3", "--batch-size", "2", "--checkpoint-every", "2",
                            "--mixed-precision", "no"])
    assert r.exit_code == 0, r.output
    assert (model / "final" / "model_index.json").is_file() and (model / "config.yaml").is_file()

    r = runner.invoke(cli, ["infer", "--model", str(model / "final"), "--image", str(photos[0]), "--instruction",
                            "warm light from the left", "--out", str(relit), "--steps", "2", "--resolution", "64"])
    assert r.exit_code == 0, r.output
    with Image.open(relit) as im:
        assert im.size == (64, 64)


@pytest.mark.parametrize("command", ["generate", "filter"])
def test_missing_inputs_fail_before_anything_is_written(tmp_path, command):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, [command, str(tmp_path / "nothing-here"), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "nothing-here" in r.output or "no inputs" in r.output.lower()
    assert not out.exists() or not os.listdir(out)
