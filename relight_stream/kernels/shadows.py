"""Cast shadows from a depth map by screen-space ray marching toward the light (hard, or soft by light size).

Reads relative depth ``(H, W)`` (larger = nearer, [0, 1] over the foreground) and a light direction (camera
frame, toward the light); writes visibility ``(H, W)`` float32 in [0, 1] (1 = lit) that multiplies that light's
direct term.

Method (a horizon-based height-field shadow): the depth becomes a height field ``z = depth * depth_scale`` in
image-side units (as in ``normals.py``). From every pixel we march along the light's image-plane direction and
keep the largest elevation angle of the height field seen from that pixel (the horizon toward the light). A light
whose elevation above the image plane is ``theta`` and whose angular radius is ``size`` is then visible for the
fraction ``clip((theta - horizon) / (2 size) + 1/2, 0, 1)`` of its disk: ``size -> 0`` gives hard shadows, larger
sizes give penumbrae that widen with the occluder distance, as real soft shadows do. The march is vectorised (one
shifted-array comparison per step) at a working resolution and the visibility is upsampled.

Limits: the screen-space height field has no thickness (everything behind a surface is solid), and lights from
behind the subject (elevation <= 0) or from the camera (elevation near 90°) cast no screen-space shadow here;
their attached shadows come from the Lambert term.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from relight_stream.kernels.filters import downsample, upsample, work_factor
from relight_stream.kernels.xp import get_xp


def cast_shadow(depth: Any, direction: Any, *, depth_scale: float = 0.5, size_deg: float = 0.0, work: int = 256,
                steps: int = 32, max_dist: float = 0.6, bias: float = 0.003, fast: bool = True) -> Any:
    """Visibility of a directional light over a depth map (module docstring).

    Args:
        depth: ``(H, W)`` relative depth, larger = nearer; background 0.
        direction: Unit vector toward the light.
        depth_scale: Depth extent of [0, 1] as a fraction of the image side (same as ``normals_from_depth``).
        size_deg: Angular radius of the light in degrees (0 = point light, hard shadows).
        work: Working resolution (longest side, px) of the march.
        steps: Number of march steps (spaced quadratically: dense near the pixel, sparse far away).
        max_dist: Longest march distance, in image-side units.
        bias: Height tolerance in image-side units (avoids self-shadowing acne on flat regions).

    Returns:
        ``(H, W)`` float32 visibility in [0, 1].
    """
    xp = get_xp(depth)
    h, w = depth.shape
    lx, ly, lz = (float(v) for v in direction)
    lxy = math.hypot(lx, ly)
    if lz <= 1e-3 or lxy < 1e-3 or math.degrees(math.atan2(lz, lxy)) > 89.0:
        return xp.ones((h, w), xp.float32)
    theta = math.atan2(lz, lxy)
    f = work_factor(max(h, w), work)
    z = downsample(depth.astype(xp.float32, copy=False), f, fast=fast) * np.float32(depth_scale)
    hs, ws = z.shape
    side = max(h, w) / f  # working pixels per image side
    ux, uy = lx / lxy, -ly / lxy  # image-plane direction in (col, row); rows run down
    max_px = max_dist * side
    # Pad with the background height (0) so shifted reads beyond the border see nothing.
    pad = int(math.ceil(max_px)) + 1
    zp = xp.pad(z, pad, constant_values=0.0)
    horizon = xp.full((hs, ws), -np.inf, dtype=xp.float32)
    seen = set()
    for k in range(1, steps + 1):
        t_px = max(1.0, max_px * (k / steps) ** 2)
        dc, dr = int(round(ux * t_px)), int(round(uy * t_px))
        if (dc, dr) in seen or (dc == 0 and dr == 0):
            continue
        seen.add((dc, dr))
        dist = math.hypot(dc, dr) / side
        shifted = zp[pad + dr: pad + dr + hs, pad + dc: pad + dc + ws]
        slope = (shifted - z - np.float32(bias)) * np.float32(1.0 / dist)
        horizon = xp.maximum(horizon, slope)
    horizon_angle = xp.arctan(horizon)
    rad = max(math.radians(size_deg), math.radians(0.25))  # at least a quarter degree: sub-pixel antialiasing
    vis = xp.clip((np.float32(theta) - horizon_angle) * np.float32(0.5 / rad) + np.float32(0.5), 0.0, 1.0)
    vis = vis.astype(xp.float32)
    if f > 1:
        vis = upsample(vis, (h, w), f, fast=fast)
    return vis
