"""Photometric lighting score: ranking sanity on real photos made darker, clipped or flat; subject awareness."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from relight_stream.pipeline.lighting_score import COLUMNS, PhotometricScoreStage, photometric_scores
from relight_stream.sample import SampleBatch


def square(img: np.ndarray, side: int = 160) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(np.ascontiguousarray(crop), (side, side), interpolation=cv2.INTER_AREA)


def degrade(img: np.ndarray) -> dict[str, np.ndarray]:
    f = img.astype(np.float32)
    return {
        "darker": (f * 0.3).round().astype(np.uint8),
        "clipped": np.clip(f * 2.5, 0, 255).round().astype(np.uint8),
        "flat": (0.3 * f + 0.7 * f.mean(axis=(0, 1))).round().astype(np.uint8),
    }


@pytest.fixture(scope="module")
def squares(photos):
    return {name: square(img) for name, img in photos.items()}


def test_original_outranks_darker_clipped_and_flat_versions(squares):
    for name, img in squares.items():
        variants = degrade(img)
        batch = np.stack([img, *variants.values()])
        score = photometric_scores(batch)["photo_score"]
        for j, kind in enumerate(variants, start=1):
            assert score[0] > score[j], f"{name}: original {score[0]:.3f} <= {kind} {score[j]:.3f}"


def test_each_degradation_hits_the_metric_that_names_it(squares):
    img = squares["astronaut"]
    v = degrade(img)
    r = photometric_scores(np.stack([img, v["darker"], v["clipped"], v["flat"]]))
    assert r["photo_exposure"][1] < r["photo_exposure"][0]
    assert r["photo_shadow_frac"][1] > r["photo_shadow_frac"][0]
    assert r["photo_clip_hi"][2] > 10 * max(r["photo_clip_hi"][0], 1e-3)
    assert r["photo_range_l"][3] < 0.5 * r["photo_range_l"][0]
    assert r["photo_contrast_l"][3] < 0.5 * r["photo_contrast_l"][0]


def test_scores_are_bounded_and_every_column_present(squares):
    batch = np.stack(list(squares.values()) + [np.zeros_like(squares["coffee"]), np.full_like(squares["coffee"], 255)])
    r = photometric_scores(batch)
    assert set(r) == set(COLUMNS)
    for c, v in r.items():
        assert v.shape == (len(batch),) and np.isfinite(v).all(), c
    assert ((r["photo_score"] >= 0) & (r["photo_score"] <= 1)).all()
    # an all-black and an all-white frame are the worst-lit of the batch
    assert r["photo_score"][-2:].max() < r["photo_score"][:-2].min()


def test_subject_mask_decides_which_region_is_judged(squares):
    img = squares["chelsea"].copy()
    side = img.shape[1]
    img[:, side // 2:] = (img[:, side // 2:] * 0.15).astype(np.uint8)  # right half in deep shadow
    left = np.zeros(img.shape[:2], np.float32)
    left[:, : side // 2] = 1
    right = 1 - left
    r = photometric_scores(np.stack([img, img]), np.stack([left, right]))
    assert r["photo_score"][0] > r["photo_score"][1] + 0.2
    # an empty mask falls back to the centre prior instead of dividing by zero
    r0 = photometric_scores(img[None], np.zeros((1, *img.shape[:2]), np.float32))
    assert np.isfinite(r0["photo_score"]).all()
    np.testing.assert_allclose(r0["photo_score"], photometric_scores(img[None])["photo_score"])


def test_stage_writes_arrays_and_meta_for_kept_samples_only(squares):
    imgs = np.stack([squares["coffee"], squares["rocket"], squares["astronaut"]])
    batch = SampleBatch(keys=["a", "b", "c"], arrays={"rgb_BHW3": imgs})
    batch.drop(1, "decode:truncated")
    stage = PhotometricScoreStage()
    out = stage.process(batch)
    for c in COLUMNS:
        assert out[f"{c}_B"].shape == (3,)
    assert "scores" in out.meta[0] and "scores" in out.meta[2] and "scores" not in out.meta[1]
    assert out.meta[0]["scores"]["photo_score"] == pytest.approx(float(out["photo_score_B"][0]))
    assert out.drop_reason[1] == "decode:truncated"  # an earlier drop is kept, never overwritten


@pytest.mark.gpu
def test_cupy_matches_numpy(squares):
    cupy = pytest.importorskip("cupy")
    batch = np.stack(list(squares.values()))
    a = photometric_scores(batch)
    b = photometric_scores(cupy.asarray(batch))
    for c in COLUMNS:
        np.testing.assert_allclose(a[c], b[c], rtol=1e-4, atol=1e-4, err_msg=c)


def test_saliency_prior_follows_an_off_centre_subject(photos):
    """A photo pasted in a corner of a grey frame: darkening it must cost more with the prior than the centre."""
    frame = np.full((160, 160, 3), 128, np.uint8)
    patch = cv2.resize(photos["astronaut"], (70, 70), interpolation=cv2.INTER_AREA)
    lit, dark = frame.copy(), frame.copy()
    lit[8:78, 8:78] = patch
    dark[8:78, 8:78] = (patch * 0.15).astype(np.uint8)
    batch = SampleBatch(keys=["lit", "dark"], arrays={"rgb_BHW3": np.stack([lit, dark])})
    prior = PhotometricScoreStage(subject="prior").process(batch)["photo_score_B"].copy()
    centre = PhotometricScoreStage(subject="centre").process(batch)["photo_score_B"]
    assert prior[0] - prior[1] > 2 * (centre[0] - centre[1]) > 0
    with pytest.raises(ValueError, match="centre"):
        PhotometricScoreStage(subject="faces")


def test_stage_uses_a_matching_mask_and_ignores_a_mismatched_one(squares):
    img = squares["chelsea"]
    side = img.shape[0]
    left = np.zeros((1, side, side), np.float32)
    left[:, :, : side // 2] = 1
    plain = photometric_scores(img[None])["photo_score"][0]
    masked = photometric_scores(img[None], left)["photo_score"][0]
    assert masked != pytest.approx(plain)

    def run(mask):
        batch = SampleBatch(keys=["x"], arrays={"rgb_BHW3": img[None], "mask_BHW": mask})
        return PhotometricScoreStage().process(batch)["photo_score_B"][0]

    assert run(left) == pytest.approx(masked)
    assert run(np.ones((1, side // 2, side // 2), np.float32)) == pytest.approx(plain)  # wrong size: centre prior
