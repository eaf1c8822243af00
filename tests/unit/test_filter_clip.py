"""CLIP lighting scorer on the tiny random-weight engine: softmax maths, groups, head, embeddings, prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relight_stream.config import ClipConfig
from relight_stream.engines.registry import create_engine
from relight_stream.pipeline.clip_filter import DEFAULT_PROMPTS, ClipScoreStage, engine_args, load_head, load_prompts
from relight_stream.sample import SampleBatch

TINY = dict(model="tiny", pretrained=None, backend="eager", batch_size=3)


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    return create_engine("clip", "tiny", backend="eager", device="cpu")


@pytest.fixture(scope="module")
def images(photos):
    rng = np.random.default_rng(0)
    real = [np.ascontiguousarray(p[:64, :64]) for p in photos.values()]
    return np.stack(real + [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)])


def run(stage: ClipScoreStage, images: np.ndarray, drop: tuple[int, ...] = ()) -> SampleBatch:
    batch = SampleBatch(keys=[f"k{i}" for i in range(len(images))], arrays={"rgb_BHW3": images})
    for i in drop:
        batch.drop(i, "decode:truncated")
    return stage.process(batch)


def test_probabilities_form_distributions_and_score_is_the_good_group(engine, images):
    stage = ClipScoreStage(ClipConfig(**TINY), engine=engine)
    stage.setup()
    out = run(stage, images, drop=(1,))
    kept = [0, 2, 3, 4]
    per_prompt = np.stack([out[f"{c}_B"] for c, _, _ in stage.columns], axis=1)
    groups = np.stack([out[f"clip_g_{g}_B"] for g in DEFAULT_PROMPTS], axis=1)
    np.testing.assert_allclose(per_prompt[kept].sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(groups[kept].sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(out["clip_score_B"], out["clip_g_good_B"])
    assert np.isnan(out["clip_score_B"][1]) and "scores" not in out.meta[1]
    # a group's probability is the softmax of its mean-exp logit, not the sum of its prompts' shares
    logits = engine.logit_scale * stage._embed(images) @ stage._text_PD.T
    manual = torch.softmax(torch.stack([torch.logsumexp(logits[:, m], -1) - np.log(len(m))
                                        for m in stage._groups.values()], -1), -1)
    np.testing.assert_allclose(groups[kept], manual.numpy()[kept], atol=1e-5)
    assert set(out.meta[0]["scores"]) >= {"clip_score", "clip_g_harsh", "clip_p_backlit_0"}


def test_scores_do_not_depend_on_batch_chunking_or_neighbours(engine, images):
    a = ClipScoreStage(ClipConfig(**{**TINY, "batch_size": 2}), engine=engine)
    b = ClipScoreStage(ClipConfig(**{**TINY, "batch_size": 16}), engine=engine)
    a.setup(), b.setup()
    full = run(a, images)["clip_score_B"]
    alone = np.concatenate([run(b, images[i:i + 1])["clip_score_B"] for i in range(len(images))])
    np.testing.assert_allclose(full, alone, rtol=1e-4, atol=1e-6)


def test_linear_head_and_saved_embeddings(engine, images, tmp_path):
    d = engine.embed_dim
    rng = np.random.default_rng(1)
    w, bias = rng.normal(size=d).astype(np.float32), 0.25
    np.savez(tmp_path / "head.npz", weight=w, bias=np.float32(bias))
    torch.save({"weight": torch.as_tensor(w)[None], "bias": torch.tensor([bias])}, tmp_path / "head.pth")
    for name in ("head.npz", "head.pth"):
        stage = ClipScoreStage(ClipConfig(**TINY, head=str(tmp_path / name)), engine=engine, save_embeddings=True)
        stage.setup()
        out = run(stage, images)
        emb = out["clip_embed_BD"]
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(out["head_score_B"], emb @ w + bias, rtol=1e-5, atol=1e-5)
    np.savez(tmp_path / "bad.npz", weight=np.ones((2, d)), bias=np.zeros(2))
    with pytest.raises(ValueError, match="linear head"):
        load_head(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "wide.npz", weight=np.ones(d + 1), bias=np.zeros(1))  # a head for another CLIP
    with pytest.raises(ValueError, match="dimensions"):
        ClipScoreStage(ClipConfig(**TINY, head=str(tmp_path / "wide.npz")))


def test_prompt_file_replaces_the_ensemble_and_is_validated(engine, images, tmp_path):
    good = tmp_path / "p.yaml"
    good.write_text("good: [a bright photo]\ndark: [a dark photo, a night photo]\n")
    stage = ClipScoreStage(ClipConfig(**TINY, prompts=str(good)), engine=engine)
    stage.setup()
    out = run(stage, images)
    assert {"clip_p_good_0_B", "clip_p_dark_1_B", "clip_g_dark_B"} <= set(out.arrays)
    assert load_prompts(None) == DEFAULT_PROMPTS
    bad = tmp_path / "bad.yaml"
    bad.write_text("dark: [a dark photo]\n")
    with pytest.raises(ValueError, match="good"):
        load_prompts(str(bad))
    with pytest.raises(ValueError, match="not found"):
        load_prompts(str(tmp_path / "missing.yaml"))


def test_engine_args_map_open_clip_names_and_refuse_unpinned_tags(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: the openai tag cannot be resolved
    assert engine_args(ClipConfig(model="ViT-L-14", pretrained=None)) == ("vit-l-14", None)
    assert engine_args(ClipConfig(model="ViT-B-32", pretrained="org/x@abc")) == ("vit-b-32", "org/x@abc")
    with pytest.raises(ValueError, match="timm/vit_large_patch14_clip_224.openai@<commit>"):
        engine_args(ClipConfig(model="ViT-L-14", pretrained="openai"))
    ref = tmp_path / "models--timm--vit_large_patch14_clip_224.openai" / "refs"
    ref.mkdir(parents=True)
    (ref / "main").write_text("0123abcd\n")
    assert engine_args(ClipConfig(model="ViT-L-14")) == ("vit-l-14", "timm/vit_large_patch14_clip_224.openai@0123abcd")
    with pytest.raises(ValueError, match="laion2b"):
        engine_args(ClipConfig(model="ViT-L-14", pretrained="laion2b_s32b_b82k"))
