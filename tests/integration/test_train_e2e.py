"""``train`` / ``cache-latents`` / ``infer`` end to end on CPU with the tiny model and generated shards."""

from __future__ import annotations

import io
import json
import logging
import re

import numpy as np
import pytest
import torch
import webdataset as wds
import yaml
from PIL import Image
from safetensors.torch import load_file

from relight_stream.config import CacheLatentsConfig, InferConfig, RunConfig, TrainConfig
from relight_stream.train import checkpoint as ckpt
from relight_stream.train.fixtures import write_synthetic_shards
from relight_stream.train.infer import run_infer
from relight_stream.train.latents import run_cache_latents
from relight_stream.train.loop import run_train
from relight_stream.train.setup import EXIT_NONFINITE

torch.set_num_threads(1)


def _cfg(shards, out, **kw) -> TrainConfig:
    base = dict(shards=[str(s) for s in shards], out=str(out), resolution=32, batch_size=4, lr=1e-3,
                mixed_precision="no", num_workers=0, log_every=5, checkpoint_every=100, shuffle_buffer=4)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), num_samples=16, per_shard=8, resolution=32)


def test_tiny_model_learns_saves_a_loadable_pipeline_and_infers(shards, tmp_path, photos):
    from diffusers import DiffusionPipeline

    out = tmp_path / "run"
    assert run_train(_cfg(shards, out, max_steps=30, checkpoint_every=15, validate_every=30), RunConfig(seed=0)) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["losses"][-1] < 0.7 * stats["losses"][0], stats["losses"]  # 6 metrics lines over 30 steps
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-15", "checkpoint-30"]
    assert all((out / "checkpoints" / n / "COMPLETE").is_file() for n in ("checkpoint-15", "checkpoint-30"))
    assert (out / "validation" / "step-000030.jpg").is_file()
    card = (out / "final" / "README.md").read_text()
    assert "instruct-pix2pix" in card and shards[0] in card and "max_steps: 30" in card

    pipe = DiffusionPipeline.from_pretrained(str(out / "final"))
    assert type(pipe).__name__ == "StableDiffusionInstructPix2PixPipeline" and pipe.unet.config.in_channels == 8

    Image.fromarray(photos["astronaut"]).resize((96, 80)).save(tmp_path / "a.png")
    icfg = InferConfig(model=str(out / "final"), image=str(tmp_path / "a.png"), instruction="light from the left",
                       out=str(tmp_path / "edited.png"), resolution=32, steps=2, segment_input=False)
    assert run_infer(icfg, RunConfig(seed=0)) == 0
    assert Image.open(tmp_path / "edited.png").size == (32, 27)  # --fit pad (default): the photo's 96:80 kept
    assert (tmp_path / "edited_sheet.jpg").is_file()

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("coffee", "chelsea"):
        Image.fromarray(photos[name]).save(folder / f"{name}.jpg")
    icfg = InferConfig(model=str(out / "final"), image=str(folder), instruction="soft light", out=str(tmp_path / "b"),
                       resolution=32, steps=2, segment_input=True)
    assert run_infer(icfg, RunConfig(seed=0)) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["chelsea.png", "coffee.png", "sheet.jpg"]


def test_infer_preprocessing_composites_the_subject_on_grey(photos, monkeypatch):
    import sys

    from relight_stream.train.data import decode_rgb
    from relight_stream.train.infer import segment_and_composite

    buf = io.BytesIO()
    Image.fromarray(photos["astronaut"]).save(buf, format="PNG")
    photo = decode_rgb(buf.getvalue(), 64)
    composite = segment_and_composite([photo], InferConfig(), RunConfig())[0]
    grey = (composite == 128).all(-1)
    assert composite.shape == (64, 64, 3) and 0.2 < grey.mean() < 0.9  # background replaced, subject kept
    monkeypatch.setitem(sys.modules, "relight_stream.pipeline.segment", None)  # as if it were not installed
    with pytest.raises(ValueError, match="--no-segment"):
        segment_and_composite([photo], InferConfig(), RunConfig())


def test_resume_equals_uninterrupted_run(shards, tmp_path):
    """E3: 2N steps straight == N + resume + N (weights, EMA, loss curve), with 2 workers and accumulation."""
    kw = dict(batch_size=3, grad_accum=2, num_workers=2, checkpoint_every=5, log_every=1, deterministic=True)
    assert run_train(_cfg(shards, tmp_path / "a", max_steps=10, **kw), RunConfig(seed=3)) == 0
    assert run_train(_cfg(shards, tmp_path / "b", max_steps=5, **kw), RunConfig(seed=3)) == 0
    assert run_train(_cfg(shards, tmp_path / "b", max_steps=10, resume="latest", **kw), RunConfig()) == 0
    ca, cb = (tmp_path / x / "checkpoints" / "checkpoint-10" for x in "ab")
    wa, wb = load_file(ca / "model.safetensors"), load_file(cb / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ea, eb = (torch.load(c / "custom_checkpoint_0.pkl", weights_only=False)["shadow_params"] for c in (ca, cb))
    assert all(torch.equal(x, y) for x, y in zip(ea, eb))
    la = json.loads((tmp_path / "a" / "stats.json").read_text())["losses"]
    lb = json.loads((tmp_path / "b" / "stats.json").read_text())["losses"]
    assert lb == la[5:]
    # the first half alone differs from the end state: the comparison above is not vacuous
    w5 = load_file(tmp_path / "a" / "checkpoints" / "checkpoint-5" / "model.safetensors")
    assert not all(torch.equal(w5[k], wa[k]) for k in wa)


def _poison(src: str, dst, bad_keys: set[str] | None) -> None:
    """Copy a latent shard, making the cached target moments NaN for ``bad_keys`` (all when None)."""
    with wds.TarWriter(str(dst)) as sink:
        for s in wds.WebDataset(src, shardshuffle=False, empty_check=False):
            rec = {k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
            if bad_keys is None or s["__key__"] in bad_keys:
                m = np.load(io.BytesIO(s["moments.npy"]))
                m[:] = np.nan
                buf = io.BytesIO()
                np.save(buf, m)
                rec["moments.npy"] = buf.getvalue()
            sink.write(rec)


def test_cache_latents_then_nonfinite_steps_are_skipped_or_abort(shards, tmp_path, caplog):
    from relight_stream.train.model import build_tiny, encode_images
    from relight_stream.train.step import to_unit

    lat = tmp_path / "lat"
    assert run_cache_latents(CacheLatentsConfig(shards=shards, out=str(lat), resolution=32), RunConfig()) == 0
    info = json.loads((lat / "latents.json").read_text())
    assert yaml.safe_load((lat / "config.yaml").read_text())["resolution"] == 32  # the resolved config beside it
    assert info["model"] == "tiny" and info["resolution"] == 32
    first = next(iter(wds.WebDataset(str(lat / "shard-000000.tar"), shardshuffle=False, empty_check=False)))
    src = next(iter(wds.WebDataset(shards[0], shardshuffle=False, empty_check=False)))
    img = torch.from_numpy(np.array(Image.open(io.BytesIO(src["input.jpg"])))).permute(2, 0, 1)[None]
    cond = encode_images(build_tiny("sd", seed=0), to_unit(img, "cpu"))[0][0]
    torch.testing.assert_close(torch.from_numpy(np.load(io.BytesIO(first["cond.npy"]))).float(), cond,
                               atol=2e-3, rtol=2e-3)  # the cached condition is the VAE mode (fp16)
    before = (lat / "shard-000001.tar").stat().st_mtime_ns
    assert run_cache_latents(CacheLatentsConfig(shards=shards, out=str(lat), resolution=32), RunConfig()) == 0
    assert (lat / "shard-000001.tar").stat().st_mtime_ns == before  # a rerun skips the shards already done
    with pytest.raises(ValueError, match="tiny-sdxl"):
        run_cache_latents(CacheLatentsConfig(shards=shards, out=str(lat), model="tiny-sdxl", resolution=32),
                          RunConfig())

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "latents.json").write_text((lat / "latents.json").read_text())
    _poison(str(lat / "shard-000000.tar"), mixed / "shard-000000.tar", {"s00003"})
    cfg = _cfg([mixed], tmp_path / "skip", max_steps=12, batch_size=2, checkpoint_every=1,
               checkpoints_total_limit=None, log_every=4)
    with caplog.at_level(logging.WARNING):
        assert run_train(cfg, RunConfig(seed=0)) == 0
    skipped = {int(m) for m in re.findall(r"step (\d+): non-finite", caplog.text)}
    stats = json.loads((tmp_path / "skip" / "stats.json").read_text())
    assert stats["nonfinite_total"] == len(skipped) >= 1  # 8 samples, 12 steps of 2: the bad one came up
    saved = {s for s, _ in ckpt.list_checkpoints(tmp_path / "skip" / "checkpoints")[0]}
    assert saved == set(range(1, 13)) - skipped  # E5: no checkpoint inside a non-finite window
    weights = load_file(tmp_path / "skip" / "checkpoints" / "checkpoint-12" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())

    allbad = tmp_path / "allbad"
    allbad.mkdir()
    _poison(str(lat / "shard-000000.tar"), allbad / "shard-000000.tar", None)
    cfg = _cfg([allbad], tmp_path / "abort", max_steps=20, checkpoint_every=1, max_nonfinite_steps=3)
    assert run_train(cfg, RunConfig(seed=0)) == EXIT_NONFINITE
    stats = json.loads((tmp_path / "abort" / "stats.json").read_text())
    assert stats["step"] == 3 and stats["nonfinite_total"] == 3
    assert ckpt.list_checkpoints(tmp_path / "abort" / "checkpoints") == ([], [])
    assert not (tmp_path / "abort" / "final").exists()


def test_sdxl_tiny_and_consistency_shards_train(tmp_path):
    from diffusers import DiffusionPipeline

    cons = write_synthetic_shards(tmp_path / "cons", num_samples=4, per_shard=4, resolution=32, consistency=True)
    cfg = _cfg(cons, tmp_path / "c", max_steps=2, batch_size=2, consistency=True, gradient_checkpointing=True)
    assert run_train(cfg, RunConfig()) == 0  # no --seed: one is generated, logged and stored (E8)
    stats = json.loads((tmp_path / "c" / "stats.json").read_text())
    assert np.isfinite(stats["losses"]).all()
    assert isinstance(stats["seed"], int) and f"seed: {stats['seed']}" in (tmp_path / "c" / "config.yaml").read_text()
    state = json.loads((tmp_path / "c" / "checkpoints" / "checkpoint-2" / "train_state.json").read_text())
    assert state["seed"] == stats["seed"]
    cfg = _cfg(cons, tmp_path / "x", model="tiny-sdxl", max_steps=50, batch_size=2, mixed_precision="bf16",
               fast_dev_run=True)
    assert run_train(cfg, RunConfig()) == 0
    assert json.loads((tmp_path / "x" / "stats.json").read_text())["step"] == 2  # --fast-dev-run: 2 steps,
    assert not (tmp_path / "x" / "checkpoints").exists()  # no checkpoints, but a final pipeline
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path / "x" / "final"))
    assert type(pipe).__name__ == "StableDiffusionXLInstructPix2PixPipeline"
    # a local diffusers folder is a base model too (the code path of real SD1.5/SDXL weights, offline)
    base = str(tmp_path / "x" / "final")
    assert run_train(_cfg(cons, tmp_path / "x2", model=base, max_steps=1, batch_size=2), RunConfig()) == 0
    assert f"base_model: {base}" in (tmp_path / "x2" / "final" / "README.md").read_text()


@pytest.mark.slow
def test_compiled_unet_blocks_train_like_eager(shards, tmp_path):
    """``compile=True`` (per-block torch.compile, ~1 min on CPU) gives the eager losses to within float error."""
    kw = dict(max_steps=3, batch_size=2, log_every=1, deterministic=True)
    assert run_train(_cfg(shards, tmp_path / "e", **kw), RunConfig(seed=5)) == 0
    assert run_train(_cfg(shards, tmp_path / "c", compile=True, **kw), RunConfig(seed=5)) == 0
    le, lc = (json.loads((tmp_path / x / "stats.json").read_text())["losses"] for x in "ec")
    np.testing.assert_allclose(lc, le, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_cuda_bf16_compiled_training_with_gradient_checkpointing(shards, tmp_path):
    cfg = _cfg(shards, tmp_path / "g", max_steps=4, batch_size=4, mixed_precision="bf16", compile=True,
               gradient_checkpointing=True, num_workers=2)
    assert run_train(cfg, RunConfig(device="cuda")) == 0
    stats = json.loads((tmp_path / "g" / "stats.json").read_text())
    assert np.isfinite(stats["losses"]).all() and stats["nonfinite_total"] == 0
