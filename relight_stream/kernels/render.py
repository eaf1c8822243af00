"""Render a relighting record: albedo x (ambient + SH + sum of lights) + speculars, all in linear RGB.

Reads linear albedo ``(H, W, 3)``, unit normals ``(H, W, 3)``, relative depth ``(H, W)`` (or None: no cast
shadows, no parallax), a mask (or None) and a record from ``lights.sample_relight``; writes ``(relit, shading)``
``(H, W, 3)`` float32 linear, *before* tone mapping (values may exceed 1; encode with ``color.tonemap`` then
``color.linear_to_srgb_u8``).

Per light: ``I * c * max(0, n.l) * V * T`` added to the shading, where ``V`` is the cast-shadow visibility
(``shadows.cast_shadow``) and ``T`` the occluder-pattern transmission (``patterns.pattern_transmission``); its
specular lobe times the same ``V * T`` and ``I * c`` is added to the image (not multiplied by the albedo). Every
term is linear in the lights, so ``render(L1 + L2) == render(L1) + render(L2)`` (``render_consistency_triplet``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relight_stream.kernels.color import srgb_to_linear
from relight_stream.kernels.lights import combine_lights
from relight_stream.kernels.normals import as_mask
from relight_stream.kernels.ops import combine_maps, expand3
from relight_stream.kernels.patterns import pattern_transmission
from relight_stream.kernels.shading import lambert, sh_basis_maps, sh_irradiance_matrix
from relight_stream.kernels.shadows import cast_shadow
from relight_stream.kernels.specular import specular
from relight_stream.kernels.xp import get_xp


def light_visibility(light: dict[str, Any], depth: Any, shape: tuple[int, int], *, depth_scale: float = 0.5,
                     xp: Any = np, fast: bool = True) -> Any:
    """``V * T`` of one light record: cast shadows and occluder pattern, ``(H, W)`` float32, or None when 1."""
    vis = None
    d = light["direction"]
    if light.get("cast_shadows") and depth is not None:
        vis = cast_shadow(depth, d, depth_scale=depth_scale, size_deg=light.get("size", 0.0), fast=fast)
    if light.get("pattern"):
        t = pattern_transmission(light["pattern"], shape, depth=depth, direction=d, depth_scale=depth_scale, xp=xp,
                                 fast=fast)
        vis = t if vis is None else vis * t
    return vis


def render_shading(normals: Any, depth: Any, params: dict[str, Any], *, mask: Any = None,
                   fast: bool = True) -> tuple[Any, Any]:
    """Diffuse shading ``(H, W, 3)`` and the specular image ``(H, W, 3)`` (or None) of a record.

    All terms are gathered as scalar maps with an RGB colour each and summed by ``ops.combine_maps`` (linear by
    construction). ``mask`` confines the speculars.
    """
    xp = get_xp(normals)
    h, w = normals.shape[:2]
    ds = float(params.get("depth_scale", 0.5))
    maps: list[Any] = [xp.ones((h, w), xp.float32)]
    cols: list[np.ndarray] = [np.asarray(params["ambient"]["rgb"], np.float32)]
    if params.get("sh") is not None:
        maps += sh_basis_maps(normals)
        cols += list(sh_irradiance_matrix(params["sh"]))
    spec_maps: list[Any] = []
    spec_cols: list[np.ndarray] = []
    m = None if mask is None else as_mask(mask)
    for light in params["lights"]:
        rgb = np.asarray(light["color"], np.float32) * np.float32(light["intensity"])
        vis = light_visibility(light, depth, (h, w), depth_scale=ds, xp=xp, fast=fast)
        cos = lambert(normals, light["direction"])
        maps.append(cos if vis is None else cos * vis)
        cols.append(rgb)
        sp = light.get("specular")
        if sp:
            s = specular(normals, light["direction"], model=sp["model"], roughness=sp["roughness"], f0=sp["f0"])
            s = s * np.float32(sp.get("strength", 1.0))
            if vis is not None:
                s = s * vis
            if m is not None:
                s = s * m
            spec_maps.append(s)
            spec_cols.append(rgb)
    shading = combine_maps(maps, cols)
    spec_img = combine_maps(spec_maps, spec_cols) if spec_maps else None
    return shading, spec_img


def render_relight(albedo: Any, normals: Any, depth: Any, mask: Any, params: dict[str, Any], *,
                   fast: bool = True) -> tuple[Any, Any]:
    """Relight one subject (module docstring).

    Args:
        albedo: ``(H, W, 3)`` linear albedo (e.g. from ``retinex.estimate_albedo``).
        normals: ``(H, W, 3)`` unit normals, camera frame.
        depth: ``(H, W)`` relative depth (larger = nearer) or None.
        mask: ``(H, W)`` foreground mask or None; speculars are confined to it (the background is composited
            away anyway, see :func:`composite`).
        params: Record from ``lights.sample_relight``.
        fast: Allow OpenCV on NumPy input.

    Returns:
        ``(relit, shading)``: ``relit = albedo * shading + speculars`` and the diffuse shading, both ``(H, W, 3)``
        float32 linear, not tone-mapped.
    """
    xp = get_xp(albedo)
    shading, spec_img = render_shading(normals, depth, params, mask=mask, fast=fast)
    relit = albedo * shading
    if spec_img is not None:
        relit += spec_img
    return relit.astype(xp.float32, copy=False), shading


def composite(fg_lin: Any, mask: Any, *, background_u8: int = 128) -> Any:
    """Alpha-composite a linear foreground onto the neutral sRGB grey (ARCHITECTURE.md §4), in linear light."""
    xp = get_xp(fg_lin)
    m = as_mask(mask)
    bg = np.float32(srgb_to_linear(np.asarray([background_u8], np.uint8))[0])
    out = fg_lin - bg
    out *= expand3(m.astype(xp.float32, copy=False))
    out += bg
    return out.astype(xp.float32, copy=False)


def render_consistency_triplet(albedo: Any, normals: Any, depth: Any, mask: Any, p1: dict[str, Any],
                               p2: dict[str, Any], *, fast: bool = True) -> tuple[Any, Any, Any]:
    """Render I(L1), I(L2) and I(L1 + L2) for one subject (light-transport linearity, IC-Light's consistency).

    The record of L1 + L2 is ``lights.combine_lights(p1, p2)`` (record it in ``meta.json`` with the images).

    Returns:
        ``(i1, i2, i12)``: linear ``(H, W, 3)`` images before tone mapping, ``i12 == i1 + i2`` up to float rounding.
    """
    p12 = combine_lights(p1, p2)
    i1, _ = render_relight(albedo, normals, depth, mask, p1, fast=fast)
    i2, _ = render_relight(albedo, normals, depth, mask, p2, fast=fast)
    i12, _ = render_relight(albedo, normals, depth, mask, p12, fast=fast)
    return i1, i2, i12
