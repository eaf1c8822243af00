"""Tiny engines on the eager backend: the public API of each kind (shapes, ranges, determinism, input checks)."""

from __future__ import annotations

import pytest
import torch

from relight_stream.engines import create_engine


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_clip_embeddings_are_unit_and_seeded() -> None:
    clip = create_engine("clip", "tiny", backend="eager", device="cpu")
    images = torch.rand(3, 3, 40, 56)
    a = clip.encode_image(images)
    t = clip.encode_text(["a well lit portrait", "a dark photo"])
    assert a.shape == (3, clip.embed_dim) and t.shape == (2, clip.embed_dim)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert isinstance(clip.logit_scale, float) and clip.logit_scale > 1
    # random init is seeded: a second build gives the same embeddings (what a cached ONNX export relies on)
    again = create_engine("clip", "tiny", backend="eager", device="cpu")
    assert torch.equal(again.encode_image(images), a)
    # different images and texts give different embeddings
    assert not torch.allclose(a[0], a[1]) and not torch.allclose(t[0], t[1])
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        clip.encode_image(torch.rand(3, 32, 32))
    with pytest.raises(TypeError):
        clip.encode_text("not a list")


@pytest.mark.parametrize("flavor", ["tiny", "midas-dpt-tiny"])  # Depth Anything and the MiDaS DPT path
def test_depth_is_at_input_resolution_and_not_degenerate(flavor: str) -> None:
    depth = create_engine("depth", flavor, backend="eager", device="cpu")
    images = torch.rand(2, 3, 45, 70)
    d = depth(images)
    assert d.shape == (2, 45, 70) and d.dtype == torch.float32
    assert torch.isfinite(d).all()
    # the re-initialised head does not output ≈ 0 and depends on the image
    assert d.abs().mean() > 1e-3
    assert not torch.allclose(d[0], d[1])


def test_segmenter_gives_probabilities_per_box() -> None:
    seg = create_engine("segmenter", "tiny", backend="eager", device="cpu")
    images = torch.rand(2, 3, 96, 128)
    boxes = torch.tensor([[10.0, 10.0, 70.0, 90.0], [40.0, 5.0, 120.0, 60.0]])
    m = seg(images, boxes)
    assert m.shape == (2, 96, 128)
    assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    # the box prompt matters: another box on the same image gives another mask
    m2 = seg(images, boxes.flip(0))
    assert not torch.allclose(m, m2)
    with pytest.raises(ValueError, match="boxes"):
        seg(images, boxes[:1])


def test_vae_latent_mean_is_eighth_resolution() -> None:
    vae = create_engine("vae", "tiny", backend="eager", device="cpu")
    lat = vae.encode(torch.rand(2, 3, 64, 48) * 2 - 1)
    assert lat.shape == (2, 4, 8, 6) and torch.isfinite(lat).all()
    assert 0 < vae.scaling_factor < 1
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.rand(1, 3, 60, 48))


def test_bf16_outputs_fp32_close_to_fp32() -> None:
    images = torch.rand(2, 3, 56, 56)
    d32 = create_engine("depth", "tiny", backend="eager", device="cpu")(images)
    d16 = create_engine("depth", "tiny", backend="eager", device="cpu", precision="bf16")(images)
    assert d16.dtype == torch.float32
    rel = ((d16 - d32).abs().max() / d32.abs().max()).item()
    assert rel < 0.1, f"bf16 vs fp32 max relative error {rel:.3g}"


@pytest.mark.parametrize("with_points", [False, True])
def test_segmenter_runs_in_bf16_with_and_without_points(with_points):
    import torch

    from relight_stream.engines import create_engine

    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[4.0, 4.0, 60.0, 60.0], [10.0, 8.0, 50.0, 56.0]])
    pts = (torch.tensor([[[32.0, 30.0]], [[30.0, 28.0]]]), torch.ones(2, 1, dtype=torch.int32)) if with_points else ()
    ref = create_engine("segmenter", "tiny", backend="eager", device="cpu", precision="fp32")(images, boxes, *pts)
    low = create_engine("segmenter", "tiny", backend="eager", device="cpu", precision="bf16")(images, boxes, *pts)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - ref).abs().mean() < 0.05, float((low - ref).abs().mean())
