"""The segment stage's ``sam3`` backend: text-prompted SAM 3 (tiny random-weight model) inside the pipeline."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from relight_stream.config import GenerateConfig, RunConfig, SegmentConfig
from relight_stream.pipeline.geometry import engine_images
from relight_stream.pipeline.segment import SegmentStage
from relight_stream.sample import SampleBatch

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def photos_128(photos):
    return [cv2.resize(photos[n], (128, 96)) for n in ("astronaut", "coffee", "chelsea")]


def _batch(images: list[np.ndarray]) -> SampleBatch:
    batch = SampleBatch(keys=[f"s{i}" for i in range(len(images))])
    batch["rgb_BHW3"] = np.stack(images)
    return batch


def _stage(**kw) -> SegmentStage:
    stage = SegmentStage(SegmentConfig(backend="sam3", flavor="tiny", **kw), RunConfig(device="cpu"))
    stage.setup()
    return stage


def test_the_mask_is_the_union_of_every_prompt_s_kept_instances(photos_128) -> None:
    stage = _stage(prompts=("person", "cat"), score_threshold=0.0, min_area=0.0, max_area=1.0)
    batch = stage.process(_batch(photos_128))
    images = engine_images(batch["rgb_BHW3"], [0, 1, 2])
    person, cat = (stage.engine.detect(images, p, threshold=0.0) for p in ("person", "cat"))
    union = np.maximum(person.mask.numpy(), cat.mask.numpy())
    np.testing.assert_allclose(batch["mask_BHW"], union, atol=1e-6)
    assert batch["mask_BHW"].shape == (3, 96, 128) and batch["mask_BHW"].dtype == np.float32
    for i in range(3):
        rec = batch.meta[i]["segment"]
        assert rec["backend"] == "sam3" and rec["prompts"] == ["person", "cat"]
        assert rec["instances"] == int(person.keep[i].sum() + cat.keep[i].sum()) > 0
        assert rec["model"] == {"flavor": "tiny", "weights": None}
        assert batch.drop_reason[i] != "segment:no_instance"


def test_no_instance_above_the_threshold_is_a_recorded_skip_not_a_failure(photos_128) -> None:
    batch = _stage(score_threshold=1.0).process(_batch(photos_128[:2]))
    assert batch.drop_reason == ["segment:no_instance", "segment:no_instance"]
    assert not batch.failed_B.any() and not batch["mask_BHW"].any()
    assert batch.meta[0]["segment"]["instances"] == 0 and 0 <= batch.meta[0]["segment"]["best_score"] <= 1


def test_sam3_needs_weights_prompts_and_a_threshold_in_range() -> None:
    with pytest.raises(ValueError, match=r"facebook/sam3@<commit sha>"):
        SegmentStage(SegmentConfig(backend="sam3"))  # the real model, no weights: never untrained noise
    with pytest.raises(ValueError, match="prompts"):
        SegmentStage(SegmentConfig(backend="sam3", flavor="tiny", prompts=()))
    with pytest.raises(ValueError, match="score_threshold"):
        SegmentStage(SegmentConfig(backend="sam3", flavor="tiny", score_threshold=1.5))
    with pytest.raises(ValueError, match="no random-weight build"):  # refused before a dry run promises it
        SegmentStage(SegmentConfig(backend="sam3", weights="random"))
    assert SegmentStage(SegmentConfig(backend="sam3", flavor="tiny", weights="random")).engine_flavor == "tiny"


def test_generate_runs_with_sam3_and_records_it(photos_dir, tmp_path, monkeypatch) -> None:
    import json
    import tarfile

    from relight_stream.config import DecodeConfig, ShardConfig
    from relight_stream.engines import segmenter_sam3
    from relight_stream.pipeline.recipes import run_generate

    # Untrained SAM 3 "segments" the whole frame, which the plausibility check rightly drops; to follow samples
    # through every later stage, the real tiny engine's union mask is confined to a centred ellipse.
    detect = segmenter_sam3.Sam3Engine.detect

    def centred(self, images, prompts, *, threshold=None):
        det = detect(self, images, prompts, threshold=threshold)
        h, w = det.mask.shape[-2:]
        yy, xx = np.mgrid[:h, :w]
        inside = ((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2 <= 1
        det.mask = (det.mask > 0).float() * torch.from_numpy(inside)
        return det

    monkeypatch.setattr(segmenter_sam3.Sam3Engine, "detect", centred)

    out = tmp_path / "out"
    cfg = GenerateConfig(inputs=[str(photos_dir)], out=str(out), decode=DecodeConfig(resolution=64, batch_size=4),
                         shard=ShardConfig(samples_per_shard=4),
                         segment=SegmentConfig(backend="sam3", flavor="tiny", score_threshold=0.0, min_area=0.0,
                                               max_area=1.0))
    assert run_generate(cfg, RunConfig(seed=0, device="cpu")) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["ok"] > 0
    with tarfile.open(next(out.glob("shard-*.tar"))) as tar:
        meta = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith("meta.json")]
    assert meta and all(m["segment"]["backend"] == "sam3" for m in meta)
