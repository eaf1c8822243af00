"""IP2P model pieces: offline CLIP tokenizer, conv_in surgery, model sources, conditioning dropout."""

from __future__ import annotations

import pytest
import torch

from relight_stream.train import model as M
from relight_stream.train.step import LossFn

torch.set_num_threads(1)


def test_offline_clip_tokenizer_matches_open_clip():
    import open_clip

    tok = M.clip_tokenizer()
    text = "Warm light from the LEFT, it's 2x brighter!"
    ours = tok([text], padding="max_length", max_length=77, truncation=True).input_ids[0]
    ref = open_clip.tokenize([text])[0].tolist()
    n = ref.index(49407) + 1
    assert len(tok) == 49408
    assert ours[:n] == ref[:n]  # same BOS, BPE pieces and EOS


def test_widen_conv_in_copies_weights_and_zero_inits_new_channels():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                cross_attention_dim=32).eval()
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 32)
    with torch.no_grad():
        before = unet(x, t, text).sample
        M.widen_conv_in(unet)
        after = unet(torch.cat([x, torch.randn(2, 4, 8, 8)], dim=1), t, text).sample
    assert unet.config.in_channels == 8 and unet.conv_in.weight.shape[1] == 8
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    torch.testing.assert_close(after, before)  # the image condition starts with no effect


def test_model_sources_are_pinned_or_explicit(tmp_path):
    for alias in ("sd15", "sdxl"):
        repo, rev = M.resolve_source(alias)
        assert "/" in repo and len(rev) == 40 and int(rev, 16) >= 0
    assert M.resolve_source(str(tmp_path)) == (str(tmp_path), None)
    assert M.resolve_source("org/name@abc1234") == ("org/name", "abc1234")
    for moving in ("org/name", "org/name@main", "org/name@v1.0"):  # a branch or tag can change under a run
        with pytest.raises(ValueError, match="pin a commit"):
            M.resolve_source(moving)
    with pytest.raises(ValueError, match="not tiny"):
        M.resolve_source("no-such-thing")
    for flux in ("flux", "black-forest-labs/FLUX.1-Kontext-dev@abc"):  # the reference's experimental row
        with pytest.raises(ValueError, match="Flux is not supported"):
            M.resolve_source(flux)


def test_conditioning_dropout_is_5_5_5_percent():
    model = M.build_tiny("sd")
    null = torch.full((1, 77, 32), 7.0)
    fn = LossFn(model, resolution=8, text_dropout=0.05, image_dropout=0.05, null_embeds=null, null_pooled=None)
    n = 20000
    batch = {"cond": torch.ones(n, 4, 2, 2), "moments": torch.zeros(n, 8, 2, 2), "embeds": torch.zeros(n, 77, 32)}
    inp = fn.prepare(batch, "cpu", torch.Generator().manual_seed(0))
    text_dropped = (inp.embeds[:, 0, 0] == 7.0)
    image_dropped = inp.cond.flatten(1).abs().sum(1) == 0
    frac = lambda m: m.float().mean().item()  # noqa: E731
    assert frac(text_dropped & ~image_dropped) == pytest.approx(0.05, abs=0.006)
    assert frac(text_dropped & image_dropped) == pytest.approx(0.05, abs=0.006)
    assert frac(~text_dropped & image_dropped) == pytest.approx(0.05, abs=0.006)


def test_condition_convention_is_unscaled_mode_and_target_is_scaled_sample():
    model = M.build_tiny("sd")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    cond, target = M.encode_images(model, x, x, generator=torch.Generator().manual_seed(0))
    dist = model.vae.encode(x).latent_dist
    torch.testing.assert_close(cond, dist.mode())
    z = (target / model.scaling_factor - dist.mean) / dist.std  # standard normal iff target = sample * scale
    assert abs(z.std().item() - 1) < 0.2 and abs(z.mean().item()) < 0.2


def test_bad_train_runs_fail_before_any_model_loads(tmp_path):
    from relight_stream.config import RunConfig, TrainConfig
    from relight_stream.train.fixtures import write_synthetic_shards
    from relight_stream.train.loop import run_train

    shards = write_synthetic_shards(tmp_path / "s", num_samples=1, per_shard=1, resolution=16)
    cases = {"no shards found": dict(shards=[str(tmp_path / "missing")]),
             "multiple of 64": dict(shards=shards, model="sd15", resolution=100),
             "not tiny": dict(shards=shards, model="nonsense"),
             "no such checkpoint": dict(shards=shards, resume=str(tmp_path / "nope"))}
    for message, kw in cases.items():
        with pytest.raises(ValueError, match=message):
            run_train(TrainConfig(out=str(tmp_path / "o"), resolution=kw.pop("resolution", 32), **kw), RunConfig())
    assert not (tmp_path / "o").exists()  # nothing written
