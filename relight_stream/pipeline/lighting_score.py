"""Photometric lighting score: weight-free, subject-aware, vectorised over a batch (NumPy or CuPy via ``xp``).

Reads ``rgb_BHW3`` (sRGB uint8) and, when present, ``mask_BHW`` (float 0–1 subject mask); writes one
``photo_<name>_B`` float32 array per raw metric and per sub-score, and ``photo_score_B`` (0–1, higher = better
lit). The same values go to ``meta[i]["scores"]`` so later stages can record them in ``meta.json``.

All measurements are taken on the subject: pixel weights come from the mask when one is given, else (stage option
``subject="prior"``) from the Haar-face + saliency prior of :mod:`relight_stream.pipeline.subject_prior`, else
from a free centre prior (an anisotropic Gaussian centred slightly above the image centre, where portraits put the
face). Images are averaged down in linear light; tonal judgements use CIE L* (0–1) because exposure is perceptual.

Raw metrics (weighted over the subject):

* ``mean_l`` — mean L*; ``clip_hi`` / ``clip_lo`` — fraction of pixels with any channel ≥ 250 (blown) / all
  channels ≤ 5 (crushed; weighs a quarter as much, because ``shadow_frac`` already counts dark areas);
* ``range_l`` — L* spread between the 2nd and 98th weighted percentiles (dynamic range, 1/256 bins);
* ``contrast_l`` — RMS of L* minus its local mean over a box of radius ``side/16`` (local contrast, flatness);
* ``shadow_frac`` — fraction of pixels with L* < 0.15; ``imbalance`` — |left − right| / (left + right) of the
  mean linear luminance on either side of the subject's centroid.

Each maps to a sub-score in [0, 1]; ``photo_score`` is their weighted geometric mean, so one failing property
(a blown-out face, a subject in darkness) pulls the whole score down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from relight_stream.kernels.color import srgb_to_linear
from relight_stream.kernels.xp import asnumpy, get_xp, has_cupy
from relight_stream.log import warn_once
from relight_stream.pipeline.stage import Stage
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

METRICS = ("mean_l", "clip_hi", "clip_lo", "range_l", "contrast_l", "shadow_frac", "imbalance")
SUBSCORES = ("exposure", "clipping", "range", "contrast", "shadow", "balance")
WEIGHTS = {"exposure": 2.0, "clipping": 1.5, "range": 1.0, "contrast": 1.0, "shadow": 1.0, "balance": 0.5}
COLUMNS = tuple(f"photo_{n}" for n in (*METRICS, *SUBSCORES, "score"))


def _logistic(x: Any, centre: float, width: float) -> Any:
    xp = get_xp(x)
    return 1.0 / (1.0 + xp.exp(-(x - centre) / width))


@dataclass(frozen=True, slots=True)
class PhotometricParams:
    """Targets and scales of the sub-scores (L* in 0–1 units).

    ``logistic(x; c, w) = 1 / (1 + exp(−(x − c) / w))``.
    """

    target_l: float = 0.55
    """Ideal mean L* of the subject; exposure = exp(−½((mean_l − target_l) / exposure_width)²)."""
    exposure_width: float = 0.17
    clip_scale: float = 0.04
    """clipping = exp(−(clip_hi + ¼ clip_lo) / clip_scale): 4 % of blown subject pixels gives 0.37."""
    range_mid: tuple[float, float] = (0.45, 0.08)
    """range = logistic(range_l; centre, width): a flat image (L* spread < 0.3) scores < 0.15."""
    contrast_mid: tuple[float, float] = (0.05, 0.012)
    """contrast = logistic(contrast_l; centre, width)."""
    shadow_mid: tuple[float, float] = (0.35, 0.08)
    """shadow = 1 − logistic(shadow_frac; centre, width): a third of the subject in deep shadow scores ≈ 0.5."""
    balance_width: float = 0.35
    """balance = exp(−½(imbalance / balance_width)²)."""
    work_side: int = 128
    """Images are box-downsampled (in linear light) to about this side before scoring; the metrics are
    low-frequency, and this keeps a 224² batch at a few ms per image on one CPU core."""


def linear_to_lstar(y: Any) -> Any:
    """Relative luminance Y (0–1, linear) to CIE L* scaled to 0–1."""
    xp = get_xp(y)
    f = xp.where(y > 0.008856, xp.cbrt(xp.maximum(y, 0.0)), 7.787 * y + 16.0 / 116.0)
    return 1.16 * f - 0.16


def centre_prior(h: int, w: int, xp=np) -> Any:
    """Subject prior ``[h, w]`` (sums to 1): a Gaussian at (0.5 w, 0.45 h), σ = (0.3 w, 0.35 h)."""
    yy = (xp.arange(h, dtype=xp.float32)[:, None] + 0.5) / h
    xx = (xp.arange(w, dtype=xp.float32)[None, :] + 0.5) / w
    g = xp.exp(-0.5 * (((xx - 0.5) / 0.3) ** 2 + ((yy - 0.45) / 0.35) ** 2))
    return g / g.sum()


def _box_down(x: Any, factor: int) -> Any:
    """Average ``factor``×``factor`` blocks of ``[B, H, W, ...]`` (the remainder rows/cols are cropped)."""
    if factor <= 1:
        return x
    b, h, w = x.shape[:3]
    h2, w2 = h // factor, w // factor
    x = x[:, : h2 * factor, : w2 * factor]
    # a sum of factor² strided views is several times faster in NumPy than a reshaped mean over axes (2, 4)
    acc = sum(x[:, i::factor, j::factor].astype(np.float32) for i in range(factor) for j in range(factor))
    return acc / (factor * factor)


def _box_blur(x: Any, r: int) -> Any:
    """Mean over a (2r+1)² box of ``[B, H, W]`` via an integral image, edges handled by clamped windows."""
    xp = get_xp(x)
    b, h, w = x.shape
    s = xp.zeros((b, h + 1, w + 1), dtype=xp.float64)
    s[:, 1:, 1:] = x.cumsum(axis=1).cumsum(axis=2)
    y0 = xp.clip(xp.arange(h) - r, 0, h)
    y1 = xp.clip(xp.arange(h) + r + 1, 0, h)
    x0 = xp.clip(xp.arange(w) - r, 0, w)
    x1 = xp.clip(xp.arange(w) + r + 1, 0, w)
    tot = s[:, y1][:, :, x1] - s[:, y0][:, :, x1] - s[:, y1][:, :, x0] + s[:, y0][:, :, x0]
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return (tot / area).astype(xp.float32)


def _weighted_quantiles(v: Any, w: Any, qs: tuple[float, ...], bins: int = 256) -> list[Any]:
    """Per-row weighted quantiles of ``v`` in [0, 1] (``[B, N]``; rows of ``w`` sum to 1), to 1/``bins``."""
    xp = get_xp(v)
    b = v.shape[0]
    idx = xp.clip((v * bins).astype(xp.int64), 0, bins - 1) + xp.arange(b)[:, None] * bins
    hist = xp.bincount(idx.ravel(), weights=w.ravel().astype(xp.float64), minlength=b * bins).reshape(b, bins)
    cw = xp.cumsum(hist, axis=1)
    return [(xp.minimum((cw < q).sum(axis=1), bins - 1) + 0.5) / bins for q in qs]


def photometric_scores(
    rgb_BHW3: Any, mask_BHW: Any | None = None, *, params: PhotometricParams = PhotometricParams()
) -> dict[str, np.ndarray]:
    """Score a batch of sRGB uint8 images for lighting quality.

    Args:
        rgb_BHW3: sRGB uint8 images, NumPy or CuPy, ``[B, H, W, 3]``.
        mask_BHW: Optional subject masks (0–1 float or 0–255 uint8), same ``H, W``; a row that is empty falls
            back to the centre prior.
        params: Targets and scales of the sub-scores.

    Returns:
        ``{column: float32 NumPy [B]}`` for every name in :data:`COLUMNS` (``photo_score`` in 0–1).
    """
    xp = get_xp(rgb_BHW3)
    b, h, w = rgb_BHW3.shape[:3]
    factor = max(1, round(min(h, w) / params.work_side))
    peak = xp.maximum(xp.maximum(rgb_BHW3[..., 0], rgb_BHW3[..., 1]), rgb_BHW3[..., 2])
    hi = _box_down((peak >= 250).astype(xp.float32), factor)
    lo = _box_down((peak <= 5).astype(xp.float32), factor)
    lin = _box_down(srgb_to_linear(rgb_BHW3), factor)
    y = lin[..., 0] * 0.2126 + lin[..., 1] * 0.7152 + lin[..., 2] * 0.0722
    lstar = linear_to_lstar(y)
    _, hh, ww = lstar.shape

    prior = centre_prior(hh, ww, xp)[None]
    if mask_BHW is not None:
        m = _box_down(xp.asarray(mask_BHW).astype(xp.float32), factor)
        if mask_BHW.dtype == np.uint8:
            m = m / 255.0
        msum = m.sum(axis=(1, 2), keepdims=True)
        wgt = xp.where(msum > 1e-3 * hh * ww, m / xp.maximum(msum, 1e-12), prior)
    else:
        wgt = xp.broadcast_to(prior, (b, hh, ww))

    def wmean(v: Any) -> Any:
        return (v * wgt).sum(axis=(1, 2))

    mean_l = wmean(lstar)
    clip_hi = wmean(hi)
    clip_lo = wmean(lo)
    p02, p98 = _weighted_quantiles(lstar.reshape(b, -1), wgt.reshape(b, -1), (0.02, 0.98))
    range_l = p98 - p02
    detail = lstar - _box_blur(lstar, max(1, min(hh, ww) // 16))
    contrast_l = xp.sqrt(wmean(detail**2))
    shadow_frac = wmean((lstar < 0.15).astype(xp.float32))
    cx = (wgt * (xp.arange(ww, dtype=xp.float32)[None, None, :] + 0.5)).sum(axis=(1, 2))
    left = (xp.arange(ww, dtype=xp.float32)[None, None, :] + 0.5) < cx[:, None, None]
    wl = wgt * left
    wr = wgt * ~left
    ml = (y * wl).sum(axis=(1, 2)) / xp.maximum(wl.sum(axis=(1, 2)), 1e-12)
    mr = (y * wr).sum(axis=(1, 2)) / xp.maximum(wr.sum(axis=(1, 2)), 1e-12)
    imbalance = xp.abs(ml - mr) / xp.maximum(ml + mr, 1e-6)

    p = params
    sub = {
        "exposure": xp.exp(-0.5 * ((mean_l - p.target_l) / p.exposure_width) ** 2),
        "clipping": xp.exp(-(clip_hi + 0.25 * clip_lo) / p.clip_scale),
        "range": _logistic(range_l, *p.range_mid),
        "contrast": _logistic(contrast_l, *p.contrast_mid),
        "shadow": 1.0 - _logistic(shadow_frac, *p.shadow_mid),
        "balance": xp.exp(-0.5 * (imbalance / p.balance_width) ** 2),
    }
    total_w = sum(WEIGHTS.values())
    log_score = sum(WEIGHTS[k] * xp.log(xp.clip(v, 1e-6, 1.0)) for k, v in sub.items()) / total_w
    raw = {"mean_l": mean_l, "clip_hi": clip_hi, "clip_lo": clip_lo, "range_l": range_l, "contrast_l": contrast_l,
           "shadow_frac": shadow_frac, "imbalance": imbalance}
    out = {f"photo_{k}": v for k, v in raw.items()}
    out.update({f"photo_{k}": v for k, v in sub.items()})
    out["photo_score"] = xp.exp(log_score)
    return {k: asnumpy(v).astype(np.float32) for k, v in out.items()}


def _to_xp_array(x: Any) -> Any:
    """NumPy/CuPy arrays pass through; a torch tensor goes to CuPy (CUDA, via DLPack) or NumPy (CPU, or CUDA
    without a usable CuPy: then the batch is copied to the host once, which is correct but slower)."""
    if type(x).__module__.startswith("torch"):
        if x.is_cuda and has_cupy():
            import cupy

            return cupy.from_dlpack(x.contiguous())
        if x.is_cuda:
            warn_once(log, "photometric scorer: CuPy unavailable, copying CUDA batches to the host")
        return x.detach().cpu().numpy()
    return x


def prior_masks(rgb_BHW3: Any, rows: list[int], work: int = 128) -> np.ndarray:
    """Subject-prior masks ``[B, H, W]`` (float32 0–1; zero rows outside ``rows``) from Haar faces + saliency."""
    import cv2

    from relight_stream.pipeline.subject_prior import subject_prior

    host = asnumpy(rgb_BHW3)
    b, h, w = host.shape[:3]
    out = np.zeros((b, h, w), np.float32)
    for i in rows:
        out[i] = cv2.resize(subject_prior(host[i], work=work).prob_hw, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


class PhotometricScoreStage(Stage):
    """Stage wrapper of :func:`photometric_scores`.

    Subject weights, first available: ``mask_BHW`` written by an upstream stage; the Haar-face + saliency prior
    of :mod:`relight_stream.pipeline.subject_prior` when ``subject="prior"``; the centre prior.
    """

    name = "photometric"
    reads = ("rgb_BHW3",)
    writes = tuple(f"{c}_B" for c in COLUMNS)

    def __init__(self, params: PhotometricParams | None = None, *, subject: str = "centre") -> None:
        if subject not in ("centre", "prior"):
            raise ValueError(f"photometric subject must be 'centre' or 'prior', got {subject!r}")
        self.params = params or PhotometricParams()
        self.subject = subject

    def describe(self) -> str:
        prior = "face+saliency prior" if self.subject == "prior" else "centre prior"
        return f"weight-free, numpy|cupy (follows the batch), mask_BHW or {prior}"

    def process(self, batch: SampleBatch) -> SampleBatch:
        rgb = batch["rgb_BHW3"]
        mask = batch.arrays.get("mask_BHW")
        n = len(batch)
        cols = {c: np.full(n, np.nan, dtype=np.float32) for c in COLUMNS}
        if isinstance(rgb, (list, tuple)):  # ragged batch: score one image at a time (mask or centre prior)
            groups = [([i], _to_xp_array(rgb[i])[None], None if mask is None else _to_xp_array(mask[i])[None])
                      for i in batch.kept()]
        else:
            arr = _to_xp_array(rgb)
            if mask is not None and tuple(mask.shape) != tuple(arr.shape[:3]):
                warn_once(log, f"photometric scorer: mask_BHW {tuple(mask.shape)} does not match rgb_BHW3 "
                               f"{tuple(arr.shape)}; using the {self.subject} prior instead")
                mask = None
            if mask is None and self.subject == "prior":
                mask = get_xp(arr).asarray(prior_masks(arr, list(batch.kept())))
            groups = [(list(range(n)), arr, None if mask is None else _to_xp_array(mask))]
        for idx, arr, msk in groups:
            if arr.shape[0] == 0:
                continue
            res = photometric_scores(arr, msk, params=self.params)
            for c in COLUMNS:
                cols[c][idx] = res[c]
        for c in COLUMNS:
            batch[f"{c}_B"] = cols[c]
        for i in list(batch.kept()):
            if not np.isfinite(cols["photo_score"][i]):
                batch.drop(i, f"{self.name}:nonfinite_output", failed=True)
                continue
            batch.meta[i].setdefault("scores", {}).update({c: float(cols[c][i]) for c in COLUMNS})
        return batch
