"""Surface normals: from relative depth (resolution-independent), and weight-free from a mask (inflation).

Reads depth ``(H, W)`` (relative, larger = nearer, [0, 1] over the foreground), masks ``(H, W)`` (0-1 float or
0-255 uint8) and optionally linear RGB ``(H, W, 3)``; writes unit normals ``(H, W, 3)`` float32 in the camera
frame (+x right, +y up, +z toward the viewer; pixel rows run *down*, so row index increasing = -y).

Scale: heights are measured in units of the image side (``max(H, W)`` pixels = 1). A depth map becomes a height
field ``z = depth * depth_scale`` (``depth_scale`` = the foreground's depth extent as a fraction of the image side),
so gradients are taken per unit of image side and the same scene at 512² and 1024² gives the same normals —
unlike the reference, which took ``np.gradient`` per pixel (46° mean tilt at 512, 29° at 1024, FACTS.md §1).

Mask inflation (classical backend, after Johnston's "Lumo"): solve the Poisson problem ``lap h = -4`` inside the
silhouette with ``h = 0`` outside, then take ``z = sqrt(h)``. For a disk of radius R this is exactly the hemisphere
``sqrt(R² - r²)``; elongated shapes get a profile that follows their local width. The solve is coarse-to-fine
Jacobi at a small working resolution (vectorised, a few ms), upsampled before the square root.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from relight_stream.kernels.color import luminance
from relight_stream.kernels.filters import downsample, masked_blur, resize_bilinear, upsample, work_factor
from relight_stream.kernels.xp import get_xp

log = logging.getLogger(__name__)


def as_mask(mask: Any, shape: tuple[int, int] | None = None) -> Any:
    """A float32 0-1 mask from uint8 0-255, bool or float input; all-ones when ``mask`` is None."""
    if mask is None:
        assert shape is not None
        return np.ones(shape, np.float32)
    xp = get_xp(mask)
    if mask.dtype == np.uint8:
        return mask.astype(xp.float32) / 255.0
    return mask.astype(xp.float32, copy=False)


def _masked_diff(h: Any, valid: Any, axis: int) -> Any:
    """Derivative along ``axis`` per pixel, averaging forward/backward differences whose both ends are valid."""
    xp = get_xp(h)

    def sl(lo: int | None, hi: int | None) -> tuple[slice, ...]:
        return (slice(lo, hi), slice(None)) if axis == 0 else (slice(None), slice(lo, hi))

    v = xp.logical_and(valid[sl(1, None)], valid[sl(None, -1)]).astype(xp.float32)
    dv = (h[sl(1, None)] - h[sl(None, -1)]) * v
    num = xp.zeros_like(h)
    cnt = xp.zeros_like(h)
    num[sl(1, None)] += dv  # backward difference at i
    num[sl(None, -1)] += dv  # forward difference at i
    cnt[sl(1, None)] += v
    cnt[sl(None, -1)] += v
    return num / xp.maximum(cnt, np.float32(1.0))


def normals_from_height(height: Any, mask: Any = None) -> Any:
    """Unit normals of a height field ``z(x, y)`` given in units of the image side.

    Args:
        height: ``(H, W)`` float, larger = nearer the viewer, in image-side units.
        mask: Optional ``(H, W)`` foreground mask; gradients never straddle its edge (> 0.5) and normals outside
            it are ``(0, 0, 1)``.

    Returns:
        ``(H, W, 3)`` float32 unit normals, camera frame.
    """
    xp = get_xp(height)
    h = height.astype(xp.float32, copy=False)
    side = float(max(h.shape))
    valid = xp.ones(h.shape, bool) if mask is None else as_mask(mask) > 0.5
    gx = _masked_diff(h, valid, 1) * side  # dz/dx, x to the right
    grow = _masked_diff(h, valid, 0) * side  # dz/d(row); y is up, so dz/dy = -grow
    if mask is not None:  # outside the mask the normal is (0, 0, 1)
        gx *= valid
        grow *= valid
    inv = np.float32(1.0) / xp.sqrt(gx * gx + grow * grow + np.float32(1.0))
    return xp.stack([-gx * inv, grow * inv, inv], axis=-1).astype(xp.float32, copy=False)


def normals_from_depth(depth: Any, mask: Any = None, *, depth_scale: float = 0.5, smooth: float = 0.0) -> Any:
    """Normals from relative depth with resolution-independent scaling (module docstring).

    Args:
        depth: ``(H, W)`` relative depth, larger = nearer, [0, 1] over the foreground.
        mask: Optional foreground mask (see :func:`normals_from_height`).
        depth_scale: Depth extent of the [0, 1] range as a fraction of the image side.
        smooth: Optional pre-smoothing, Gaussian sigma as a fraction of the image side (masked: the background
            does not bleed in).
    """
    xp = get_xp(depth)
    z = depth.astype(xp.float32) * np.float32(depth_scale)
    if smooth > 0:
        m = as_mask(mask, z.shape) if mask is not None else xp.ones(z.shape, xp.float32)
        z = masked_blur(z, m, smooth * max(z.shape))
    return normals_from_height(z, mask)


def _jacobi(h: Any, inside: Any, iters: int, delta2: float) -> Any:
    """Jacobi sweeps for ``lap h = -4`` (spacing² ``delta2``): h = 0 outside the mask, mirrored at the frame.

    The frame is a Neumann border, so a subject cut by the image edge (a torso at the bottom) keeps bulging out
    of the frame instead of being pinned to zero there.
    """
    xp = get_xp(h)
    buf = xp.pad(h, 1, mode="edge")
    core = buf[1:-1, 1:-1]
    for _ in range(iters):
        new = buf[:-2, 1:-1] + buf[2:, 1:-1]
        new += buf[1:-1, :-2]
        new += buf[1:-1, 2:]
        new *= np.float32(0.25)
        new += np.float32(delta2)
        new *= inside
        core[...] = new
        buf[0, :], buf[-1, :] = buf[1, :], buf[-2, :]
        buf[:, 0], buf[:, -1] = buf[:, 1], buf[:, -2]
    return core.copy()


def inflate_mask(mask: Any, *, work: int = 160, iters: int = 30) -> Any:
    """Height field (image-side units) that inflates the silhouette: ``sqrt`` of a Poisson solution.

    Args:
        mask: ``(H, W)`` foreground mask (uint8 0-255 or float 0-1; > 0.5 is inside).
        work: Working resolution (longest side, px) of the solve.
        iters: Jacobi iterations per pyramid level (the coarsest, <= 16 px, gets 5x as many).

    Returns:
        ``(H, W)`` float32 height, 0 outside the mask; a disk of radius R gives ``sqrt(R² - r²)``.
    """
    xp = get_xp(mask)
    m = as_mask(mask)
    hgt, wid = m.shape
    f = work_factor(max(hgt, wid), work)
    levels = [(downsample(m, f), f)]
    while min(levels[-1][0].shape) > 16:
        levels.append((downsample(levels[-1][0], 2), levels[-1][1] * 2))
    h = None
    for li, (lev, fac) in enumerate(reversed(levels)):
        inside = (lev > 0.5).astype(xp.float32)
        side = max(hgt, wid) / fac  # pixels of this level per image side
        h = xp.zeros_like(inside) if h is None else resize_bilinear(h, inside.shape) * inside
        h = _jacobi(h, inside, iters * (5 if li == 0 else 1), 1.0 / side**2)
    h_full = upsample(h, (hgt, wid), f)
    return (xp.sqrt(xp.maximum(h_full, 0.0)) * (m > 0.5)).astype(xp.float32)


def normals_from_mask(mask: Any, lin: Any = None, *, detail: float = 0.15, work: int = 160,
                      detail_sigma: float = 0.01, return_scale: bool = False) -> tuple[Any, ...]:
    """Weight-free geometry for the classical backend: inflated silhouette plus optional luminance detail.

    Args:
        mask: ``(H, W)`` foreground mask.
        lin: Optional ``(H, W, 3)`` linear RGB; its high-passed log-luminance (brighter = nearer, the usual
            shape-from-shading prior) is added to the height with weight ``detail``.
        detail: Weight of the luminance detail (0 disables it).
        work: Working resolution of the inflation solve.
        detail_sigma: High-pass scale, as a fraction of the image side.
        return_scale: Also return ``depth_scale`` (the height extent in image-side units), the value to record
            and pass to ``shadows.cast_shadow`` / the relight record so cast shadows have the true length.

    Returns:
        ``(depth, normals)`` or ``(depth, normals, depth_scale)``: depth ``(H, W)`` normalised to [0, 1] over the
        foreground (larger = nearer) and unit normals ``(H, W, 3)`` computed from the height in image-side units
        (so they keep the true scale).
    """
    xp = get_xp(mask)
    m = as_mask(mask)
    z = inflate_mask(m, work=work)
    if lin is not None and detail > 0:
        side = max(m.shape)
        logl = xp.log(luminance(lin) + 1e-3)
        inside = (m > 0.5).astype(xp.float32)
        hp = (logl - masked_blur(logl, inside, detail_sigma * side)) * inside
        z = z + np.float32(detail * detail_sigma * 2.0) * hp
    normals = normals_from_height(z, m)
    zmax = float(z.max()) if z.size else 0.0
    depth = xp.clip(z / zmax, 0.0, 1.0) if zmax > 0 else xp.zeros_like(z)
    if return_scale:
        return depth.astype(xp.float32), normals, zmax
    return depth.astype(xp.float32), normals


def normals_to_u8(normals: Any) -> Any:
    """Encode unit normals as ``(n + 1) / 2 * 255`` uint8 (``normals.png``)."""
    xp = get_xp(normals)
    return xp.clip(xp.round((normals + 1.0) * 127.5), 0, 255).astype(xp.uint8)


def normals_from_u8(img: Any) -> Any:
    """Decode ``normals.png`` values back to unit vectors (renormalised)."""
    xp = get_xp(img)
    n = img.astype(xp.float32) * np.float32(1 / 127.5) - np.float32(1.0)
    norm = xp.sqrt(n[..., 0] ** 2 + n[..., 1] ** 2 + n[..., 2] ** 2)
    return n / xp.maximum(norm, np.float32(1e-6))[..., None]
