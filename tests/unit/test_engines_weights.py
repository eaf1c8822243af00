"""Weights are separate from the architecture: a local checkpoint of each kind loads through the same code path
that hub weights use (``weights=`` a local path), and reproduces the model it was saved from."""

from __future__ import annotations

import pytest
import torch

from relight_stream.engines import create_engine, get_spec
from relight_stream.engines.registry import build_model
from relight_stream.engines.spec import WeightsRef


def _perturbed(kind: str):
    """The tiny model of ``kind`` with weights different from the seeded random init."""
    model = build_model(get_spec(kind, "tiny"), WeightsRef("random")).extras["model"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", ["clip", "depth", "segmenter", "vae"])
def test_local_weights_load_and_change_outputs(kind: str, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RELIGHT_BACKEND", raising=False)
    model = _perturbed(kind)
    if kind == "depth" or kind == "vae":
        model.save_pretrained(tmp_path / "w")
        weights = tmp_path / "w"
    else:
        weights = tmp_path / "w.pt"
        state = model.state_dict()
        torch.save({"model": state} if kind == "segmenter" else state, weights)
    loaded = create_engine(kind, "tiny", backend="eager", device="cpu", weights=str(weights))
    random = create_engine(kind, "tiny", backend="eager", device="cpu")
    assert loaded.weights.startswith("local:")
    images = torch.rand(2, 3, 64, 64)
    if kind == "clip":
        a, b = loaded.encode_image(images), random.encode_image(images)
    elif kind == "segmenter":
        boxes = torch.tensor([[4.0, 4.0, 50.0, 60.0]]).repeat(2, 1)
        a, b = loaded(images, boxes), random(images, boxes)
    elif kind == "vae":
        a, b = loaded.encode(images * 2 - 1), random.encode(images * 2 - 1)
    else:
        a, b = loaded(images), random(images)
    assert not torch.allclose(a, b)  # the checkpoint, not the seeded init, is in use
    if kind == "depth":  # and it is exactly the saved model
        with torch.no_grad():
            ref = model.eval()(pixel_values=(torch.nn.functional.interpolate(images, size=(56, 56), mode="bilinear",
                               antialias=True) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
                               / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)).predicted_depth
        exp = torch.nn.functional.interpolate(ref[:, None], size=(64, 64), mode="bilinear")[:, 0]
        assert torch.allclose(a, exp, atol=1e-5)
