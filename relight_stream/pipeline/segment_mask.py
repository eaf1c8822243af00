"""Masks for the segment stage: GrabCut seeded by a subject prior, clean-up, the full-resolution soft matte, and
the plausibility verdict every backend's mask must pass (``empty_mask``, ``implausible_mask``,
``indecisive_mask``). Reads and writes NumPy arrays only (float32 0–1 masks, uint8 sRGB photos).
"""

from __future__ import annotations

import cv2
import numpy as np

from relight_stream.config import SegmentConfig

MAX_COMPONENTS = 12
MAX_BORDER_FRACTION = 0.75
MIN_SCATTERED_SOLIDITY = 0.4
"""A mask whose largest piece is under 65 % of its area must fill at least this much of its convex hull (eyes and a
nose of a close-up cat fail; two people side by side pass)."""
MAX_UNCERTAIN = 0.5
"""Largest share of a mask's support that may be neither background nor subject (see :func:`plausibility`)."""
MAX_FILL_BORDER_FRACTION = 0.95
"""Border limit for a frame-filling subject (see :func:`fill_from_fragments`): it may touch most of the border."""


def guided_filter(guide_hw: np.ndarray, src_hw: np.ndarray, *, radius: int, eps: float,
                  full_guide: np.ndarray | None = None) -> np.ndarray:
    """Edge-preserving smoothing of ``src`` steered by ``guide`` (both float32 0–1, same shape).

    ``full_guide``: the guide at a higher resolution. The filter's linear coefficients, smooth by construction, are
    then upsampled and applied to it (the fast guided filter, He & Sun 2015), so the output has ``full_guide``'s
    shape and follows its edges at full resolution for the cost of a filter at ``guide``'s.
    """
    k = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide_hw), box(src_hw)
    cov_ip = box(guide_hw * src_hw) - mean_i * mean_p
    var_i = box(guide_hw * guide_hw) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    if full_guide is None or full_guide.shape == guide_hw.shape:
        return box(a) * (guide_hw if full_guide is None else full_guide) + box(b)
    H, W = full_guide.shape

    def up(x: np.ndarray) -> np.ndarray:
        return cv2.resize(box(x), (W, H), interpolation=cv2.INTER_LINEAR)

    return up(a) * full_guide + up(b)


def soft_matte(rgb_HW3: np.ndarray, hard_hw: np.ndarray) -> np.ndarray:
    """Full-resolution soft matte (float32 0–1) from a low-resolution hard mask and the sRGB photo."""
    H, W = rgb_HW3.shape[:2]
    # The filter runs at up to 512² (enough for a few-pixel soft edge); above that its coefficients are applied
    # to the full-resolution photo, so the edge still follows the photo's own pixels.
    g = min(1.0, 512 / max(H, W))
    gh, gw = max(8, int(round(H * g))), max(8, int(round(W * g)))
    src = cv2.resize(hard_hw.astype(np.float32), (gw, gh), interpolation=cv2.INTER_LINEAR)
    gray = cv2.cvtColor(rgb_HW3, cv2.COLOR_RGB2GRAY)
    guide = gray if (gh, gw) == (H, W) else cv2.resize(gray, (gw, gh), interpolation=cv2.INTER_AREA)
    alpha = guided_filter(guide.astype(np.float32) / 255.0, src, radius=max(2, gw // 96), eps=2e-3,
                          full_guide=gray.astype(np.float32) / 255.0)
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

    ``uncertain`` is the share of the mask's support (p > 0.1) where 0.3 < p < 0.7: a matte passes through that
    band only at its edges (classical masks: <= 0.16 at 64², small subjects included), while a model that cannot
    tell subject from background (untrained or wrong weights) answers p ≈ 0.5 everywhere (1.0); above
    :data:`MAX_UNCERTAIN` the mask is ``indecisive_mask``.

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
    uncertain = float((support & (small > 0.3) & (small < 0.7)).sum() / max(1, support.sum()))
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
