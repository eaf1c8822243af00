"""SAM2 point prompts: the engine takes face centres as clicks beside the box; the stage passes them."""

from __future__ import annotations

import numpy as np
import pytest

from relight_stream.pipeline.segment import face_points
from relight_stream.pipeline.subject_prior import SubjectPrior

pytest.importorskip("sam2")


@pytest.fixture(scope="module")
def seg():
    import torch

    from relight_stream.engines import create_engine

    torch.set_num_threads(1)
    return create_engine("segmenter", "tiny", backend="eager", device="cpu")


def test_point_prompts_change_the_mask_and_padding_points_are_ignored(seg) -> None:
    import torch

    images = torch.rand(2, 3, 64, 80)
    boxes = torch.tensor([[8.0, 8.0, 60.0, 56.0], [20.0, 4.0, 76.0, 60.0]])
    assert seg.supports_points
    plain = seg(images, boxes)
    pts = torch.tensor([[[30.0, 30.0]], [[50.0, 20.0]]])
    clicked = seg(images, boxes, pts, torch.ones(2, 1, dtype=torch.int32))
    assert clicked.shape == plain.shape == (2, 64, 80) and 0 <= float(clicked.min()) <= float(clicked.max()) <= 1
    assert not torch.allclose(plain, clicked), "a positive click must change what SAM2 answers"
    assert torch.allclose(seg(images, boxes, pts), clicked)  # labels default to positive
    moved = seg(images, boxes, pts + torch.tensor([15.0, 20.0]))
    assert not torch.allclose(moved, clicked), "the click position must matter"
    # a batch row padded with label -1 answers like a batch whose rows are all padded ("no point")
    pad = seg(images, boxes, pts, torch.tensor([[1], [-1]], dtype=torch.int32))
    torch.testing.assert_close(pad[0], clicked[0])
    both_pad = seg(images, boxes, pts, torch.full((2, 1), -1, dtype=torch.int32))
    torch.testing.assert_close(pad[1], both_pad[1])


def test_bad_point_shapes_raise(seg) -> None:
    import torch

    images, boxes = torch.rand(2, 3, 32, 32), torch.tensor([[2.0, 2.0, 30.0, 30.0]] * 2)
    with pytest.raises(ValueError, match="points"):
        seg(images, boxes, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="labels"):
        seg(images, boxes, torch.zeros(2, 3, 2), torch.ones(2, 2))


def test_face_points_are_face_centres_padded_per_image() -> None:
    prob = np.zeros((8, 8), np.float32)
    priors = [SubjectPrior(prob, faces=[[10, 20, 30, 60], [40, 0, 50, 10]]), SubjectPrior(prob, faces=[]),
              SubjectPrior(prob, faces=[[0, 0, 4, 8]])]
    points, labels = face_points(priors, limit=3)
    assert points.shape == (3, 3, 2) and labels.tolist() == [[1, 1, -1], [-1, -1, -1], [1, -1, -1]]
    assert points[0, :2].tolist() == [[20.0, 40.0], [45.0, 5.0]] and points[2, 0].tolist() == [2.0, 4.0]
    # the padding is fixed, so a face-free image is prompted the same way whatever shares its batch
    alone_points, alone_labels = face_points([SubjectPrior(prob)], limit=3)
    assert alone_labels.tolist() == [[-1, -1, -1]] and alone_points.shape == (1, 3, 2)


def test_a_mask_does_not_depend_on_the_batch_it_shares(seg, photos) -> None:
    import cv2

    from relight_stream.config import SegmentConfig
    from relight_stream.pipeline.segment import SegmentStage
    from relight_stream.sample import SampleBatch

    stage = SegmentStage(SegmentConfig(backend="sam2", flavor="tiny"))
    stage.engine = seg
    face = cv2.resize(np.ascontiguousarray(photos["astronaut"]), (128, 128))
    plain = cv2.resize(np.ascontiguousarray(photos["coffee"][:, 100:500]), (128, 128))
    together = stage.process(SampleBatch(keys=["face", "plain"], arrays={"rgb_BHW3": np.stack([face, plain])}))
    alone = stage.process(SampleBatch(keys=["plain"], arrays={"rgb_BHW3": plain[None]}))
    assert together.keep_B[1] == alone.keep_B[0]
    np.testing.assert_allclose(together["mask_BHW"][1], alone["mask_BHW"][0], atol=1e-5)


def test_the_sam2_stage_clicks_each_face_centre_inside_the_union_box(seg, photos) -> None:
    import cv2

    from relight_stream.config import SegmentConfig
    from relight_stream.pipeline.segment import SegmentStage
    from relight_stream.sample import SampleBatch

    calls = []

    def spy(images, boxes, points=None, labels=None):  # the real engine, with its prompts recorded
        calls.append((boxes.clone(), None if points is None else (points.clone(), labels.clone())))
        return seg(images, boxes, points, labels)

    spy.supports_points = True
    stage = SegmentStage(SegmentConfig(backend="sam2", flavor="tiny"))
    stage.engine = spy
    one = photos["astronaut"][:300, 80:380]
    two = np.full((600, 600, 3), 128, np.uint8)
    two[300:] = np.concatenate([one, one], axis=1)
    batch = SampleBatch(keys=["two", "flat"])
    batch["rgb_BHW3"] = np.stack([cv2.resize(two, (128, 128), interpolation=cv2.INTER_AREA),
                                  np.full((128, 128, 3), 90, np.uint8)])
    stage.process(batch)
    faces = batch.meta[0]["segment"]["faces"]
    assert len(faces) >= 2, faces
    union, prompts = calls[0]
    assert prompts is not None, "the first SAM2 call must carry the face centres"
    points, labels = prompts
    assert labels[0, : len(faces)].tolist() == [1] * len(faces) and (labels[1] == -1).all()
    for (x0, y0, x1, y1), (px, py) in zip(faces, points[0].tolist()):
        assert (px, py) == ((x0 + x1) / 2, (y0 + y1) / 2)
        assert union[0, 0] <= px <= union[0, 2] and union[0, 1] <= py <= union[0, 3]
