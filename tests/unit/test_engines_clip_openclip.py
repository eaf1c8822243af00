"""Pass-through CLIP flavors ``open_clip:<Name>``: any open_clip model name, built as open_clip builds it, with
random weights, a local checkpoint, or a pretrained tag found in the local caches only (nothing is downloaded).

The model is a tiny config registered with ``open_clip.add_model_config`` (plain GELU, unlike the ``tiny`` flavor),
so the test exercises open_clip's own name lookup, tokenizer and preprocessing config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relight_stream.config import ClipConfig
from relight_stream.engines import create_engine
from relight_stream.engines.clip import CLIP_MEAN, CLIP_STD, open_clip_flavor, resolve_open_clip_tag
from relight_stream.engines.common import resize_crop
from relight_stream.engines.spec import RANDOM_SEED
from relight_stream.pipeline.clip_filter import ClipScoreStage, engine_args
from relight_stream.sample import SampleBatch

NAME = "rs-test-tiny-vit"
CFG = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
       "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def name(tmp_path_factory):
    import open_clip

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("oc") / f"{NAME}.json"
    path.write_text(json.dumps(CFG))
    open_clip.add_model_config(path)
    return NAME


def reference(name: str, seed: int = RANDOM_SEED):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.create_model(name).eval()


def test_any_open_clip_name_builds_as_open_clip_does(name, tmp_path, monkeypatch):
    import open_clip

    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(tmp_path / "engines"))  # the onnxruntime export goes here

    flavor, weights = engine_args(ClipConfig(model=name, pretrained=None))
    assert (flavor, weights) == (f"open_clip:{name}", None) and open_clip_flavor(flavor) == flavor
    eng = create_engine("clip", flavor, backend="eager", device="cpu")
    x = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    emb = eng.encode_image(x)
    assert emb.shape == (3, 24) and eng.embed_dim == 24 and eng.image_size == 32
    ref = reference(name)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    with torch.no_grad():
        want = torch.nn.functional.normalize(ref.encode_image((resize_crop(x, 32) - mean) / std), dim=-1)
        tok = open_clip.get_tokenizer(name)(["a well-lit photo", "a dark photo"])
        want_t = torch.nn.functional.normalize(ref.encode_text(tok), dim=-1)
    torch.testing.assert_close(emb, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(eng.encode_text(["a well-lit photo", "a dark photo"]), want_t, atol=1e-5, rtol=1e-4)
    assert eng.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))
    # the same spec runs on onnxruntime (exported image/text towers) with eager's outputs
    ort = create_engine("clip", flavor, backend="onnxruntime", device="cpu")
    torch.testing.assert_close(ort.encode_image(x), emb, atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match="close names"):
        open_clip_flavor("ViT-B-33")


def test_filter_stage_scores_with_a_pass_through_model_and_a_local_checkpoint(name, tmp_path, photos):
    ckpt = tmp_path / "ckpt.pt"
    trained = reference(name, seed=7)
    torch.save(trained.state_dict(), ckpt)
    cfg = ClipConfig(model=name, pretrained=str(ckpt), backend="eager", batch_size=4)
    assert engine_args(cfg) == (f"open_clip:{name}", str(ckpt))
    stage = ClipScoreStage(cfg, device="cpu")
    stage.setup()
    rgb = np.stack([np.ascontiguousarray(p[:48, :48]) for p in photos.values()])
    out = stage.process(SampleBatch(keys=[f"k{i}" for i in range(len(rgb))], arrays={"rgb_BHW3": rgb}))
    assert np.all((out["clip_score_B"] > 0) & (out["clip_score_B"] < 1))
    x = torch.as_tensor(rgb).permute(0, 3, 1, 2).float() / 255
    loaded = stage.engine.encode_image(x)
    random = create_engine("clip", f"open_clip:{name}", backend="eager", device="cpu")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    with torch.no_grad():
        want = torch.nn.functional.normalize(trained.encode_image((resize_crop(x, 32) - mean) / std), dim=-1)
    torch.testing.assert_close(loaded, want, atol=1e-5, rtol=1e-4)
    assert (loaded - random.encode_image(x)).abs().max() > 1e-3


def _fake_hub_cache(root, repo: str, filename: str) -> str:
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0123abcd")
    snap = base / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(b"weights")
    return str(snap / filename)


def test_pretrained_tags_resolve_from_the_local_cache_only(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="nothing is downloaded"):
        resolve_open_clip_tag("ViT-B-32", "laion2b_s34b_b79k", cache_dir=empty)
    with pytest.raises(ValueError, match="known tags"):
        resolve_open_clip_tag("ViT-B-32", "no-such-tag", cache_dir=empty)
    cache = tmp_path / "hub"
    want = _fake_hub_cache(cache, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
    assert resolve_open_clip_tag("ViT-B-32", "laion2b_s34b_b79k", cache_dir=cache) == ("ViT-B-32", want)
    # OpenAI's RN50 weights need QuickGELU: the name switches to open_clip's -quickgelu config
    want = _fake_hub_cache(cache, "timm/resnet50_clip.openai", "open_clip_pytorch_model.bin")
    assert resolve_open_clip_tag("RN50", "openai", cache_dir=cache) == ("RN50-quickgelu", want)


def test_create_engine_accepts_an_open_clip_flavor_directly(tmp_path):
    import open_clip

    path = tmp_path / "rs-test-direct-vit.json"  # a name nothing has registered as a flavor yet
    path.write_text(json.dumps(CFG))
    open_clip.add_model_config(path)
    engine = create_engine("clip", "open_clip:rs-test-direct-vit", backend="eager", device="cpu")
    emb = engine.encode_text(["soft light"])
    assert emb.shape[0] == 1 and abs(float(emb.norm()) - 1.0) < 1e-4
