"""Resolution per model (train / cache-latents / infer) and infer's photo fitting (pad / keep / crop)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from relight_stream.config import CacheLatentsConfig, InferConfig, RunConfig, TrainConfig
from relight_stream.train.data import warn_if_upscaled
from relight_stream.train.fixtures import write_synthetic_shards
from relight_stream.train.infer import GREY, fit_photo, infer_resolution, letterbox, unbox
from relight_stream.train.model import native_resolution, pick_resolution

torch.set_num_threads(1)


def _folder(tmp_path, unet: dict | None, vae: dict | None):
    tmp_path.mkdir(parents=True)
    for name, conf in (("unet", unet), ("vae", vae)):
        if conf is not None:
            (tmp_path / name).mkdir(parents=True)
            (tmp_path / name / "config.json").write_text(json.dumps(conf))
    return tmp_path


def test_configs_leave_the_resolution_to_the_model():
    assert TrainConfig().resolution is None and CacheLatentsConfig().resolution is None
    assert InferConfig().resolution is None and InferConfig().fit == "pad"


def test_native_resolution_per_model(tmp_path):
    assert native_resolution("tiny")[0] == 256 and native_resolution("tiny-sdxl")[0] == 256
    assert native_resolution("sd15")[0] == 512 and native_resolution("sdxl")[0] == 1024
    # a folder: UNet sample_size x the VAE's scale (2 ** (levels - 1)), 8 when the VAE config is missing
    sd2 = _folder(tmp_path / "sd2", {"sample_size": 96}, {"block_out_channels": [128, 256, 512, 512]})
    assert native_resolution(str(sd2))[0] == 768
    assert native_resolution(str(_folder(tmp_path / "novae", {"sample_size": 128}, None)))[0] == 1024
    assert native_resolution(str(_folder(tmp_path / "tiny2", {"sample_size": 32}, {"block_out_channels": [8, 8]})))[
        0] == 64
    assert native_resolution(str(_folder(tmp_path / "bare", None, None)))[0] == 512  # nothing readable: fallback
    with pytest.raises(ValueError, match="not tiny"):
        native_resolution("no-such-model")


def test_pick_resolution_logs_the_choice_once(caplog):
    with caplog.at_level(logging.INFO, logger="relight_stream"):
        assert pick_resolution(None, "sdxl", what="train") == 1024
        assert pick_resolution(96, "sdxl", what="train") == 96
    lines = [r.getMessage() for r in caplog.records if "resolution" in r.getMessage()]
    assert lines == ["train: resolution 1024² (the default for --model sdxl; --resolution overrides)",
                     "train: resolution 96² (--resolution)"]
    with pytest.raises(ValueError, match=">= 1"):
        pick_resolution(0, "tiny", what="train")


def test_infer_resolution_prefers_the_recorded_training_resolution(tmp_path):
    folder = _folder(tmp_path / "m", {"sample_size": 16}, {"block_out_channels": [8, 8]})
    assert infer_resolution(InferConfig(model=str(folder))) == 32  # no stats: the UNet's size
    (folder / "training_stats.json").write_text(json.dumps({"resolution": 48, "step": 1}))
    assert infer_resolution(InferConfig(model=str(folder))) == 48
    assert infer_resolution(InferConfig(model=str(folder), resolution=24)) == 24


def test_fit_photo_pad_keep_crop_sizes():
    portrait = np.random.default_rng(0).integers(0, 256, (160, 96, 3), dtype=np.uint8)  # H=160, W=96
    assert fit_photo(portrait, 64, "pad").shape == (64, 38, 3)  # the photo's aspect, long side 64
    assert fit_photo(portrait, 64, "keep").shape == (64, 40, 3)  # multiples of 8
    assert fit_photo(portrait, 64, "crop").shape == (64, 64, 3)
    wide = np.zeros((50, 400, 3), np.uint8)
    assert fit_photo(wide, 64, "keep").shape == (8, 64, 3)  # never below 8


def test_letterbox_is_grey_around_the_content_and_unbox_returns_it():
    content = np.random.default_rng(1).integers(0, 256, (64, 38, 3), dtype=np.uint8)
    square, box = letterbox(content, 64)
    _, left, h, w = box
    assert square.shape == (64, 64, 3) and (h, w) == (64, 38)
    assert (square[:, :left] == GREY).all() and (square[:, left + w :] == GREY).all()
    np.testing.assert_array_equal(unbox(square, box, 64), content)
    big = np.repeat(np.repeat(square, 2, axis=0), 2, axis=1)  # an output at twice the side is cut and resized
    assert unbox(big, box, 64).shape == (64, 38, 3)


def test_small_shards_warn_once_about_upscaling(tmp_path, caplog):
    shards = write_synthetic_shards(tmp_path, num_samples=2, per_shard=2, resolution=32)
    with caplog.at_level(logging.WARNING, logger="relight_stream"):
        assert warn_if_upscaled(shards, 32, what="train") == (32, 32)
        assert not caplog.records
        warn_if_upscaled(shards, 64, what="train")
    assert len(caplog.records) == 1 and "upscaled" in caplog.text and "32x32" in caplog.text


def test_train_refuses_latents_cached_at_another_resolution(tmp_path):
    from relight_stream.train.latents import run_cache_latents
    from relight_stream.train.loop import run_train

    shards = write_synthetic_shards(tmp_path / "sh", num_samples=2, per_shard=2, resolution=32)
    lat = tmp_path / "lat"
    assert run_cache_latents(CacheLatentsConfig(shards=shards, out=str(lat), resolution=32, batch_size=2),
                             RunConfig()) == 0
    base = dict(shards=[str(lat)], mixed_precision="no", num_workers=0, batch_size=2, max_steps=1)
    with pytest.raises(ValueError, match=r"made at 32².*trains at 256².*--resolution 32"):
        run_train(TrainConfig(out=str(tmp_path / "a"), **base), RunConfig(seed=0))  # tiny's default: 256
    (lat / "latents.json").unlink()  # no record: the latents' own size is checked after the model loads
    with pytest.raises(ValueError, match=r"16x16.*trains at 64²"):
        run_train(TrainConfig(out=str(tmp_path / "b"), resolution=64, **base), RunConfig(seed=0))
