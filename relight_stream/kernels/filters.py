"""Resampling and blurs written against ``xp``, with an OpenCV fast path on the NumPy side.

Reads and writes float32 images ``(H, W)`` or ``(H, W, C)`` (single images; spatial axes first). Sigmas are in
pixels of the given array; callers convert from fractions of the image side.

Large Gaussian blurs never run a wide kernel: ``gaussian_blur`` box-downsamples by a power of two until sigma is
2-4 px, blurs there with a short separable kernel and upsamples bilinearly, solving for the residual sigma so that
box + Gaussian + bilinear tent variances add up to the requested one (FACTS.md §4: 1/8 resolution blur, ~40 ms
instead of ~2 s for sigma = 250 px at 1024²). On NumPy the primitives go through OpenCV (``cv2.resize``,
``cv2.sepFilter2D``); the pure-``xp`` path (used on CuPy, and on NumPy with ``fast=False``) computes the same
values: tests compare the two on the CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from relight_stream.kernels.xp import get_xp

try:  # OpenCV is a hard dependency of the package, but the kernels stay importable without it.
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

#: Below this sigma (px) the blur runs at full resolution; above, on a box-downsampled copy.
DIRECT_SIGMA = 3.0


def _use_cv2(x: Any, fast: bool) -> bool:
    from relight_stream.kernels import ops

    return (fast and not ops.GENERIC and cv2 is not None and isinstance(x, np.ndarray)
            and (x.ndim == 2 or x.shape[2] <= 4))


def gaussian_taps(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, radius ceil(3 sigma) (OpenCV's getGaussianKernel for the same size)."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _conv1d(x: Any, taps: np.ndarray, axis: int) -> Any:
    xp = get_xp(x)
    if xp is not np:  # pragma: no cover - GPU only: one fused kernel instead of one launch per tap
        from cupyx.scipy import ndimage as cnd

        return cnd.correlate1d(x, xp.asarray(taps), axis=axis, mode="reflect")  # SciPy "reflect" == symmetric pad
    r = len(taps) // 2
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xpad = xp.pad(x, pad, mode="symmetric")  # == OpenCV BORDER_REFLECT, SciPy mode="reflect"
    out = None
    for i, w in enumerate(taps.tolist()):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(i, i + n)
        term = xpad[tuple(sl)] * np.float32(w)
        out = term if out is None else out + term
    return out


def _blur_direct(x: Any, sigma: float, fast: bool) -> Any:
    if sigma <= 0.05:
        return x
    taps = gaussian_taps(sigma)
    if _use_cv2(x, fast) and min(x.shape[:2]) > len(taps) // 2:
        k = cv2.getGaussianKernel(len(taps), sigma, cv2.CV_32F)
        return cv2.sepFilter2D(x, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT)
    return _conv1d(_conv1d(x, taps, 0), taps, 1)


def downsample(x: Any, factor: int, *, fast: bool = True) -> Any:
    """Box-average by an integer ``factor`` (edges mirrored up to a multiple of it): output ceil(H/f) x ceil(W/f)."""
    if factor <= 1:
        return x
    xp = get_xp(x)
    h, w = x.shape[:2]
    hh, ww = -(-h // factor), -(-w // factor)
    if hh * factor != h or ww * factor != w:
        pad = [(0, hh * factor - h), (0, ww * factor - w)] + [(0, 0)] * (x.ndim - 2)
        x = xp.pad(x, pad, mode="symmetric")
    if _use_cv2(x, fast):
        return cv2.resize(x, (ww, hh), interpolation=cv2.INTER_AREA)
    return x.reshape(hh, factor, ww, factor, *x.shape[2:]).mean(axis=(1, 3), dtype=xp.float32)


def _linear_index(n_out: int, n_in: int, xp, scale: float | None = None) -> tuple[Any, Any, Any]:
    s = n_in / n_out if scale is None else scale
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * s - 0.5
    src = np.clip(src, 0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).astype(np.float32)
    return xp.asarray(i0), xp.asarray(i1), xp.asarray(w)


def resize_bilinear(x: Any, size: tuple[int, int], *, fast: bool = True, factor: int | None = None,
                    crop_from: tuple[int, int] | None = None) -> Any:
    """Bilinear resize with half-pixel centres (OpenCV INTER_LINEAR / torch ``align_corners=False``).

    Args:
        x: ``(h, w)`` or ``(h, w, C)`` float32.
        size: Output ``(H, W)``.
        factor: When ``x`` was made by ``downsample(X, factor)``, the exact upsampling factor (the edge cells
            padded by ``downsample`` are then cropped instead of stretched); None = scale by the size ratio.
        crop_from: Older spelling: the ``(H0, W0)`` that was downsampled; the factor is inferred from it as
            ``ceil(max(H0, W0) / max(h, w))`` (prefer ``factor``, or :func:`upsample`).
    """
    if crop_from is not None and factor is None:
        factor = -(-max(crop_from) // max(x.shape[:2]))
    xp = get_xp(x)
    h_out, w_out = size
    h_in, w_in = x.shape[:2]
    if (h_in, w_in) == (h_out, w_out) and factor in (None, 1):
        return x
    sy = sx = None if factor is None else 1.0 / factor
    if _use_cv2(x, fast) and factor is None:
        return cv2.resize(x, (w_out, h_out), interpolation=cv2.INTER_LINEAR)
    i0, i1, wy = _linear_index(h_out, h_in, xp, sy)
    shape = (-1,) + (1,) * (x.ndim - 1)
    wy = wy.reshape(shape)
    rows = x[i0] * (1 - wy) + x[i1] * wy
    j0, j1, wx = _linear_index(w_out, w_in, xp, sx)
    wx = wx.reshape((1, -1) + (1,) * (x.ndim - 2))
    return (rows[:, j0] * (1 - wx) + rows[:, j1] * wx).astype(xp.float32, copy=False)


def work_factor(side: int, work: int) -> int:
    """Smallest power-of-two downsampling factor that brings ``side`` pixels to at most ``work``."""
    f = 1
    while side / f > work:
        f *= 2
    return f


def upsample(x: Any, size: tuple[int, int], factor: int, *, fast: bool = True) -> Any:
    """Bilinear inverse of ``downsample(X, factor)`` back to ``size`` = X's ``(H, W)`` (exact scale ``factor``)."""
    if factor == 1 and tuple(x.shape[:2]) == tuple(size):
        return x
    exact = x.shape[0] * factor == size[0] and x.shape[1] * factor == size[1]
    return resize_bilinear(x, size, fast=fast, factor=None if exact else factor)


def pyramid_factor(sigma: float) -> int:
    """Power-of-two downsampling factor used for a blur of ``sigma`` px (1 = full resolution)."""
    if sigma <= DIRECT_SIGMA:
        return 1
    return 2 ** max(0, int(math.floor(math.log2(sigma / 2.0))))


def gaussian_blur(x: Any, sigma: float, *, fast: bool = True) -> Any:
    """Gaussian blur of ``sigma`` px (mirrored borders, SciPy ``mode="reflect"``); large sigmas on a box pyramid.

    Args:
        x: ``(H, W)`` or ``(H, W, C)`` float32, NumPy or CuPy.
        sigma: Standard deviation in pixels of ``x``.
        fast: Allow the OpenCV path for NumPy arrays.
    """
    x = x.astype(np.float32, copy=False) if isinstance(x, np.ndarray) else x.astype(get_xp(x).float32, copy=False)
    f = pyramid_factor(sigma)
    if f == 1:
        return _blur_direct(x, sigma, fast)
    h, w = x.shape[:2]
    small = downsample(x, f, fast=fast)
    # variances (in full-res px²): box f²/12 - 1/12, bilinear tent f²/6; the rest comes from the small blur.
    resid = max(sigma**2 - (f * f - 1) / 12.0 - f * f / 6.0, 0.25 * f * f)
    small = _blur_direct(small, math.sqrt(resid) / f, fast)
    return upsample(small, (h, w), f, fast=fast)


def masked_blur(x: Any, mask: Any, sigma: float, *, fast: bool = True, eps: float = 1e-4) -> Any:
    """Normalised convolution: blur of ``x`` using only pixels where ``mask`` (0-1, ``(H, W)``) is set.

    Background values do not leak into the foreground; where the mask has no support nearby the result is
    ``eps``-regularised towards 0.
    """
    xp = get_xp(x)
    m = mask.astype(xp.float32, copy=False)
    mx = x * (m[..., None] if x.ndim == 3 else m)
    num = gaussian_blur(mx, sigma, fast=fast)
    den = gaussian_blur(m, sigma, fast=fast)
    den = xp.maximum(den, eps)
    return num / (den[..., None] if x.ndim == 3 else den)


def masked_blur_multi(x: Any, mask: Any, sigmas: list[float], *, fast: bool = True, eps: float = 1e-4) -> Any:
    """Mean over ``sigmas`` (px) of :func:`masked_blur` of a 2-D ``x``, computed on one shared pyramid level.

    ``x * mask`` and ``mask`` are box-downsampled once by the factor of the smallest sigma; every blur runs there
    (residual sigmas account for the box and the final bilinear upsampling) and only the mean is upsampled.
    """
    xp = get_xp(x)
    h, w = x.shape[:2]
    m = mask.astype(xp.float32, copy=False)
    f = pyramid_factor(min(sigmas))
    if f == 1:
        acc = None
        for s in sigmas:
            b = masked_blur(x, m, s, fast=fast, eps=eps)
            acc = b if acc is None else acc + b
        return acc / np.float32(len(sigmas))
    sx, sm = downsample(x * m, f, fast=fast), downsample(m, f, fast=fast)
    acc = None
    for s in sigmas:
        resid = math.sqrt(max(s * s - (f * f - 1) / 12.0 - f * f / 6.0, 0.25 * f * f)) / f
        b = gaussian_blur(sx, resid, fast=fast) / xp.maximum(gaussian_blur(sm, resid, fast=fast), np.float32(eps))
        acc = b if acc is None else acc + b
    acc = acc / np.float32(len(sigmas))
    return upsample(acc, (h, w), f, fast=fast)


def box_sum(x: Any, r: int) -> Any:
    """Sum over a (2r+1)² window, edge windows clipped to the image (integral image; O(1) per pixel)."""
    xp = get_xp(x)
    h, w = x.shape[:2]
    c = xp.cumsum(xp.cumsum(x.astype(xp.float64, copy=False), axis=0), axis=1)
    c = xp.pad(c, [(1, 0), (1, 0)] + [(0, 0)] * (x.ndim - 2))
    y0 = np.clip(np.arange(h) - r, 0, h)
    y1 = np.clip(np.arange(h) + r + 1, 0, h)
    x0 = np.clip(np.arange(w) - r, 0, w)
    x1 = np.clip(np.arange(w) + r + 1, 0, w)
    y0, y1, x0, x1 = (xp.asarray(a) for a in (y0, y1, x0, x1))
    s = c[y1][:, x1] - c[y0][:, x1] - c[y1][:, x0] + c[y0][:, x0]
    return s.astype(xp.float32)
