"""Shard writer: the field→member table, records, atomic commit, determinism, resume (RELIABILITY.md C3–C6)."""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from relight_stream.config import GenerateConfig, config_to_dict
from relight_stream.keys import sample_seed
from relight_stream.pipeline import shard as S
from relight_stream.pipeline.sources import InputItem, WorkUnit
from relight_stream.sample import SampleBatch


def _batch(n: int = 3, res: int = 16, *, full: bool = True) -> SampleBatch:
    rng = np.random.default_rng(0)
    keys = [f"d/k{i}" for i in range(n)]
    b = SampleBatch(keys=keys, meta=[{"key": k, "x": np.float32(0.5)} for k in keys])
    b["rgb_BHW3"] = rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8)
    if full:
        b["input_BHW3"] = rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8)
        b["instruction_B"] = [f"light from the left {i}" for i in range(n)]
        b["mask_BHW"] = np.linspace(0, 1, n * res * res, dtype=np.float32).reshape(n, res, res)
        nz = np.zeros((n, res, res, 3), np.float32)
        nz[..., 2] = 1.0
        b["normals_BHW3"] = nz
        b["depth_BHW"] = np.full((n, res, res), 0.25, np.float32)
        b["albedo_BHW3"] = np.full((n, res, res, 3), 0.214, np.float32)  # linear 0.214 ~ sRGB 128
        b["shading_BHW3"] = np.full((n, res, res, 3), 2.0, np.float32)  # clipped to 1 -> 255
    return b


def _write(tmp_path, batch: SampleBatch, name: str = "shard-000000", seed: int = 0) -> dict:
    fields = S.output_fields(set(batch.arrays))
    with S.ShardWriter(str(tmp_path), name, header={"config_hash": "c", "input_fingerprint": "f", "seed": seed},
                       fields=fields, seed=seed) as w:
        w.add_batch(batch)
    return json.loads((tmp_path / f"{name}.json").read_text())


def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {ti.name: tf.extractfile(ti).read() for ti in tf}


def test_every_field_maps_to_its_member_with_the_documented_encoding(tmp_path):
    b = _batch()
    b.drop(1, "segment:empty_mask")
    rec = _write(tmp_path, b, seed=4)
    m = _members(tmp_path / "shard-000000.tar")
    assert sorted(k for k in m if k.startswith("d/k0.")) == [f"d/k0.{x}" for x in (
        "albedo.jpg", "depth.npy", "input.jpg", "instruction.txt", "mask.png", "meta.json", "normals.png",
        "shading.jpg", "target.jpg")]
    assert not any(k.startswith("d/k1.") for k in m)
    assert m["d/k0.instruction.txt"] == b"light from the left 0"
    assert json.loads(m["d/k0.meta.json"]) == {"key": "d/k0", "x": 0.5}
    depth = np.load(io.BytesIO(m["d/k0.depth.npy"]))
    assert depth.dtype == np.float16 and depth.shape == (16, 16) and (depth == 0.25).all()
    normals = np.asarray(Image.open(io.BytesIO(m["d/k0.normals.png"])))
    assert (normals[..., 2] == 255).all() and (np.abs(normals[..., :2].astype(int) - 128) <= 1).all()
    mask = np.asarray(Image.open(io.BytesIO(m["d/k0.mask.png"])))
    assert mask.dtype == np.uint8 and mask.ndim == 2 and mask.max() <= 255
    assert abs(np.asarray(Image.open(io.BytesIO(m["d/k0.albedo.jpg"]))).mean() - 128) < 2
    assert np.asarray(Image.open(io.BytesIO(m["d/k0.shading.jpg"]))).min() >= 253
    target = np.asarray(Image.open(io.BytesIO(m["d/k0.target.jpg"]))).astype(int)
    assert np.abs(target - b["rgb_BHW3"][0]).mean() < 6
    # the record: one row per input, hashes of the members, seeds from the key
    assert rec["counts"] == {"ok": 2, "skipped": 1, "failed": 0} and rec["num_inputs"] == 3
    assert [r["status"] for r in rec["rows"]] == ["ok", "skipped", "ok"]
    assert rec["rows"][1]["reason"] == "segment:empty_mask" and rec["rows"][1]["members"] == {}
    assert rec["rows"][0]["seed"] == sample_seed(4, "d/k0")
    import hashlib

    assert rec["rows"][2]["members"]["target.jpg"] == hashlib.sha256(m["d/k2.target.jpg"]).hexdigest()


def test_tar_members_are_adjacent_sorted_with_fixed_headers_and_bytes_are_reproducible(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _write(a, _batch())
    _write(b, _batch())
    assert (a / "shard-000000.tar").read_bytes() == (b / "shard-000000.tar").read_bytes()
    assert (a / "shard-000000.json").read_bytes() == (b / "shard-000000.json").read_bytes()
    with tarfile.open(a / "shard-000000.tar") as tf:
        infos = tf.getmembers()
    names = [ti.name for ti in infos]
    assert names == sorted(names, key=lambda n: (n.split(".")[0], n))
    assert {(ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode) for ti in infos} == {(0, 0, 0, "", "", 0o644)}


def test_a_batch_with_every_sample_dropped_needs_no_stage_fields(tmp_path):
    b = _batch(n=2, full=False)
    b.drop(0, "decode:truncated")
    b.drop(1, "decode:too_small")
    with S.ShardWriter(str(tmp_path), "shard-000000", header={}, fields=S.output_fields(set(_batch().arrays))) as w:
        w.add_batch(b)  # the stages were skipped: no input_BHW3 etc.
    rec = json.loads((tmp_path / "shard-000000.json").read_text())
    assert rec["counts"] == {"ok": 0, "skipped": 2, "failed": 0}


def test_only_target_and_meta_without_artifacts(tmp_path):
    fields = S.output_fields(set(_batch().arrays), write_artifacts=False)
    assert S.member_names(fields) == ["input.jpg", "instruction.txt", "meta.json", "target.jpg"]
    rec = _write(tmp_path, _batch(full=False))
    assert rec["fields"] == ["meta.json", "target.jpg"]


def test_c3_an_exception_inside_the_writer_commits_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with S.ShardWriter(str(tmp_path), "shard-000000", header={}, fields=["rgb_BHW3"]) as w:
            w.add_batch(_batch(full=False))
            raise RuntimeError("stage crashed")
    assert os.listdir(tmp_path) == []


def test_c4_disk_full_is_a_clear_error_and_commits_nothing(tmp_path, monkeypatch):
    from fixtures_faults import tiny_disk_open

    monkeypatch.setattr(S, "open", tiny_disk_open, raising=False)  # a file system with 4 KiB free
    with pytest.raises(OSError, match="disk full at .*shard-000000.tar.tmp") as ei:
        with S.ShardWriter(str(tmp_path), "shard-000000", header={}, fields=["rgb_BHW3"]) as w:
            w.add_batch(_batch(n=8, res=64, full=False))
    assert ei.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_a_sample_with_another_field_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        with S.ShardWriter(str(tmp_path), "shard-000000", header={}, fields=["rgb_BHW3"]) as w:
            w.add_sample("k", {"target.jpg": b"x"}, seed=0)
    assert os.listdir(tmp_path) == []


def test_config_hash_covers_outputs_not_paths_or_flags():
    base = config_to_dict(GenerateConfig(inputs=["a"], out="o"))
    h = S.config_hash(base, 0)
    assert h == S.config_hash(config_to_dict(GenerateConfig(inputs=["b"], out="p", dry_run=True)), 0)
    moved = config_to_dict(GenerateConfig(inputs=["a"], out="o"))
    moved["shard"]["overwrite"] = True
    assert S.config_hash(moved, 0) == h
    assert S.config_hash(base, 1) != h
    changed = config_to_dict(GenerateConfig(inputs=["a"], out="o"))
    changed["shard"]["samples_per_shard"] = 7
    assert S.config_hash(changed, 0) != h


def test_c5_classify_done_todo_and_refuse_changes(tmp_path):
    unit = WorkUnit(0, [InputItem("d/k0", "/x/k0.png", size=3, mtime_ns=1)])
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    (tmp_path / "shard-000000.json").write_text(json.dumps({"shard": "shard-000000", "config_hash": "h",
                                                            "input_fingerprint": unit.fingerprint()}))
    names = {"shard-000000"}
    got = S.classify_shards(str(tmp_path), [unit], names, chash="h", overwrite=False, delete_extra=True)
    assert got == ([], [unit])
    with pytest.raises(ValueError, match="config .*changed.*--overwrite"):
        S.classify_shards(str(tmp_path), [unit], names, chash="other", overwrite=False, delete_extra=True)
    changed = WorkUnit(0, [InputItem("d/k0", "/x/k0.png", size=4, mtime_ns=2)])  # B8: same path, new bytes
    with pytest.raises(ValueError, match="input files changed"):
        S.classify_shards(str(tmp_path), [changed], names, chash="h", overwrite=False, delete_extra=True)
    with pytest.raises(ValueError, match="not in this run's plan"):
        S.classify_shards(str(tmp_path), [], set(), chash="h", overwrite=False, delete_extra=True)
    todo, done = S.classify_shards(str(tmp_path), [changed], names, chash="h", overwrite=True, delete_extra=True)
    assert todo == [changed] and done == [] and not (tmp_path / "shard-000000.json").exists()


def test_c10_stale_temp_files_of_own_shards_are_removed_live_ones_kept(tmp_path):
    import subprocess

    host = S._tmp_suffix().split("-")[1]
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = os.getppid()  # the test runner's parent: alive
    names = [f"shard-000000.tar.tmp-{host}-{dead.pid}", f"shard-000000.json.tmp-{host}-{dead.pid}",
             f"shard-000000.tar.tmp-{host}-{live}", "shard-000000.tar.tmp-otherhost-1", "shard-000000.tar.tmp-7",
             f"shard-000001.tar.tmp-{host}-{dead.pid}", "keep.txt"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    removed = S.clean_stale_temps(str(tmp_path), {"shard-000000"})
    assert sorted(removed) == sorted([names[0], names[1], names[4]])
    assert sorted(os.listdir(tmp_path)) == sorted([names[2], names[3], names[5], "keep.txt"])


def test_an_8bit_row_is_taken_as_already_in_its_member_form():
    # host_field brings a GPU field to uint8 on the device; the encoders must then give the same bytes
    rng = np.random.default_rng(0)
    lin = rng.random((24, 24, 3), dtype=np.float32)
    n = rng.normal(size=(24, 24, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    assert S.enc_linear_jpg(lin, 90) == S.enc_linear_jpg(S.linear_to_srgb8(lin), 90)
    assert S.enc_normals_png(n, 0) == S.enc_normals_png(S.normals_u8(n), 0)
    assert S.enc_srgb_jpg(lin, 90) == S.enc_srgb_jpg(S.quantise_u8(lin), 90)
    assert S.enc_mask_png(lin[..., 0], 0) == S.enc_mask_png(S.quantise_u8(lin[..., 0]), 0)
    field = rng.random((2, 8, 8, 3), dtype=np.float32)
    assert S.host_field("albedo_BHW3", field) is field  # NumPy passes through untouched
    assert S.host_field("instruction_B", ["a", "b"]) == ["a", "b"]
