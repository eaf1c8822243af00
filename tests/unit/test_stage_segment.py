"""Segment stage: classical prior + GrabCut + soft matte; drops for empty/implausible masks; all subjects kept."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from relight_stream.config import SegmentConfig
from relight_stream.pipeline.segment import SegmentStage, guided_filter, plausibility
from relight_stream.pipeline.subject_prior import subject_prior
from relight_stream.sample import SampleBatch


def _square(img: np.ndarray, n: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA)


def _run(images: list[np.ndarray], **cfg) -> SampleBatch:
    batch = SampleBatch(keys=[f"s{i}" for i in range(len(images))])
    batch["rgb_BHW3"] = np.stack(images)
    stage = SegmentStage(SegmentConfig(**cfg))
    stage.setup()
    return stage.process(batch)


def _disk_image(n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = np.full((n, n, 3), (70, 110, 160), np.uint8)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    disk = np.zeros((n, n), np.uint8)
    cv2.circle(disk, (n // 2, int(n * 0.55)), n // 4, 1, -1)
    img[disk > 0] = (200, 150, 90)
    return img, disk.astype(bool)


def test_classical_segments_a_synthetic_subject_with_soft_edges() -> None:
    img, disk = _disk_image()
    batch = _run([img])
    assert batch.keep_B[0], batch.drop_reason
    mask = batch["mask_BHW"][0]
    assert mask.dtype == np.float32 and mask.shape == disk.shape
    iou = ((mask > 0.5) & disk).sum() / ((mask > 0.5) | disk).sum()
    assert iou > 0.85, iou
    edge = (mask > 0.02) & (mask < 0.98)
    assert edge.sum() > 0, "the matte has no soft transition"
    assert edge.sum() < 0.2 * disk.sum(), "the matte is blurry everywhere, not only at the edge"
    rec = batch.meta[0]["segment"]
    assert rec["backend"] == "classical" and 0.1 < rec["area"] < 0.4


def test_classical_on_a_real_portrait_keeps_the_face(photos) -> None:
    img = _square(photos["astronaut"], 192)
    batch = _run([img])
    assert batch.keep_B[0], batch.drop_reason
    rec = batch.meta[0]["segment"]
    assert rec["faces"], "the Haar prior found no face on the astronaut portrait"
    x0, y0, x1, y1 = rec["faces"][0]
    face = batch["mask_BHW"][0][y0:y1, x0:x1]
    assert face.mean() > 0.7, face.mean()


def test_two_people_are_both_kept(photos) -> None:
    one = photos["astronaut"][:300, 80:380]  # head and shoulders
    two = np.full((600, 600, 3), 128, np.uint8)
    two[300:] = np.concatenate([one, one], axis=1)  # two people side by side, cut by the bottom edge
    two = cv2.resize(two, (256, 256), interpolation=cv2.INTER_AREA)
    prior = subject_prior(two, work=128)
    assert len(prior.faces) >= 2, prior.faces
    batch = _run([two])
    assert batch.keep_B[0], batch.drop_reason
    mask = batch["mask_BHW"][0]
    for x0, y0, x1, y1 in prior.faces[:2]:
        assert mask[y0:y1, x0:x1].mean() > 0.6, "a second person vanished from the mask"


def test_uniform_images_are_dropped_never_success() -> None:
    flat = np.full((96, 96, 3), 128, np.uint8)
    noise = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    batch = _run([flat, noise])
    for i in range(2):
        assert not batch.keep_B[i]
        assert batch.drop_reason[i] in ("segment:empty_mask", "segment:implausible_mask"), batch.drop_reason[i]
        assert batch.status(i) == "skipped"
    assert batch["mask_BHW"].shape == (2, 96, 96)


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda m: m, "empty_mask"),
        (lambda m: np.ones_like(m), "implausible_mask"),
        (lambda m: np.pad(np.ones((40, 96), np.float32), ((56, 0), (0, 0))), None),
    ],
)
def test_plausibility_codes(make, code) -> None:
    m = make(np.zeros((96, 96), np.float32))
    got, info = plausibility(m, SegmentConfig())
    assert got == code, info


def test_guided_filter_sharpens_a_soft_mask_along_the_guide_edge() -> None:
    guide = np.zeros((64, 64), np.float32)
    guide[:, 32:] = 1.0
    src = cv2.GaussianBlur(guide, (0, 0), 4.0)  # a blurry mask whose edge sits where the photo's edge is
    out = guided_filter(guide, src, radius=4, eps=1e-3)
    jump_src, jump_out = np.diff(src[0]), np.diff(out[0])
    assert int(np.argmax(jump_out)) == 31, "the matte's steepest step is not at the photo's edge"
    assert jump_out[31] > 3 * jump_src[31], (jump_src[31], jump_out[31])


def test_bad_config_raises_before_running() -> None:
    with pytest.raises(ValueError):
        SegmentStage(SegmentConfig(min_area=0.5, max_area=0.2))


def test_sam2_backend_prompts_with_the_prior_and_records_the_model(photos) -> None:
    pytest.importorskip("sam2")
    import torch

    torch.set_num_threads(1)
    img = _square(photos["astronaut"], 96)
    disk, _ = _disk_image(96)
    batch = _run([img, disk], backend="sam2", flavor="tiny")
    masks = batch["mask_BHW"]
    assert masks.shape == (2, 96, 96) and masks.dtype == np.float32 and 0 <= masks.min() and masks.max() <= 1
    for i in range(2):
        rec = batch.meta[i]["segment"]
        assert rec["backend"] == "sam2" and rec["model"]["flavor"] == "tiny" and rec["boxes"]
        # untrained SAM2 answers p ≈ 0.5 inside the box: never a success
        assert batch.drop_reason[i] in ("segment:empty_mask", "segment:implausible_mask", "segment:indecisive_mask")
        assert not batch.keep_B[i]
    x0, y0, x1, y1 = batch.meta[1]["segment"]["boxes"][0]
    far = np.ones((96, 96), bool)
    far[max(0, y0 - 20) : y1 + 20, max(0, x0 - 20) : x1 + 20] = False
    assert masks[1][far].max() == 0.0, "SAM2 output far outside the prompt box must be cut"


def test_scattered_fragments_are_implausible_but_two_people_are_not() -> None:
    eyes = np.zeros((128, 128), np.float32)
    cv2.circle(eyes, (30, 50), 10, 1.0, -1)
    cv2.circle(eyes, (98, 50), 10, 1.0, -1)
    cv2.circle(eyes, (64, 100), 7, 1.0, -1)
    assert plausibility(eyes, SegmentConfig())[0] == "implausible_mask"
    pair = np.zeros((128, 128), np.float32)
    pair[40:, 10:58] = 1.0
    pair[40:, 70:118] = 1.0
    assert plausibility(pair, SegmentConfig())[0] is None


def test_a_benchmark_may_keep_implausible_masks_but_the_verdict_is_recorded() -> None:
    rng = np.random.default_rng(0)
    grey = np.full((2, 64, 64, 3), 128, np.uint8)
    batch = SampleBatch(keys=["a", "b"])
    batch["rgb_BHW3"] = np.clip(grey + rng.normal(0, 3, grey.shape), 0, 255).astype(np.uint8)  # no subject at all
    stage = SegmentStage(SegmentConfig(drop_implausible=False))
    stage.setup()
    out = stage.process(batch)
    dropped = _run(list(batch["rgb_BHW3"]))
    assert all(r is not None and r.startswith("segment:") for r in dropped.drop_reason)  # the default drops them
    assert out.keep_B.all() and [m["segment"]["verdict"] for m in out.meta] == [
        r.split(":")[1] for r in dropped.drop_reason]


@pytest.mark.parametrize("edge", [515, 517, 519])
def test_a_matte_above_512_follows_the_full_resolution_edge(edge: int) -> None:
    from relight_stream.pipeline.segment_mask import soft_matte

    rng = np.random.default_rng(edge)
    img = np.full((1024, 1024, 3), 40, np.uint8)
    img[:, edge:] = 200  # a subject boundary on an odd pixel: between two pixels of the 512² filter grid
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    hard = np.zeros((128, 128), np.uint8)
    hard[:, round(edge / 8) :] = 1  # GrabCut's answer at 128²: the nearest column, up to 4 px off
    alpha = soft_matte(img, hard)
    crossings = (alpha >= 0.5).argmax(axis=1)
    assert (crossings == edge).mean() > 0.95  # the matte switches on the photo's own edge pixel
    assert alpha.shape == (1024, 1024) and alpha[:, : edge - 8].max() < 0.1 and alpha[:, edge + 8 :].min() > 0.9
