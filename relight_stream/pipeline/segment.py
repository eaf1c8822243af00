"""Foreground segmentation: reads ``rgb_BHW3`` (sRGB uint8), writes ``mask_BHW`` (float32 0–1, soft edges).

Two backends behind one stage:

* ``classical`` (default, no download): the subject prior of :mod:`subject_prior` (Haar faces + saliency +
  centre) seeds GrabCut (Rother et al., SIGGRAPH 2004) at ``work_resolution``²; the hard result is upsampled
  and turned into a soft matte at full resolution by a guided filter (He et al., ECCV 2010) steered by the
  photo itself. All sizeable components are kept, so every person in the photo stays in the mask. When that
  pass returns only scattered features (the eyes and nose of an animal that fills the frame), a second GrabCut
  grows them into the subject (``subject_prior.fill_from_fragments``); such a mask may touch most of the border.
* ``sam2``: the segmenter engine (``create_engine("segmenter", flavor)``) prompted with the union box of the
  subjects found by the same prior plus every face centre as a positive point (eager/compile engines), then
  with one box per subject; the probabilities are united, so all persons are kept consistently.
* ``sam3``: SAM 3 prompted with text concepts (``segment.prompts``, default ``person``), the union of every kept
  instance (:mod:`segment_sam3`); an image with no instance is skipped as ``segment:no_instance``.

The same mask serves the input and the target, so no person vanishes from one and stays in the other.
A mask covering less than ``min_area`` of the image is dropped as ``segment:empty_mask``; one covering more
than ``max_area``, hugging most of the image border, or shattered into many pieces as
``segment:implausible_mask`` (as is a mask of scattered fragments with no main piece, or features that could not
be grown into one subject), and one that is mostly neither subject nor background (p ≈ 0.5: untrained or wrong
weights) as ``segment:indecisive_mask`` — never passed on as a success.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2
import numpy as np

from relight_stream.config import RunConfig, SegmentConfig
from relight_stream.kernels.xp import asnumpy
from relight_stream.pipeline.engine_batch import call_in_chunks
from relight_stream.pipeline.geometry import check_engine_args, engine_images
from relight_stream.pipeline.segment_mask import (  # noqa: F401  (plausibility etc. are imported from here)
    MAX_FILL_BORDER_FRACTION,
    clean_mask,
    grabcut_from_prior,
    guided_filter,
    plausibility,
    soft_matte,
)
from relight_stream.pipeline.segment_sam3 import sam3_masks
from relight_stream.pipeline.stage import Stage, per_sample
from relight_stream.pipeline.subject_prior import fill_from_fragments, is_scattered, subject_prior
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

ENGINE_KIND = {"classical": "", "sam2": "segmenter", "sam3": "segmenter_sam3"}
DEFAULT_FLAVOR = {"classical": "", "sam2": "hiera-s", "sam3": "sam3"}
"""``segment.flavor`` when unset: SAM 2.1 Hiera-S, SAM 3."""
MAX_PROMPTS = 4


def _engine_batch(stage: Stage, batch: SampleBatch, call: Any) -> None:
    """Run ``call()``; a whole-batch engine failure records every kept sample as ``segment:error`` (failed)."""
    try:
        call()
    except Exception as exc:
        log.warning("segmenter engine failed on a batch of %d: %s", len(batch), exc)
        for i in list(batch.kept()):
            batch.drop(i, "segment:error", failed=True, detail=f"{type(exc).__name__}: {exc}")


def face_points(priors: list[Any], limit: int = MAX_PROMPTS) -> tuple[Any, Any]:
    """SAM2 point prompts: each face centre (full-resolution pixels) as a positive click, up to ``limit`` per image.

    Returns ``(points [B,N,2], labels [B,N])`` torch tensors with ``N = limit``, rows padded with label -1 (SAM's
    "no point"). The padding is fixed rather than fitted to the batch because SAM2 answers differently for a
    different number of padding tokens: a sample's mask must not depend on which samples share its batch (nor on
    the chunking after an out-of-memory retry).
    """
    import torch

    n = limit
    points = torch.zeros((len(priors), n, 2), dtype=torch.float32)
    labels = torch.full((len(priors), n), -1, dtype=torch.int32)
    for j, p in enumerate(priors):
        for k, (x0, y0, x1, y1) in enumerate(p.faces[:n]):
            points[j, k] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2])
            labels[j, k] = 1
    return points, labels


class SegmentStage(Stage):
    """Writes ``mask_BHW`` and ``meta[i]["segment"]`` (backend, prior cues, boxes, area)."""

    name = "segment"
    reads = ("rgb_BHW3",)
    writes = ("mask_BHW",)

    def __init__(self, cfg: SegmentConfig, run: RunConfig | None = None) -> None:
        if cfg.backend not in ENGINE_KIND:
            raise ValueError(f"segment.backend must be classical, sam2 or sam3, got {cfg.backend!r}")
        if cfg.backend == "sam3" and (not cfg.prompts or not all(p.strip() for p in cfg.prompts)
                                      or not 0 <= cfg.score_threshold <= 1):
            raise ValueError(f"segment: sam3 needs non-empty prompts and 0 <= score_threshold <= 1, got "
                             f"{cfg.prompts}, {cfg.score_threshold}")
        if cfg.work_resolution < 32 or cfg.grabcut_iters < 1:
            raise ValueError(f"segment: need work_resolution >= 32 and grabcut_iters >= 1, got "
                             f"{cfg.work_resolution}, {cfg.grabcut_iters}")
        if not 0 <= cfg.min_area < cfg.max_area <= 1:
            raise ValueError(f"segment: need 0 <= min_area < max_area <= 1, got {cfg.min_area}, {cfg.max_area}")
        self.cfg = cfg
        self.run = run or RunConfig()
        self.engine: Any = None
        if cfg.backend != "classical":
            check_engine_args(ENGINE_KIND[cfg.backend], self.engine_flavor, cfg.weights)

    @property
    def engine_flavor(self) -> str:
        """The engine flavor: ``segment.flavor``, or the backend's default (SAM 2.1 ``hiera-s``, ``sam3``)."""
        return self.cfg.flavor or DEFAULT_FLAVOR[self.cfg.backend]

    def setup(self) -> None:
        if self.cfg.backend != "classical" and self.engine is None:
            from relight_stream.engines import create_engine

            self.engine = create_engine(ENGINE_KIND[self.cfg.backend], self.engine_flavor, weights=self.cfg.weights,
                                        device=self.run.device)

    def describe(self) -> str:
        if self.cfg.backend == "classical":
            return f"classical: Haar+saliency+centre prior -> GrabCut@{self.cfg.work_resolution} -> guided matte"
        what = f"{self.cfg.backend} flavor={self.engine_flavor} weights={self.cfg.weights or 'random'}"
        return what + (f" prompts={','.join(self.cfg.prompts)}" if self.cfg.backend == "sam3" else "")

    def process(self, batch: SampleBatch) -> SampleBatch:
        rgb = asnumpy(batch["rgb_BHW3"])
        B, H, W = rgb.shape[:3]
        masks = np.zeros((B, H, W), np.float32)
        batch["mask_BHW"] = masks
        priors: dict[int, Any] = {}
        if self.cfg.backend == "sam3":  # text prompts: no prior needed
            _engine_batch(self, batch, lambda: sam3_masks(self, batch))
            return self._verdicts(batch, masks)

        cascades = ("frontal",) if self.cfg.backend == "sam2" else ("frontal", "profile", "cat")

        def prior_of(i: int) -> None:
            priors[i] = subject_prior(rgb[i], work=self.cfg.work_resolution, cascades=cascades)

        per_sample(self, batch, prior_of, parallel=True)
        if self.cfg.backend == "sam2":
            _engine_batch(self, batch, lambda: self._sam2(batch, rgb, priors))
        else:
            per_sample(self, batch, lambda i: self._classical(batch, rgb[i], priors[i], i), check=self.writes,
                       parallel=True)
        return self._verdicts(batch, masks)

    def _verdicts(self, batch: SampleBatch, masks: np.ndarray) -> SampleBatch:
        """Drop the kept samples whose mask is empty or implausible (see :func:`plausibility`)."""
        verdicts: dict[int, tuple[str | None, dict[str, float]]] = {}

        def verdict(i: int) -> None:
            rec = batch.meta[i].get("segment", {})
            verdicts[i] = plausibility(masks[i], self.cfg, fills_frame=bool(rec.get("fills_frame")),
                                       fragments=bool(rec.get("fragments")))

        per_sample(self, batch, verdict, parallel=True)
        for i in list(batch.kept()):
            code, info = verdicts[i]
            batch.meta[i].setdefault("segment", {}).update(info, verdict=code)
            if code and self.cfg.drop_implausible:
                batch.drop(i, f"segment:{code}", detail=f"area={info['area']} border={info['border_fraction']} "
                           f"uncertain={info['uncertain']}")
        return batch

    def _record(self, batch: SampleBatch, i: int, prior: Any) -> None:
        batch.meta[i]["segment"] = {
            "backend": self.cfg.backend,
            "model": None if self.cfg.backend == "classical" else {"flavor": self.engine_flavor,
                                                                  "weights": self.cfg.weights},
            "faces": prior.faces,
            "boxes": prior.boxes,
            "cues": prior.cues,
        }

    def _classical(self, batch: SampleBatch, rgb_HW3: np.ndarray, prior: Any, i: int) -> None:
        n = self.cfg.work_resolution
        small = cv2.resize(rgb_HW3, (n, n), interpolation=cv2.INTER_AREA)
        fg = grabcut_from_prior(small, prior.prob_hw, iters=self.cfg.grabcut_iters)
        fg = clean_mask(fg, prior.prob_hw)
        fills = fragments = is_scattered(fg)
        if fills:
            grown, keep = fill_from_fragments(small, fg, iters=self.cfg.grabcut_iters + 1)
            grown = clean_mask(grown, keep)
            fills = plausibility(grown, self.cfg, fills_frame=True)[0] is None
            if fills:
                fg, fragments = grown, False
        batch["mask_BHW"][i] = soft_matte(rgb_HW3, fg)
        self._record(batch, i, prior)
        batch.meta[i]["segment"].update(fills_frame=fills, fragments=fragments)

    def _sam2(self, batch: SampleBatch, rgb: np.ndarray, priors: dict[int, Any]) -> None:
        idx = [i for i in batch.kept() if i in priors]
        if not idx:
            return
        H, W = rgb.shape[1:3]

        def store(chunk: list[int], probs: np.ndarray) -> None:
            for j, i in enumerate(chunk):
                # SAM2 answers the prompt boxes; anything it adds far outside them (10 % margin) is a leak.
                x0, y0, x1, y1 = priors[i].box
                mx, my = 0.1 * (x1 - x0) + 2, 0.1 * (y1 - y0) + 2
                keep = np.zeros((H, W), np.float32)
                keep[max(0, int(y0 - my)) : int(y1 + my) + 1, max(0, int(x0 - mx)) : int(x1 + mx) + 1] = 1.0
                batch["mask_BHW"][i] = np.clip(probs[j], 0, 1) * keep
                self._record(batch, i, priors[i])
                if not np.isfinite(probs[j]).all():
                    batch.drop(i, "segment:nonfinite_output", failed=True, detail="mask_BHW")

        # Out of memory: retried in halved chunks, down to one sample, then dropped as segment:oom (C8).
        call_in_chunks(self, batch, idx, lambda chunk: self._sam2_probs(batch, chunk, priors), on_result=store)

    def _sam2_probs(self, batch: SampleBatch, idx: list[int], priors: dict[int, Any]) -> np.ndarray:
        """SAM2 mask probabilities ``[len(idx),H,W]`` (float32 0–1) for batch rows ``idx``."""
        import torch

        images = engine_images(batch["rgb_BHW3"], idx)
        union = torch.tensor([priors[i].box for i in idx], dtype=torch.float32)
        points = face_points([priors[i] for i in idx]) if getattr(self.engine, "supports_points", False) else None
        probs = asnumpy(self.engine(images, union) if points is None else self.engine(images, union, *points))
        probs = probs.astype(np.float32)
        # Every person gets their own prompt too (up to MAX_PROMPTS), united with the union-box mask, so all
        # persons stay in the mask — in the input exactly as in the target.
        for k in range(MAX_PROMPTS):
            rows = [j for j, i in enumerate(idx) if len(priors[i].boxes) > max(1, k)]
            if not rows:
                break
            boxes = torch.tensor([priors[idx[j]].boxes[k] for j in rows], dtype=torch.float32)
            extra = asnumpy(self.engine(images[rows], boxes)).astype(np.float32)
            probs[rows] = np.maximum(probs[rows], extra)
        return probs
