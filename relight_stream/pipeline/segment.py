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
from relight_stream.pipeline.segment_sam3 import sam3_masks
from relight_stream.pipeline.stage import Stage, per_sample
from relight_stream.pipeline.subject_prior import fill_from_fragments, is_scattered, subject_prior
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

ENGINE_KIND = {"classical": "", "sam2": "segmenter", "sam3": "segmenter_sam3"}
DEFAULT_FLAVOR = {"classical": "", "sam2": "hiera-s", "sam3": "sam3"}
"""``segment.flavor`` when unset: SAM 2.1 Hiera-S, SAM 3."""
MAX_COMPONENTS = 12
MAX_BORDER_FRACTION = 0.75
MAX_PROMPTS = 4
MIN_SCATTERED_SOLIDITY = 0.4
"""A mask whose largest piece is under 65 % of its area must fill at least this much of its convex hull (eyes and a
nose of a close-up cat fail; two people side by side pass)."""
MAX_UNCERTAIN = 0.5
"""Largest share of a mask's support that may be neither background nor subject (see :func:`plausibility`)."""
MAX_FILL_BORDER_FRACTION = 0.95
"""Border limit for a frame-filling subject (see :func:`fill_from_fragments`): it may touch most of the border."""


def _engine_batch(stage: Stage, batch: SampleBatch, call: Any) -> None:
    """Run ``call()``; a whole-batch engine failure records every kept sample as ``segment:error`` (failed)."""
    try:
        call()
    except Exception as exc:
        log.warning("segmenter engine failed on a batch of %d: %s", len(batch), exc)
        for i in list(batch.kept()):
            batch.drop(i, "segment:error", failed=True, detail=f"{type(exc).__name__}: {exc}")


def guided_filter(guide_hw: np.ndarray, src_hw: np.ndarray, *, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``src`` steered by ``guide`` (both float32 0–1, same shape)."""
    k = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide_hw), box(src_hw)
    cov_ip = box(guide_hw * src_hw) - mean_i * mean_p
    var_i = box(guide_hw * guide_hw) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide_hw + box(b)


def soft_matte(rgb_HW3: np.ndarray, hard_hw: np.ndarray) -> np.ndarray:
    """Full-resolution soft matte (float32 0–1) from a low-resolution hard mask and the sRGB photo."""
    H, W = rgb_HW3.shape[:2]
    coarse = cv2.resize(hard_hw.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    # The guide is the photo at up to 512² (enough for a few-pixel soft edge); the result is upsampled.
    g = min(1.0, 512 / max(H, W))
    gh, gw = max(8, int(round(H * g))), max(8, int(round(W * g)))
    guide = cv2.cvtColor(cv2.resize(rgb_HW3, (gw, gh), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    src = cv2.resize(coarse, (gw, gh), interpolation=cv2.INTER_AREA)
    alpha = guided_filter(guide.astype(np.float32) / 255.0, src, radius=max(2, gw // 96), eps=2e-3)
    if (gh, gw) != (H, W):
        alpha = cv2.resize(alpha, (W, H), interpolation=cv2.INTER_LINEAR)
    # A gentle contrast stretch keeps the interior solid and the transition a few pixels wide.
    return np.clip((alpha - 0.5) * 1.6 + 0.5, 0.0, 1.0).astype(np.float32)


def clean_mask(fg_hw: np.ndarray, prior_hw: np.ndarray) -> np.ndarray:
    """Morphological clean-up: drop specks, fill holes, keep every sizeable component near the prior."""
    fg = fg_hw.astype(np.uint8)
    k = max(1, fg.shape[0] // 128)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1:
        return fg.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(n, bool)
    for j in range(1, n):
        comp = labels == j
        if areas[j - 1] >= 0.08 * areas.max() and prior_hw[comp].mean() > 0.15:
            keep[j] = True
    fg = keep[labels]
    # Fill holes: background components that touch no image border.
    nb, bl = cv2.connectedComponents((~fg).astype(np.uint8), connectivity=4)
    touching = np.unique(np.concatenate([bl[0], bl[-1], bl[:, 0], bl[:, -1]]))
    hole = np.ones(nb, bool)
    hole[touching] = False
    hole[0] = False  # label 0 is the foreground itself
    return fg | hole[bl]


def grabcut_from_prior(small_rgb: np.ndarray, prob_hw: np.ndarray, *, iters: int = 4) -> np.ndarray:
    """GrabCut seeded by the prior: definite background at low-prior border pixels, probable elsewhere."""
    n = prob_hw.shape[0]
    gc = np.full(prob_hw.shape, cv2.GC_PR_BGD, np.uint8)
    gc[prob_hw >= 0.4] = cv2.GC_PR_FGD
    core = cv2.erode((prob_hw >= 0.85).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    gc[core] = cv2.GC_FGD
    band = np.zeros(prob_hw.shape, bool)
    b = max(2, n // 32)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True
    gc[(band & (prob_hw < 0.3)) | (prob_hw < 0.05)] = cv2.GC_BGD
    if not ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).any() or not ((gc == cv2.GC_BGD) | (gc == cv2.GC_PR_BGD)).any():
        return prob_hw >= 0.5  # degenerate prior: nothing for GrabCut's colour models to learn from
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut seeds its GMMs with k-means++ from this thread's RNG: make the result reproducible
    cv2.grabCut(cv2.cvtColor(small_rgb, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, iters, cv2.GC_INIT_WITH_MASK)
    return (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)


def plausibility(mask_hw: np.ndarray, cfg: SegmentConfig, *, fills_frame: bool = False, fragments: bool = False
                 ) -> tuple[str | None, dict[str, float]]:
    """Drop code (``empty_mask``/``implausible_mask``/``indecisive_mask``) or ``None``, and the statistics behind it.

    ``uncertain`` is the share of the mask's support (p > 0.1) where 0.1 < p < 0.9: a matte has soft edges only
    (classical masks: <= 0.27 even at 64²), while a model that cannot tell subject from background (untrained or
    wrong weights) answers p ≈ 0.5 everywhere; above :data:`MAX_UNCERTAIN` the mask is ``indecisive_mask``.

    Args:
        mask_hw: The mask (float 0–1 or bool), any size.
        cfg: Area limits.
        fills_frame: A subject grown from its scattered features: it may touch up to
            :data:`MAX_FILL_BORDER_FRACTION` of the image border instead of :data:`MAX_BORDER_FRACTION`.
        fragments: Scattered features that could not be grown into one subject: implausible unless empty.
    """
    area = float(mask_hw.mean())
    f = max(1, -(-max(mask_hw.shape) // 256))  # the shape statistics need no more than 256²
    small = mask_hw[::f, ::f] if f > 1 else mask_hw
    support = small > 0.1
    uncertain = float((support & (small < 0.9)).sum() / max(1, support.sum()))
    hard = (small >= 0.5).astype(np.uint8)
    border = np.concatenate([hard[0], hard[-1], hard[:, 0], hard[:, -1]])
    n, _, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA] if n > 1 else np.zeros(0, np.int32)
    big = int((areas >= 0.002 * hard.size).sum())
    largest = float(areas.max() / max(1, areas.sum())) if big else 0.0
    pts = cv2.findNonZero(hard)
    hull = cv2.contourArea(cv2.convexHull(pts)) if pts is not None and len(pts) > 2 else 0.0
    solidity = float(hard.sum() / hull) if hull > 0 else 0.0
    info = {"area": round(area, 5), "border_fraction": round(float(border.mean()), 5), "components": big,
            "largest_fraction": round(largest, 4), "solidity": round(min(solidity, 1.0), 4),
            "uncertain": round(uncertain, 4)}
    if area < cfg.min_area or big == 0:
        return "empty_mask", info
    max_border = MAX_FILL_BORDER_FRACTION if fills_frame else MAX_BORDER_FRACTION
    if area > cfg.max_area or info["border_fraction"] > max_border or big > MAX_COMPONENTS:
        return "implausible_mask", info
    if fragments or (largest < 0.65 and solidity < MIN_SCATTERED_SOLIDITY):  # strewn pieces, no main subject
        return "implausible_mask", info
    if uncertain > MAX_UNCERTAIN:
        return "indecisive_mask", info
    return None, info


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
