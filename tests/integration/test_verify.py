"""``verify`` catches every mismatch, and the shards load in webdataset, DALI and datasets (RELIABILITY.md C10, C11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import fixtures_images as fx
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig, VerifyConfig
from relight_stream.pipeline.recipes import run_generate
from relight_stream.pipeline.verify import run_verify, verify_dir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """3 verified shards from 7 images (one PNG with alpha, one gray JPEG, one truncated file)."""
    d = tmp_path_factory.mktemp("verify")
    fx.ffhq_tree(d / "in", n=4)
    fx.write_tree(d / "in", {"x/alpha.png": fx.rgba_png(128), "x/gray.jpg": fx.gray("JPEG"),
                             "x/cut.jpg": fx.truncated(fx.jpeg_bytes())})
    cfg = GenerateConfig(inputs=[str(d / "in")], out=str(d / "out"),
                         decode=DecodeConfig(resolution=32, min_size=16, backend="pil"),
                         shard=ShardConfig(samples_per_shard=3))
    assert run_generate(cfg, RunConfig(seed=0), stages=[]) == 0
    return d / "out"


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_good_output_verifies(shards, capsys):
    assert run_verify(VerifyConfig(out=str(shards)), RunConfig()) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"shards": 3, "ok": 6, "skipped": 1, "failed": 0, "fields": ["meta.json", "target.jpg"],
                       "problems": 0}


def test_verify_cli_exit_codes(shards, tmp_path):
    from click.testing import CliRunner

    from relight_stream.cli import cli

    assert CliRunner().invoke(cli, ["verify", str(shards)]).exit_code == 0
    bad = _copy(shards, tmp_path / "bad")
    (bad / "shard-000001.json").unlink()
    res = CliRunner().invoke(cli, ["verify", str(bad)])
    assert res.exit_code == 1 and '"problems": 1' in res.output


def test_tampered_tar_bytes_are_caught(shards, tmp_path):
    bad = _copy(shards, tmp_path / "bad")
    p = bad / "shard-000000.tar"
    data = bytearray(p.read_bytes())
    data[1024] ^= 0xFF  # inside the first member's data
    p.write_bytes(bytes(data))
    problems, _ = verify_dir(str(bad))
    assert any("sha256/size differ" in x for x in problems) and any("member hashes differ" in x for x in problems)


def test_record_counts_and_rows_are_checked(shards, tmp_path):
    bad = _copy(shards, tmp_path / "bad")
    rec = json.loads((bad / "shard-000000.json").read_text())
    rec["counts"]["ok"] += 1
    (bad / "shard-000000.json").write_text(json.dumps(rec))
    problems, _ = verify_dir(str(bad))
    assert any("do not add up" in x for x in problems)


def _rewrite_tar(path: Path, rename) -> None:
    with tarfile.open(path) as tf:
        members = [(rename(ti.name), tf.extractfile(ti).read()) for ti in tf]
    fx.write_tar(path, members)


def test_dotted_keys_uppercase_fields_and_field_set_drift_are_caught(shards, tmp_path):
    bad = _copy(shards, tmp_path / "bad")
    _rewrite_tar(bad / "shard-000001.tar", lambda n: n.replace(".jpg", ".JPG"))
    with tarfile.open(bad / "shard-000002.tar") as tf:
        members = [(ti.name, tf.extractfile(ti).read()) for ti in tf if not ti.name.endswith("meta.json")]
    fx.write_tar(bad / "shard-000002.tar", members)
    rec = json.loads((bad / "shard-000000.json").read_text())
    rec["rows"][0]["key"] = "00000/0.0"
    (bad / "shard-000000.json").write_text(json.dumps(rec))
    problems, _ = verify_dir(str(bad))
    text = "\n".join(problems)
    assert "shard-000001: 00000/00003: field names are not lowercase" in text
    assert "shard-000002: x/gray: fields ['target.jpg'] differ from ['meta.json', 'target.jpg']" in text
    assert "shard-000000: record key '00000/0.0' is not a valid key" in text


def test_leftover_temp_files_are_reported(shards, tmp_path):
    bad = _copy(shards, tmp_path / "bad")
    (bad / "shard-000002.tar.tmp-99").write_bytes(b"x")
    problems, _ = verify_dir(str(bad))
    assert problems == ["leftover temp file shard-000002.tar.tmp-99"]


def test_c11_shards_load_in_webdataset_dali_and_datasets(shards, tmp_path):
    import webdataset as wds

    tars = sorted(str(p) for p in shards.glob("shard-*.tar"))
    ok_keys = [r["key"] for p in sorted(shards.glob("shard-*.json")) for r in json.loads(p.read_text())["rows"]
               if r["status"] == "ok"]
    ds = wds.WebDataset(tars, shardshuffle=False, handler=wds.reraise_exception).decode("rgb8")
    samples = list(ds)
    assert [s["__key__"] for s in samples] == ok_keys
    assert all(set(s) == {"__key__", "__url__", "__local_path__", "meta.json", "target.jpg"} or
               set(s) == {"__key__", "__url__", "meta.json", "target.jpg"} for s in samples)

    from nvidia.dali import fn, pipeline_def

    wds2idx = Path(sys.executable).with_name("wds2idx")
    idx = []
    for t in tars:
        subprocess.run([str(wds2idx), t, t.replace(".tar", ".idx")], check=True, capture_output=True)
        idx.append(t.replace(".tar", ".idx"))

    @pipeline_def(batch_size=len(ok_keys), num_threads=1, device_id=None)
    def pipe():
        jpg, meta = fn.readers.webdataset(paths=tars, index_paths=idx, ext=["target.jpg", "meta.json"],
                                          missing_component_behavior="error")
        return jpg, meta

    p = pipe()
    p.build()
    jpgs, metas = p.run()
    got = [json.loads(bytes(metas.at(i)))["key"] for i in range(len(ok_keys))]
    assert got == ok_keys and all(jpgs.at(i)[:2].tolist() == [0xFF, 0xD8] for i in range(len(ok_keys)))
    for i in idx:
        os.unlink(i)

    import datasets

    hf = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path))
    assert hf.num_rows == len(ok_keys) and hf["__key__"] == ok_keys
    assert set(hf.column_names) >= {"meta.json", "target.jpg"}
