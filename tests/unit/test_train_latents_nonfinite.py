"""``cache-latents`` with an fp16 VAE producing NaN (RELIABILITY E6): every bad key named, recorded, not written."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
import webdataset as wds

from relight_stream.config import CacheLatentsConfig, RunConfig
from relight_stream.train import latents as L
from relight_stream.train.fixtures import write_synthetic_shards

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
