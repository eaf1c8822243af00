"""SAM3 text-prompted segmenter (``segmenter_sam3``): tiny flavor API, prompts, thresholds, weights, onnxruntime."""

from __future__ import annotations

import pytest
import torch

import relight_stream.engines.segmenter_sam3 as sam3  # registers the kind even before the registry lists it
from relight_stream.engines import create_engine, get_spec
from relight_stream.engines.registry import build_model
from relight_stream.engines.spec import WeightsRef

KIND = sam3.KIND


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "engine-cache"))
    monkeypatch.delenv("RELIGHT_BACKEND", raising=False)


@pytest.fixture(scope="module")
def engine():
    return create_engine(KIND, "tiny", backend="eager", device="cpu")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 72, 96, generator=torch.Generator().manual_seed(1))


def test_tiny_gives_a_soft_mask_at_input_resolution(engine, images) -> None:
    m = engine(images, "person", threshold=0.0)
    assert m.shape == (2, 72, 96) and m.dtype == torch.float32
    assert torch.isfinite(m).all() and float(m.min()) >= 0.0 and float(m.max()) <= 1.0
    assert float(m.std()) > 1e-3  # not a constant map
    assert not torch.allclose(m[0], m[1])  # depends on the image
    det = engine.detect(images, "person", threshold=0.0)
    q = det.scores.shape[1]
    assert det.scores.shape == (2, q) and det.boxes.shape == (2, q, 4) and det.keep.dtype == torch.bool
    assert float(det.scores.min()) >= 0.0 and float(det.scores.max()) <= 1.0
    x0, y0, x1, y1 = det.boxes.unbind(-1)  # pixels of the 96x72 input, x0 <= x1
    assert (x0 <= x1).all() and (y0 <= y1).all() and float(x1.max()) <= 96 + 1e-3 and float(y1.max()) <= 72 + 1e-3
    assert torch.equal(det.mask, m)


def test_mask_is_the_union_of_instances_passing_the_threshold(engine, images) -> None:
    lo = engine.detect(images, "person", threshold=0.0)
    assert lo.keep.all()
    assert float(engine(images, "person", threshold=1.0).abs().max()) == 0.0  # nothing passes: empty mask
    mid_thr = float(lo.scores.median())
    mid = engine.detect(images, "person", threshold=mid_thr)
    assert torch.equal(mid.keep, lo.scores > mid_thr) and 0 < int(mid.keep.sum()) < mid.keep.numel()
    assert (mid.mask <= lo.mask + 1e-6).all()  # fewer instances: a union that is nowhere larger
    assert not torch.allclose(mid.mask, lo.mask)
    assert engine.threshold == sam3.DEFAULT_THRESHOLD
    assert torch.equal(engine(images, "person"), engine(images, "person", threshold=engine.threshold))


def test_prompt_changes_the_output_and_is_per_image(engine, images) -> None:
    person = engine.detect(images, "person", threshold=0.0)
    car = engine.detect(images, "a red car", threshold=0.0)
    assert not torch.allclose(person.scores, car.scores)
    assert not torch.allclose(person.mask, car.mask)
    mixed = engine.detect(images, ["person", "a red car"], threshold=0.0)  # one prompt per image
    torch.testing.assert_close(mixed.mask[0], person.mask[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed.mask[1], car.mask[1], atol=1e-5, rtol=0)


def test_same_seed_same_output_and_bad_inputs_raise(engine, images) -> None:
    again = create_engine(KIND, "tiny", backend="eager", device="cpu")
    assert torch.equal(again(images, "person", threshold=0.0), engine(images, "person", threshold=0.0))
    with pytest.raises(ValueError, match="one per image"):
        engine(images, ["person"] * 3)
    with pytest.raises(TypeError, match="non-empty"):
        engine(images, ["person", " "])
    with pytest.raises(ValueError, match="threshold"):
        engine(images, "person", threshold=1.5)
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        engine(images[0], "person")


def test_real_flavor_needs_weights() -> None:
    assert get_spec(KIND, "base") is get_spec(KIND, "sam3") and get_spec(KIND, "sam3").hf_id == "facebook/sam3"
    for flavor in ("sam3", "base"):
        with pytest.raises(ValueError, match=r"facebook/sam3@<commit>.*local folder"):
            create_engine(KIND, flavor, backend="eager", device="cpu")
    with pytest.raises(ValueError, match="pin a revision"):
        create_engine(KIND, "sam3", backend="eager", device="cpu", weights="facebook/sam3")


def test_save_pretrained_folder_loads_by_the_local_path_branch(engine, images, tmp_path) -> None:
    built = build_model(get_spec(KIND, "tiny"), WeightsRef("random"))
    built.extras["model"].save_pretrained(tmp_path)
    local = create_engine(KIND, "tiny", backend="eager", device="cpu", weights=str(tmp_path))
    assert local.weights.startswith("local:") and local.input_size == engine.input_size
    torch.testing.assert_close(local(images, ["person", "dog"], threshold=0.0),
                               engine(images, ["person", "dog"], threshold=0.0), atol=1e-6, rtol=0)


def test_onnxruntime_matches_eager(engine) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")
    ort = create_engine(KIND, "tiny", backend="onnxruntime", device="cpu")
    x = torch.rand(3, 3, 50, 64, generator=torch.Generator().manual_seed(2))  # batch 3: not the traced batch
    prompts = ["a person standing in a field", "cat", "person"]  # different token counts per row
    a, b = engine.detect(x, prompts, threshold=0.3), ort.detect(x, prompts, threshold=0.3)
    torch.testing.assert_close(b.mask, a.mask, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=0)
