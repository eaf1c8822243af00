"""Classical segmentation on real photos and drawn subjects: animals, people, statues, illustrations, no subject."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import fixtures_images as fx
from relight_stream.config import SegmentConfig
from relight_stream.pipeline.segment import SegmentStage, fill_from_fragments, is_scattered, plausibility
from relight_stream.sample import SampleBatch


def _square(img: np.ndarray, n: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def stage() -> SegmentStage:
    s = SegmentStage(SegmentConfig())
    s.setup()
    return s


def _run(stage: SegmentStage, images: list[np.ndarray]) -> SampleBatch:
    batch = SampleBatch(keys=[f"s{i}" for i in range(len(images))])
    batch["rgb_BHW3"] = np.stack(images)
    return stage.process(batch)


def test_a_cat_filling_the_frame_is_kept_with_its_whole_head(stage, photos) -> None:
    img = _square(photos["chelsea"], 160)  # the head covers ~90 % of the square: no border to contrast with
    batch = _run(stage, [img])
    assert batch.keep_B[0], batch.drop_reason
    mask, rec = batch["mask_BHW"][0], batch.meta[0]["segment"]
    assert rec["fills_frame"] and 0.7 < rec["area"] < 0.98, rec
    # eyes, nose and the fur between and around them (not only the salient eyes and nose)
    assert mask[30:130, 20:140].mean() > 0.95, mask[30:130, 20:140].mean()
    assert mask[:24, -24:].mean() < 0.5, "the background in the top-right corner is not the cat"


def test_the_uncropped_cat_photo_keeps_the_cat_and_drops_the_background_at_its_side(stage) -> None:
    from skimage import data

    img = cv2.resize(data.cat(), (225, 150), interpolation=cv2.INTER_AREA)  # non-square, as decoded
    batch = _run(stage, [img])
    assert batch.keep_B[0], batch.drop_reason
    mask = batch["mask_BHW"][0]
    assert mask[20:130, 40:160].mean() > 0.95  # the head, eyes to chin
    assert mask[40:, 200:].mean() < 0.3  # the blanket right of the cat


def test_astronaut_keeps_the_person_not_the_flag(stage, photos) -> None:
    batch = _run(stage, [_square(photos["astronaut"], 128)])
    assert batch.keep_B[0], batch.drop_reason
    mask = batch["mask_BHW"][0]
    assert mask[10:45, 40:75].mean() > 0.8  # face and hair
    assert mask[70:120, 20:80].mean() > 0.8  # the orange suit
    assert mask[:60, :12].mean() < 0.2  # the flag at the left edge


def test_textures_and_a_star_field_are_dropped_as_empty() -> None:
    from skimage import data

    stage = SegmentStage(SegmentConfig())
    imgs = [data.grass(), data.brick(), data.hubble_deep_field()]
    imgs = [_square(np.repeat(i[..., None], 3, axis=2) if i.ndim == 2 else i, 128) for i in imgs]
    batch = _run(stage, imgs)
    assert batch.drop_reason == ["segment:empty_mask"] * 3, batch.drop_reason


def test_scattered_features_grow_into_the_subject_of_their_colour() -> None:
    n = 128
    rng = np.random.default_rng(0)
    img = np.full((n, n, 3), (170, 120, 70), np.float32)  # "fur" over most of the frame
    img[: n // 4, -n // 3 :] = (60, 90, 140)  # background in one corner
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    feats = np.zeros((n, n), np.uint8)
    for c in ((40, 50), (88, 50), (64, 90)):  # two eyes and a nose
        cv2.circle(feats, c, 7, 1, -1)
        cv2.circle(img, c, 7, (30, 30, 20), -1)
    assert is_scattered(feats.astype(bool))
    grown, _ = fill_from_fragments(img, feats.astype(bool))
    assert grown[n // 4 :].mean() > 0.95  # the fur below the corner
    assert grown[: n // 4 - 4, -n // 3 + 4 :].mean() < 0.1  # not the background
    assert not is_scattered(cv2.circle(np.zeros((n, n), np.uint8), (64, 64), 30, 1, -1).astype(bool))


def test_frame_filling_masks_may_touch_more_border_and_unresolved_fragments_are_implausible() -> None:
    cat = np.ones((96, 96), np.float32)
    cat[:20, 60:] = 0.0  # touches ~85 % of the border
    cfg = SegmentConfig()
    assert plausibility(cat, cfg)[0] == "implausible_mask"
    assert plausibility(cat, cfg, fills_frame=True)[0] is None
    eyes = np.zeros((96, 96), np.float32)
    eyes[30:50, 20:44] = eyes[30:50, 52:76] = 1.0
    assert plausibility(eyes, cfg)[0] is None
    assert plausibility(eyes, cfg, fragments=True)[0] == "implausible_mask"
    assert plausibility(np.zeros((96, 96), np.float32), cfg, fragments=True)[0] == "empty_mask"


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize(("background", "azimuth", "min_iou"), [
    ("sky", 30.0, 0.95), ("sky", 150.0, 0.95), ("dark", 30.0, 0.95), ("dark", 150.0, 0.95),
    ("brick", 30.0, 0.8), ("brick", 150.0, 0.8),  # stone on stone: the shadowed side of the head may go
])
def test_a_statue_is_segmented_without_the_backdrop_above_its_head(stage, background, azimuth, min_iou) -> None:
    img, truth = fx.statue(256, background, azimuth)
    batch = _run(stage, [img])
    assert batch.keep_B[0], batch.drop_reason
    mask = batch["mask_BHW"][0] > 0.5
    assert _iou(mask, truth) >= min_iou, _iou(mask, truth)
    assert mask[:20].mean() < 0.05, "the backdrop above the head is not the statue"


@pytest.mark.parametrize("seed", [0, 1])
def test_an_illustration_keeps_the_character_and_drops_the_page(stage, seed) -> None:
    img, truth = fx.illustration(256, seed)
    batch = _run(stage, [img])
    assert batch.keep_B[0], batch.drop_reason
    mask = batch["mask_BHW"][0] > 0.5
    assert _iou(mask, truth) >= 0.9, _iou(mask, truth)
    assert mask[:, :40].mean() < 0.02 and mask[:, -40:].mean() < 0.02  # the page either side
