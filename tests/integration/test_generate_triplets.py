"""``generate`` end to end with the triplet stages: real photos and synthetic fixtures in, triplet shards out.

Checks the product (ARCHITECTURE.md §5): every member present, input relit on neutral grey with the target's
mask, the applied light recorded and described, bad subjects skipped and recorded, byte-identical reruns,
loading with webdataset and ``datasets``, the preview sheet, and the neural backends with tiny random weights.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from relight_stream.config import (
    DecodeConfig,
    GenerateConfig,
    GeometryConfig,
    RelightConfig,
    RunConfig,
    SegmentConfig,
    ShardConfig,
)
from relight_stream.pipeline.instruct import direction_words
from relight_stream.pipeline.recipes import run_generate

RES = 96
MEMBERS = {"input.jpg", "target.jpg", "instruction.txt", "meta.json", "mask.png", "albedo.jpg", "normals.png",
           "depth.npy", "shading.jpg"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, photos) -> Path:
    """Four real photos, a synthetic subject on a plain backdrop, and a flat image (no subject)."""
    d = tmp_path_factory.mktemp("photos")
    for name, img in photos.items():
        cv2.imwrite(str(d / f"{name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    disk = np.full((128, 128, 3), (60, 90, 140), np.uint8)
    cv2.circle(disk, (64, 70), 36, (210, 160, 110), -1)
    cv2.imwrite(str(d / "disk.jpg"), disk)
    cv2.imwrite(str(d / "flat.jpg"), np.full((128, 128, 3), 128, np.uint8))
    return d


def _cfg(inputs: Path, out: Path, *, batch_size: int = 3, samples_per_shard: int = 4, **kw) -> GenerateConfig:
    dec = DecodeConfig(resolution=RES, batch_size=batch_size, backend="pil", min_size=16)
    shard = ShardConfig(samples_per_shard=samples_per_shard)
    return GenerateConfig(inputs=[str(inputs)], out=str(out), decode=dec, shard=shard, **kw)


def _samples(out: Path) -> list[dict]:
    import webdataset as wds

    tars = sorted(str(p) for p in out.glob("shard-*.tar"))
    return list(wds.WebDataset(tars, shardshuffle=False, handler=wds.reraise_exception))


def _records(out: Path) -> list[dict]:
    rows = []
    for p in sorted(out.glob("shard-*.json")):
        rec = json.loads(p.read_text())
        rows += rec.get("samples") or rec.get("rows") or []
    return rows


@pytest.fixture(scope="module")
def classical_run(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "out"
    assert run_generate(_cfg(inputs, out, preview=3), RunConfig(seed=7)) == 0
    return out


def test_classical_generate_writes_complete_relit_triplets(classical_run: Path) -> None:
    samples = _samples(classical_run)
    stats = json.loads((classical_run / "stats.json").read_text())
    assert stats["inputs"] == 6 and stats["ok"] + stats["skipped"] + stats["failed"] == 6
    assert stats["ok"] == len(samples) >= 4, stats
    assert any(r.startswith("segment:") for r in stats["drops"]), "the flat image must be skipped by segment"
    for s in samples:
        assert MEMBERS <= set(s), sorted(s)
        inp = cv2.imdecode(np.frombuffer(s["input.jpg"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        tgt = cv2.imdecode(np.frombuffer(s["target.jpg"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        mask = cv2.imdecode(np.frombuffer(s["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert inp.shape == tgt.shape == (RES, RES, 3) and mask.shape == (RES, RES)
        assert 0 < ((mask > 0) & (mask < 255)).sum(), "the mask has no soft edge"
        bg = mask == 0
        assert np.abs(inp[bg].astype(int) - 128).mean() < 3, "the background must be neutral grey"
        fg = mask == 255
        assert np.abs(inp[fg].astype(int) - tgt[fg].astype(int)).mean() > 4, "the input is not visibly relit"
        depth = np.load(io.BytesIO(s["depth.npy"]))
        assert depth.shape == (RES, RES) and 0 <= depth.min() and depth.max() <= 1
        meta = json.loads(s["meta.json"])
        rel = meta["relight"]
        assert rel["degradation"] in RelightConfig().mix and rel["seed"].isdigit()
        assert all({"direction", "intensity", "color"} <= set(light) for light in rel["lights"])
        assert {"segment", "geometry", "albedo", "instruct"} <= set(meta)
        text = s["instruction.txt"].decode()
        assert text == meta["instruct"]["phrasings"][meta["instruct"]["template"]] and len(text) > 20
        key_light = next((light for light in rel["lights"] if light["role"] == "key"), None)
        if key_light is not None and rel["variant"] != "flat":  # the applied light is named, in words
            assert direction_words(key_light["direction"]) in meta["instruct"]["applied"]


def test_preview_sheet_is_written(classical_run: Path) -> None:
    sheet = cv2.imread(str(classical_run / "preview.png"))
    assert sheet is not None and sheet.shape[1] == 6 * 192 and sheet.shape[0] > 3 * 192


def test_same_seed_gives_byte_identical_shards(inputs, classical_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert run_generate(_cfg(inputs, out), RunConfig(seed=7)) == 0
    a = {p.name: p.read_bytes() for p in sorted(classical_run.glob("shard-*.tar"))}
    b = {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_shards_load_with_hf_datasets(classical_run: Path) -> None:
    datasets = pytest.importorskip("datasets")
    tars = sorted(str(p) for p in classical_run.glob("shard-*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train",
                               cache_dir=str(classical_run.parent / "hf-cache"))
    assert len(ds) == len(_samples(classical_run))
    row = ds[0]
    assert {"input.jpg", "target.jpg", "instruction.txt", "meta.json"} <= set(row)
    # The README's export for the diffusers example script (its default column names), loaded as it loads data
    export = classical_run.parent / "hf-export"
    ds = ds.select_columns(["input.jpg", "instruction.txt", "target.jpg"]).rename_columns(
        {"input.jpg": "input_image", "instruction.txt": "edit_prompt", "target.jpg": "edited_image"})
    ds.to_parquet(str(export / "train.parquet"))
    loaded = datasets.load_dataset(str(export), cache_dir=str(classical_run.parent / "hf-cache"))["train"]
    first = loaded[0]
    assert loaded.column_names == ["input_image", "edit_prompt", "edited_image"] and len(loaded) == len(ds)
    assert first["input_image"].size == first["edited_image"].size and first["edit_prompt"] == row["instruction.txt"]


def test_triplet_shards_load_every_member_in_dali(classical_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from nvidia.dali import fn, pipeline_def

    samples = _samples(classical_run)
    exts = sorted(k for k in samples[0] if not k.startswith("__"))
    assert {"input.jpg", "target.jpg", "instruction.txt", "meta.json", "mask.png", "normals.png"} <= set(exts)
    tars = sorted(str(p) for p in classical_run.glob("shard-*.tar"))
    idx = [str(tmp_path / Path(t).with_suffix(".idx").name) for t in tars]
    for t, i in zip(tars, idx):  # DALI's index, made by the tool DALI ships
        subprocess.run([str(Path(sys.executable).with_name("wds2idx")), t, i], check=True, capture_output=True)

    @pipeline_def(batch_size=len(samples), num_threads=1, device_id=None)
    def pipe():  # every member of every sample, or an error: the field set is the same in every sample
        return tuple(fn.readers.webdataset(paths=tars, index_paths=idx, ext=exts, missing_component_behavior="error"))

    p = pipe()
    p.build()
    outs = dict(zip(exts, p.run()))
    for j, s in enumerate(samples):
        assert all(bytes(outs[e].at(j)) == s[e] for e in exts), s["__key__"]


def test_neural_backends_with_tiny_random_weights(inputs, tmp_path: Path) -> None:
    pytest.importorskip("sam2")
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "neural"
    cfg = _cfg(inputs, out, batch_size=6, samples_per_shard=6, segment=SegmentConfig(backend="sam2", flavor="tiny"),
               geometry=GeometryConfig(backend="depth-anything", flavor="tiny"))
    assert run_generate(cfg, RunConfig(seed=1, device="cpu")) == 0
    stats = json.loads((out / "stats.json").read_text())
    # Random SAM2 weights give p ≈ 0.5 masks: every one is skipped and recorded, none written as a success.
    assert stats["ok"] == 0 and stats["skipped"] + stats["failed"] == 6 and stats["failed"] == 0
    assert set(stats["drops"]) <= {"segment:indecisive_mask", "segment:empty_mask", "segment:implausible_mask"}
    assert stats["drops"].get("segment:indecisive_mask", 0) >= 4, stats["drops"]
    # The tiny depth model behind the classical segmenter: samples reach it and record it.
    out = tmp_path / "depth"
    cfg = _cfg(inputs, out, batch_size=6, samples_per_shard=6,
               geometry=GeometryConfig(backend="depth-anything", flavor="tiny"))
    assert run_generate(cfg, RunConfig(seed=1, device="cpu")) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["ok"] >= 1 and stats["failed"] == 0, stats
    for s in _samples(out):
        meta = json.loads(s["meta.json"])
        assert meta["geometry"]["backend"] == "depth-anything" and meta["geometry"]["model"]["flavor"] == "tiny"


def test_consistency_mode_writes_three_inputs(inputs, tmp_path: Path) -> None:
    out = tmp_path / "cons"
    cfg = _cfg(inputs, out, relight=RelightConfig(consistency=True))
    assert run_generate(cfg, RunConfig(seed=2)) == 0
    samples = _samples(out)
    assert samples and all({"input_l1.jpg", "input_l2.jpg", "input_l12.jpg"} <= set(s) for s in samples)
    meta = json.loads(samples[0]["meta.json"])
    assert meta["relight"]["consistency"]["l2"]["lights"] or meta["relight"]["consistency"]["l2"]["sh"]


def test_a_batch_with_every_sample_dropped_is_recorded_not_failed(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "flat.jpg"), np.full((64, 64, 3), 128, np.uint8))
    out = tmp_path / "out"
    assert run_generate(_cfg(src, out, batch_size=1), RunConfig(seed=0)) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["skipped"] == 1 and stats["ok"] == 0


def test_shards_load_in_the_trainer(classical_run: Path) -> None:
    pytest.importorskip("torch")
    from relight_stream.train.data import ShardStream

    tars = sorted(str(p) for p in classical_run.glob("shard-*.tar"))
    batch = next(iter(ShardStream(tars, batch_size=2, resolution=64, seed=0, shuffle_buffer=1)))
    assert tuple(batch["input"].shape) == (2, 3, 64, 64) and tuple(batch["target"].shape) == (2, 3, 64, 64)
    assert all(isinstance(t, str) and t for t in batch["instruction"])
