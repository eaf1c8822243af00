"""Diffuse light models: directional Lambert with ambient, light rigs, low-order spherical-harmonics environments.

Reads unit normals ``(H, W, 3)`` (camera frame: +x right, +y up, +z toward the viewer) and light parameters;
writes shading (irradiance / pi, i.e. what multiplies a linear albedo) as ``(H, W)`` or ``(H, W, 3)`` float32.

Units: a directional light of intensity ``I`` and linear colour ``c`` (luminance 1) gives ``I * c * max(0, n.l)``;
ambient gives its RGB value everywhere; an SH environment gives the Ramamoorthi & Hanrahan (2001) order-2
irradiance divided by pi, so a directional light projected to SH (``sh_from_directional``) gives the order-2
approximation of the same clamped cosine. Everything is linear in the lights (no clamping of sums).

Light direction convention (ARCHITECTURE.md §4): unit vector toward the light; azimuth 0° = from image right,
90° = from above, 180° = from left; elevation 90° = frontal (from the camera), 0° = grazing, negative = from
behind the subject (rim lights).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from relight_stream.kernels.ops import combine_maps, dot3
from relight_stream.kernels.xp import get_xp

# Ramamoorthi & Hanrahan: Y_lm normalisation constants and the clamped-cosine convolution A_l / pi.
_C0, _C1, _C2, _C3, _C4 = 0.282095, 0.488603, 1.092548, 0.315392, 0.546274
_A_OVER_PI = (1.0, 2.0 / 3.0, 1.0 / 4.0)


def light_direction(azimuth_deg: float, elevation_deg: float) -> list[float]:
    """Unit vector toward the light in the camera frame, from azimuth/elevation in degrees (JSON-able list)."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]


def direction_angles(direction: Any) -> tuple[float, float]:
    """Inverse of :func:`light_direction`: ``(azimuth, elevation)`` in degrees, azimuth in [0, 360)."""
    x, y, z = (float(v) for v in direction)
    n = math.sqrt(x * x + y * y + z * z)
    el = math.degrees(math.asin(max(-1.0, min(1.0, z / n))))
    az = math.degrees(math.atan2(y, x)) % 360.0
    return az, el


def n_dot_l(normals: Any, direction: Any) -> Any:
    """``n . l`` per pixel, ``(H, W)`` float32 (not clamped)."""
    return dot3(normals, direction)


def lambert(normals: Any, direction: Any) -> Any:
    """Lambertian cosine ``max(0, n . l)``, ``(H, W)`` float32."""
    xp = get_xp(normals)
    return xp.maximum(n_dot_l(normals, direction), np.float32(0.0))


def shade_directional(normals: Any, direction: Any, *, color: Any = (1.0, 1.0, 1.0), intensity: float = 1.0,
                      ambient: Any = (0.0, 0.0, 0.0), visibility: Any = None) -> Any:
    """RGB shading of one directional light plus ambient: ``ambient + I * c * max(0, n.l) * visibility``.

    Args:
        normals: ``(H, W, 3)`` unit normals.
        direction: Unit vector toward the light.
        color: Linear RGB colour of the light.
        intensity: Scalar multiplier.
        ambient: Linear RGB ambient term (already scaled).
        visibility: Optional ``(H, W)`` factor in [0, 1] (cast shadows, occluder patterns).

    Returns:
        ``(H, W, 3)`` float32 shading.
    """
    xp = get_xp(normals)
    cos = lambert(normals, direction)
    if visibility is not None:
        cos = cos * visibility
    rgb = xp.asarray(np.asarray(color, np.float32) * np.float32(intensity))
    amb = xp.asarray(np.asarray(ambient, np.float32))
    return (cos[..., None] * rgb + amb).astype(xp.float32, copy=False)


def sh_basis_maps(normals: Any) -> list[Any]:
    """The 9 real SH basis functions (order <= 2) at each normal, as separate ``(H, W)`` float32 maps.

    Order: Y00, Y1-1, Y10, Y11, Y2-2, Y2-1, Y20, Y21, Y22 (Ramamoorthi & Hanrahan's constants).
    """
    xp = get_xp(normals)
    x, y, z = (normals[..., i].astype(xp.float32) for i in range(3))
    f = np.float32
    return [xp.full_like(x, f(_C0)), f(_C1) * y, f(_C1) * z, f(_C1) * x, f(_C2) * x * y, f(_C2) * y * z,
            f(_C3) * (f(3) * z * z - f(1)), f(_C2) * x * z, f(_C4) * (x * x - y * y)]


def sh_basis(normals: Any) -> Any:
    """Real SH basis up to order 2 at each normal: ``(H, W, 9)`` float32 (order as :func:`sh_basis_maps`)."""
    return get_xp(normals).stack(sh_basis_maps(normals), axis=-1)


def _sh_weights() -> np.ndarray:
    return np.array([_A_OVER_PI[0]] + [_A_OVER_PI[1]] * 3 + [_A_OVER_PI[2]] * 5, np.float32)


def sh_irradiance_matrix(coeffs: Any) -> np.ndarray:
    """``(9, 3)`` matrix ``M`` with ``shade_sh(n, coeffs) == sh_basis(n) @ M`` (clamped-cosine weights applied)."""
    return (np.asarray(coeffs, np.float32).reshape(9, 3) * _sh_weights()[:, None]).astype(np.float32)


def shade_sh(normals: Any, coeffs: Any) -> Any:
    """Irradiance / pi of an order-2 SH environment ``coeffs`` (9 x 3 radiance coefficients): ``(H, W, 3)``."""
    return combine_maps(sh_basis_maps(normals), sh_irradiance_matrix(coeffs))


def sh_from_directional(direction: Any, color: Any = (1.0, 1.0, 1.0), intensity: float = 1.0) -> list[list[float]]:
    """SH coefficients (9 x 3) of a distant point light; ``shade_sh`` of them approximates ``I c max(0, n.l)``.

    A delta light of radiance ``E`` has ``L_lm = E * Y_lm(l)``; Lambert of it is ``E max(0, n.l)`` when
    ``E = pi * I`` under our irradiance/pi units.
    """
    y = sh_basis(np.asarray(direction, np.float32).reshape(1, 1, 3)).reshape(9)
    rgb = np.asarray(color, np.float32) * np.float32(intensity) * np.float32(math.pi)
    return (y[:, None] * rgb[None, :]).astype(float).tolist()


def sh_min_irradiance(coeffs: Any, num: int = 512) -> np.ndarray:
    """Minimum over the sphere (Fibonacci sampling) of the SH irradiance/pi, per channel: ``(3,)``."""
    i = np.arange(num) + 0.5
    z = 1 - 2 * i / num
    r = np.sqrt(1 - z * z)
    phi = math.pi * (1 + 5**0.5) * i
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], -1).astype(np.float32).reshape(1, num, 3)
    return shade_sh(dirs, coeffs).reshape(num, 3).min(0)


def sh_add_ambient(coeffs: Any, rgb: Any) -> list[list[float]]:
    """Add a constant irradiance/pi ``rgb`` to SH coefficients (the DC term only)."""
    c = np.asarray(coeffs, np.float64).reshape(9, 3).copy()
    c[0] += np.asarray(rgb, np.float64) / _C0  # A0/pi == 1
    return c.tolist()
