"""``cache-latents`` with an fp16 VAE producing NaN (RELIABILITY E6): every bad key named, recorded, not written;
and out of GPU memory: the batch is encoded in halves."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import webdataset as wds

from relight_stream.config import CacheLatentsConfig, RunConfig
from relight_stream.train import latents as L
from relight_stream.train.fixtures import write_synthetic_shards
from relight_stream.train.setup import TrainOutOfMemory

BAD = ("s00002", "s00009")  # one in each input shard


def test_nonfinite_latents_are_logged_each_recorded_in_latents_json_and_not_written(tmp_path, monkeypatch, caplog):
    torch.set_num_threads(1)
    shards = write_synthetic_shards(tmp_path / "s", num_samples=12, per_shard=6, resolution=32)
    real = L.encode_batch

    def fp16_vae(model, items, device, autocast):  # the real tiny VAE; NaN moments where fp16 would overflow
        out = real(model, items, device, autocast)
        for i, it in enumerate(items):
            if it["key"] in BAD:
                out["moments"][i] = np.nan
        return out

    monkeypatch.setattr(L, "encode_batch", fp16_vae)
    lat = tmp_path / "lat"
    cfg = CacheLatentsConfig(shards=shards, out=str(lat), resolution=32, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="relight_stream.train.latents"):
        assert L.run_cache_latents(cfg, RunConfig()) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and L.NONFINITE in r.getMessage()]
    for key in BAD:  # every key named (not only the first of the reason), with the field and the advice
        assert any(key in m and "moments.npy" in m and "bf16" in m for m in warned), warned

    info = json.loads((lat / "latents.json").read_text())
    assert info["model"] == "tiny" and info["resolution"] == 32
    assert info["drops"] == {L.NONFINITE: 2} and info["dropped"] == {L.NONFINITE: list(BAD)}
    assert info["shards"]["shard-000000.tar"] == {"written": 5, "drops": {L.NONFINITE: 1},
                                                   "dropped": {L.NONFINITE: ["s00002"]}}
    tars = sorted(str(t) for t in lat.glob("shard-*.tar"))
    written = [s["__key__"] for t in tars for s in wds.WebDataset(t, shardshuffle=False)]
    assert written == [f"s{i:05d}" for i in range(12) if f"s{i:05d}" not in BAD]

    assert L.run_cache_latents(cfg, RunConfig()) == 0  # a rerun skips both shards and keeps their records
    assert json.loads((lat / "latents.json").read_text())["dropped"] == {L.NONFINITE: list(BAD)}


def _latents(folder) -> dict[str, np.ndarray]:
    out = {}
    for tar in sorted(folder.glob("shard-*.tar")):
        for rec in wds.WebDataset(str(tar), shardshuffle=False).decode():
            out[rec["__key__"]] = rec["moments.npy"]
    return out


def test_out_of_memory_halves_the_batch_and_writes_the_same_latents(tmp_path, monkeypatch, caplog):
    """A GPU OOM (injected above 2 samples: the CPU has none) is retried in halves; nothing is lost or changed."""
    torch.set_num_threads(1)
    shards = write_synthetic_shards(tmp_path / "s", num_samples=6, per_shard=6, resolution=32)
    plain = tmp_path / "plain"
    assert L.run_cache_latents(CacheLatentsConfig(shards=shards, out=str(plain), resolution=32, batch_size=4),
                               RunConfig()) == 0
    real, sizes = L.encode_batch, []

    def small_gpu(model, items, device, autocast):
        sizes.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(model, items, device, autocast)

    monkeypatch.setattr(L, "encode_batch", small_gpu)
    halved = tmp_path / "halved"
    with caplog.at_level(logging.WARNING, logger="relight_stream.train.latents"):
        assert L.run_cache_latents(CacheLatentsConfig(shards=shards, out=str(halved), resolution=32, batch_size=4),
                                   RunConfig()) == 0
    assert sizes == [4, 2, 2, 2]  # the first batch in halves; the last one (2 samples) fits at once
    assert "out of GPU memory at batch 4: encoding in halves of 2" in caplog.text
    a, b = _latents(plain), _latents(halved)
    assert sorted(a) == sorted(b) and len(a) == 6
    assert all(np.allclose(a[k], b[k], atol=1e-3) for k in a)

    def no_room(model, items, device, autocast):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(L, "encode_batch", no_room)
    with pytest.raises(TrainOutOfMemory, match="one sample at this resolution does not fit"):
        L.run_cache_latents(CacheLatentsConfig(shards=shards, out=str(tmp_path / "none"), resolution=32,
                                               batch_size=4), RunConfig())
    assert not list((tmp_path / "none").glob("*.tar*"))  # no half-written shard left behind
