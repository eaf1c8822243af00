"""``filter`` end to end on real photos (+ degraded copies and bad files): folder and tar inputs, photometric and
tiny-CLIP scorers, every input recorded, selection, splits, re-selection from scores.parquet, dry run."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from relight_stream.config import ClipConfig, DecodeConfig, FilterConfig, RunConfig
from relight_stream.pipeline.filter_run import run_filter

DECODE = dict(resolution=64, batch_size=8, backend="pil")
BAD = {"bad/truncated.jpg": "decode:truncated", "bad/empty.png": "decode:empty_file",
       "bad/text.jpg": "decode:unidentified"}


def jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(photos) -> dict[str, bytes]:
    """Relative path -> bytes: each photo, a darker and a flat copy of it, and three unreadable files."""
    out = {}
    for name, img in photos.items():
        small = np.asarray(Image.fromarray(img).resize((96, 96), Image.BILINEAR))
        f = small.astype(np.float32)
        out[f"good/{name}.jpg"] = jpeg(small)
        out[f"dark/{name}.jpg"] = jpeg((f * 0.25).astype(np.uint8))
        out[f"flat/{name}.jpg"] = jpeg((0.3 * f + 0.7 * f.mean(axis=(0, 1))).astype(np.uint8))
    out["bad/truncated.jpg"] = out["good/coffee.jpg"][: len(out["good/coffee.jpg"]) // 2]
    out["bad/empty.png"] = b""
    out["bad/text.jpg"] = b"<html>not an image</html>"
    return out


@pytest.fixture(scope="module")
def folder(files, tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_photometric_run_records_every_input_ranks_and_splits(folder, files, tmp_path):
    out = tmp_path / "out"
    cfg = FilterConfig(inputs=[str(folder)], out=str(out), top=6, splits=(0.5, 0.25, 0.25), contact_sheet=4,
                       decode=DecodeConfig(**DECODE))
    assert run_filter(cfg, RunConfig(seed=5)) == 0
    df = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(df) == len(files) and set(df["status"]) == {"ok", "skipped"}
    for rel, reason in BAD.items():
        row = df[df["key"] == rel.rsplit(".", 1)[0]].iloc[0]
        assert row["status"] == "skipped" and row["reason"] == reason and np.isnan(row["photo_score"])
    score = dict(zip(df["key"], df["photo_score"]))
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        assert score[f"good/{name}"] > max(score[f"dark/{name}"], score[f"flat/{name}"]), name
    selected = read_csv(out / "selected.csv")
    assert list(selected[0]) == ["image_path", "lighting_score"] and len(selected) == 6
    assert all(r["image_path"].startswith(str(folder)) for r in selected)
    splits = {s: {r["image_path"] for r in read_csv(out / f"{s}.csv")} for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 6 and set.union(*splits.values()) == {r["image_path"] for r in selected}
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["inputs"], stats["ok"], stats["skipped"], stats["failed"]) == (len(files), len(files) - 3, 3, 0)
    assert stats["run"]["inputs"] == len(files)
    assert (out / "contact_sheet.jpg").stat().st_size > 0 and (out / "config.yaml").is_file()
    ver = stats["verification"]  # the verify_filtering report: 6 selected, the other 6 ok inputs rejected
    assert (ver["selected"]["count"], ver["rejected"]["count"]) == (6, len(files) - 3 - 6)
    assert ver["selected"]["min"] == pytest.approx(stats["cutoff"]) and ver["gap_at_cutoff"] >= 0
    assert Image.open(out / "score_histogram.png").format == "PNG"

    # same seed into another folder: identical selection and splits (reproducible)
    out2 = tmp_path / "again"
    run_filter(dataclasses.replace(cfg, out=str(out2)), RunConfig(seed=5))
    for name in ("selected.csv", "train.csv", "val.csv", "test.csv"):
        assert (out2 / name).read_bytes() == (out / name).read_bytes(), name

    # selected.csv is itself a valid list input (as for `generate`): the same six images, the same scores
    out3 = tmp_path / "from-list"
    run_filter(dataclasses.replace(cfg, inputs=[str(out / "selected.csv")], out=str(out3), top=None, splits=None),
               RunConfig(seed=5))
    rescored = read_csv(out3 / "selected.csv")
    assert {r["image_path"] for r in rescored} == {r["image_path"] for r in selected}
    assert sorted(float(r["lighting_score"]) for r in rescored) == sorted(float(r["lighting_score"]) for r in selected)


def test_from_scores_reselects_without_any_model_or_decode(folder, tmp_path, monkeypatch):
    first = tmp_path / "first"
    run_filter(FilterConfig(inputs=[str(folder)], out=str(first), splits=(0.5, 0.25, 0.25), contact_sheet=0,
                            decode=DecodeConfig(**DECODE)), RunConfig(seed=9))
    import relight_stream.pipeline.decode as decode

    def forbidden(*a, **k):
        raise AssertionError("re-selection must not decode or score")

    monkeypatch.setattr(decode, "decode_batches", forbidden)
    df = pq.read_table(first / "scores.parquet").to_pandas()
    t = float(np.nanmedian(df["photo_score"]))
    second = tmp_path / "second"
    cfg = FilterConfig(from_scores=str(first / "scores.parquet"), out=str(second), threshold=t,
                       splits=(0.5, 0.25, 0.25), contact_sheet=0)
    assert run_filter(cfg, RunConfig(seed=9)) == 0
    sel = read_csv(second / "selected.csv")
    expect = df[(df["status"] == "ok") & (df["photo_score"] >= t)]
    assert {r["image_path"] for r in sel} == set(expect["path"])
    # every image keeps the split it had in the first run (splits are per key, not per selection)
    before = {r["image_path"]: s for s in ("train", "val", "test") for r in read_csv(first / f"{s}.csv")}
    after = {r["image_path"]: s for s in ("train", "val", "test") for r in read_csv(second / f"{s}.csv")}
    assert after and all(before[p] == s for p, s in after.items())
    gap = json.loads((second / "stats.json").read_text())["verification"]["gap_at_cutoff"]
    assert gap == pytest.approx(expect["photo_score"].min() - df.loc[(df["status"] == "ok") & (df["photo_score"] < t),
                                                                    "photo_score"].max())
    assert (second / "score_histogram.png").is_file()  # re-selection draws its own plot
    with pytest.raises(ValueError, match="clip_score"):
        run_filter(FilterConfig(from_scores=str(first), out=str(tmp_path / "x"), scorer="clip"), RunConfig())


def test_tiny_clip_combined_over_a_tar_keeps_per_prompt_scores_and_embeddings(files, tmp_path, monkeypatch):
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tf:
        for rel, data in sorted(files.items()):
            key = rel.rsplit(".", 1)[0].replace("/", "_")
            ti = tarfile.TarInfo(f"{key}.{rel.rsplit('.', 1)[1]}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
            meta = json.dumps({"src": rel}).encode()
            ti = tarfile.TarInfo(f"{key}.json")
            ti.size = len(meta)
            tf.addfile(ti, io.BytesIO(meta))
    out = tmp_path / "out"
    clip = ClipConfig(model="tiny", pretrained=None, backend="eager", batch_size=4)
    cfg = FilterConfig(inputs=[str(shard)], out=str(out), scorer="combined", top=5, save_embeddings=True,
                       contact_sheet=3, decode=DecodeConfig(**DECODE), clip=clip)
    assert run_filter(cfg, RunConfig(seed=0, device="cpu")) == 0
    table = pq.read_table(out / "scores.parquet")
    df = table.to_pandas()
    meta = json.loads(table.schema.metadata[b"relight_stream"])
    assert "good" in meta["prompts"] and len(meta["prompts"]) >= 7
    ok = df["status"] == "ok"
    assert ok.sum() == len(files) - 3
    prompt_cols = [c for c in df.columns if c.startswith("clip_p_")]
    np.testing.assert_allclose(df.loc[ok, prompt_cols].sum(axis=1), 1, atol=1e-4)
    assert df.loc[ok, "clip_top_negative"].notna().all() and df.loc[~ok, "clip_score"].isna().all()
    emb = np.load(out / "embeddings.npy")
    assert emb.shape[0] == len(df) and np.isfinite(emb[ok.to_numpy()]).all() and np.isnan(emb[~ok.to_numpy()]).all()
    selected = read_csv(out / "selected.csv")
    expect = np.sqrt(df.loc[ok, "photo_score"] * df.loc[ok, "clip_score"]).sort_values(ascending=False)[:5]
    np.testing.assert_allclose([float(r["lighting_score"]) for r in selected], expect, atol=1e-5)
    assert all("::" in r["image_path"] and r["image_path"].startswith(str(shard)) for r in selected)

    # C12: a new CLIP threshold re-selects from the stored clip_score, with no model built
    import relight_stream.engines.registry as registry

    monkeypatch.setattr(registry, "create_engine", lambda *a, **k: pytest.fail("re-selection built a model"))
    t = float(df.loc[ok, "clip_score"].median())
    again = tmp_path / "again"
    assert run_filter(FilterConfig(from_scores=str(out), out=str(again), scorer="clip", threshold=t), RunConfig()) == 0
    expect_keys = set(df.loc[ok & (df["clip_score"] >= t), "key"])
    assert len(read_csv(again / "selected.csv")) == len(expect_keys) > 0


def test_dry_run_writes_nothing_and_bad_runs_fail_before_output(folder, tmp_path):
    out = tmp_path / "dry"
    cfg = FilterConfig(inputs=[str(folder)], out=str(out), dry_run=True, scorer="combined",
                       clip=ClipConfig(model="tiny", pretrained=None), decode=DecodeConfig(**DECODE))
    assert run_filter(cfg, RunConfig()) == 0
    assert not out.exists()
    with pytest.raises(ValueError, match="give INPUT"):
        run_filter(FilterConfig(out=str(out)), RunConfig())
    with pytest.raises(ValueError, match="not both"):
        run_filter(FilterConfig(inputs=[str(folder)], from_scores=str(folder), out=str(out)), RunConfig())
    with pytest.raises(ValueError, match="not found"):
        run_filter(FilterConfig(inputs=[str(tmp_path / "nope")], out=str(out)), RunConfig())
    with pytest.raises(ValueError, match="head file not found"):
        run_filter(FilterConfig(inputs=[str(folder)], out=str(out), scorer="clip",
                                clip=ClipConfig(model="tiny", pretrained=None, head=str(tmp_path / "h.npz"))),
                   RunConfig())
    assert not out.exists()


def test_cli_filter_maps_flags_and_dry_run_prints_the_plan(folder, tmp_path):
    from click.testing import CliRunner

    from relight_stream.cli import cli

    out = tmp_path / "cli"
    res = CliRunner().invoke(cli, ["--seed", "3", "filter", str(folder), "--out", str(out), "--top", "4",
                                   "--splits", "0.5,0.25,0.25", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "15 inputs" in res.output and "photometric" in res.output and not out.exists()
    res = CliRunner().invoke(cli, ["--seed", "3", "filter", str(folder), "--out", str(out), "--top", "4",
                                   "--splits", "0.5,0.25,0.25"])
    assert res.exit_code == 0, res.output
    assert len(read_csv(out / "selected.csv")) == 4
    assert json.loads((out / "stats.json").read_text())["seed"] == 3
    res = CliRunner().invoke(cli, ["filter", "--out", str(out)])
    assert res.exit_code == 2 and "INPUT" in res.output


def test_only_unreadable_inputs_still_record_every_one_and_select_nothing(files, tmp_path):
    root = tmp_path / "bad"
    for rel in BAD:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(files[rel])
    out = tmp_path / "out"
    assert run_filter(FilterConfig(inputs=[str(root)], out=str(out), top=2, decode=DecodeConfig(**DECODE)),
                      RunConfig()) == 0
    df = pq.read_table(out / "scores.parquet").to_pandas()
    assert sorted(df["reason"]) == sorted(BAD.values()) and (df["status"] == "skipped").all()
    assert "photo_score" in df.columns and df["photo_score"].isna().all()
    assert read_csv(out / "selected.csv") == []
    assert json.loads((out / "stats.json").read_text())["selected"] == 0


RANK_SCRIPT = """
import json, sys
from relight_stream.config import DecodeConfig, FilterConfig, RunConfig
from relight_stream.pipeline.filter_run import run_filter
a = json.loads(sys.argv[1])
cfg = FilterConfig(inputs=a["inputs"], out=a["out"], top=6, splits=(0.5, 0.25, 0.25), contact_sheet=3,
                   samples_per_unit=2, merge_timeout_s=60, decode=DecodeConfig(**a["decode"]))
sys.exit(run_filter(cfg, RunConfig(seed=5)))
"""


def test_two_ranks_write_the_same_outputs_as_one_process(folder, files, tmp_path):
    """A real 2-process run (RANK/WORLD_SIZE as torchrun sets them): byte-identical selection and splits."""
    import os
    import subprocess
    import sys

    from relight_stream.pipeline.sources import make_plan

    one, two = tmp_path / "one", tmp_path / "two"
    cfg = FilterConfig(inputs=[str(folder)], out=str(one), top=6, splits=(0.5, 0.25, 0.25), contact_sheet=3,
                       samples_per_unit=2, decode=DecodeConfig(**DECODE))
    assert run_filter(cfg, RunConfig(seed=5)) == 0
    arg = json.dumps({"inputs": [str(folder)], "out": str(two), "decode": DECODE})
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, arg], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})
             for r in (1, 0)]
    for p in procs:
        log_text = p.communicate(timeout=120)[0]
        assert p.returncode == 0, log_text
    for name in ("selected.csv", "train.csv", "val.csv", "test.csv", "contact_sheet.jpg", "score_histogram.png"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    a, b = (pq.read_table(d / "scores.parquet").to_pandas() for d in (one, two))
    assert len(b) == len(files) and a.equals(b)
    assert not list(two.glob("*-rank*")), "the parts are removed after the merge"
    # each rank scored exactly the inputs of its work units (k mod 2)
    plan = make_plan([str(folder)], samples_per_shard=2)
    ranks = json.loads((two / "stats.json").read_text())["run"]["ranks"]
    assert [r["inputs"] for r in ranks] == [sum(len(u.items) for u in plan.for_rank(r, 2)) for r in (0, 1)]


def test_rank_parts_merge_clip_scores_and_embeddings(files, folder, tmp_path, monkeypatch):
    """Ranks 1 then 0 in this process (the file protocol only): tiny-CLIP scores and embeddings merge in key order."""
    clip = ClipConfig(model="tiny", pretrained=None, backend="eager", batch_size=8)
    cfg = FilterConfig(inputs=[str(folder)], out=str(tmp_path / "one"), scorer="combined", top=5,
                       save_embeddings=True, contact_sheet=0, samples_per_unit=4, decode=DecodeConfig(**DECODE),
                       clip=clip)
    assert run_filter(cfg, RunConfig(seed=1, device="cpu")) == 0
    two = tmp_path / "two"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for r in (1, 0):
        monkeypatch.setenv("RANK", str(r))
        assert run_filter(dataclasses.replace(cfg, out=str(two)), RunConfig(seed=1, device="cpu")) == 0
        assert r == 0 or (two / "scores-rank001.parquet").is_file() and not (two / "scores.parquet").exists()
    a, b = (pq.read_table(d / "scores.parquet").to_pandas() for d in (tmp_path / "one", two))
    assert list(a["key"]) == list(b["key"]) and list(a.columns) == list(b.columns)
    score_cols = [c for c in a.columns if a[c].dtype == float]
    assert {"photo_score", "clip_score", "clip_g_good"} <= set(score_cols)
    np.testing.assert_allclose(a[score_cols].to_numpy(float), b[score_cols].to_numpy(float), atol=1e-5)
    ea, eb = np.load(tmp_path / "one" / "embeddings.npy"), np.load(two / "embeddings.npy")
    assert ea.shape == eb.shape == (len(files), ea.shape[1])
    np.testing.assert_allclose(ea.astype(np.float32), eb.astype(np.float32), atol=2e-3, equal_nan=True)


def test_more_ranks_than_work_units_still_merge_every_input(folder, files, tmp_path, monkeypatch):
    """One work unit over three ranks: ranks 1 and 2 write empty parts, rank 0's merge is the one-process table."""
    cfg = FilterConfig(inputs=[str(folder)], out=str(tmp_path / "one"), top=4, contact_sheet=0,
                       samples_per_unit=64, decode=DecodeConfig(**DECODE))
    assert run_filter(cfg, RunConfig(seed=2)) == 0
    monkeypatch.setenv("WORLD_SIZE", "3")
    for r in (2, 1, 0):
        monkeypatch.setenv("RANK", str(r))
        assert run_filter(dataclasses.replace(cfg, out=str(tmp_path / "three")), RunConfig(seed=2)) == 0
    a, b = (pq.read_table(tmp_path / d / "scores.parquet").to_pandas() for d in ("one", "three"))
    assert len(b) == len(files) and a.equals(b)
    assert (tmp_path / "three" / "selected.csv").read_bytes() == (tmp_path / "one" / "selected.csv").read_bytes()
