"""A trained tiny pipeline records its resolution; ``infer`` defaults to it and keeps a photo's aspect ratio."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_e2e import _cfg, shards  # noqa: F401 - the 32 px shards fixture and the fast train config

from relight_stream.config import InferConfig, RunConfig
from relight_stream.train.infer import run_infer
from relight_stream.train.loop import _check, run_train

torch.set_num_threads(1)
RES = 64  # trained at 64² on 32 px shards: upscaled, so the run warns once


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("run")
    logger, handler = logging.getLogger("relight_stream"), _Records()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        cfg = _cfg(shards, out, resolution=RES, max_steps=2, batch_size=2, checkpoint_every=2)
        assert run_train(cfg, RunConfig(seed=0)) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return out, handler.messages


@pytest.fixture(scope="module")
def portrait(tmp_path_factory, photos):
    path = tmp_path_factory.mktemp("photo") / "portrait.png"
    Image.fromarray(photos["astronaut"]).resize((96, 160)).save(path)  # W=96, H=160
    return path


def test_training_records_its_resolution_and_warns_once_about_upscaling(trained):
    out, messages = trained
    final = out / "final"
    assert json.loads((final / "training_stats.json").read_text())["resolution"] == RES
    assert f"training resolution of\n**{RES}x{RES} px**" in (final / "README.md").read_text()
    unet, vae = (json.loads((final / p / "config.json").read_text()) for p in ("unet", "vae"))
    assert unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1) == RES  # the pipeline's default size
    assert sum("upscaled" in m for m in messages) == 1  # once per run, not per sample
    assert sum(m.startswith("train: resolution") for m in messages) == 1


def test_resume_keeps_the_runs_resolution(trained, shards):  # noqa: F811
    out, _ = trained
    cfg, *_ = _check(_cfg(shards, out, resolution=None, resume="latest", max_steps=4))
    assert cfg.resolution == RES  # not tiny's default 256


@pytest.mark.parametrize(("fit", "segment", "size"), [("pad", True, (38, 64)), ("pad", False, (38, 64)),
                                                       ("keep", False, (40, 64)), ("crop", False, (64, 64))])
def test_infer_fits_a_portrait_at_the_recorded_resolution(trained, portrait, tmp_path, fit, segment, size):
    out = tmp_path / "relit.png"
    cfg = InferConfig(model=str(trained[0] / "final"), image=str(portrait), instruction="light from the left",
                      out=str(out), steps=2, fit=fit, segment_input=segment)  # no --resolution: the recorded 64
    assert run_infer(cfg, RunConfig(seed=0)) == 0
    with Image.open(out) as im:
        assert im.size == size  # (W, H): pad keeps 96:160 with long side 64, keep rounds to multiples of 8
    sheet = np.asarray(Image.open(tmp_path / "relit_sheet.jpg"))
    model_in = sheet[4 : 4 + 64, 4 + 68 : 4 + 68 + 64].astype(int)  # photo | model input | output, 64 px cells
    if fit == "pad":  # the model saw the photo letterboxed on grey 128 (a 64² square)
        assert sheet.shape[:2] == (72, 208)
        assert np.abs(model_in[:, :8] - 128).max() <= 4 and np.abs(model_in[:, -8:] - 128).max() <= 4  # JPEG blocks
        assert model_in[:, 16:48].std() > 20  # and the photo between the bars
    elif fit == "keep":  # run as it is: the sheet's cells are the photo's size, no grey bars
        assert sheet.shape[:2] == (72, 3 * 44 + 4)
