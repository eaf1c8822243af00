"""Specular reflection: normalised Blinn-Phong and GGX (Cook-Torrance) for a distant light and an orthographic camera.

Reads unit normals ``(H, W, 3)`` (camera frame) and a light direction; writes ``(H, W)`` float32 specular radiance
per unit light intensity, in the same units as the diffuse shading of ``shading.py`` (a white Lambertian albedo of
1 under the same light gives ``max(0, n.l)``). The view vector is ``v = (0, 0, 1)`` (toward the camera). The
result is *added* to ``albedo * shading`` (dielectric highlights keep the light's colour, not the albedo's).

Roughness is the perceptual roughness r in [0, 1]; alpha = r² (Burley/Disney). GGX uses the Smith-Schlick
geometry term (k = alpha / 2) and Schlick Fresnel with ``f0`` (0.04 for common dielectrics, ~0.028 for skin);
Blinn-Phong uses the energy-normalised lobe ``(s + 8) / (8 pi) (n.h)^s`` with ``s = 2 / alpha² - 2`` and the same
Fresnel, so both models give highlights of similar size and energy for the same roughness.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from relight_stream.kernels.ops import dot3
from relight_stream.kernels.xp import get_xp

MODELS = ("blinn_phong", "ggx")


def _half_vector(direction: Any) -> tuple[np.ndarray, float]:
    l = np.asarray(direction, np.float64)
    l = l / np.linalg.norm(l)
    h = l + np.array([0.0, 0.0, 1.0])
    nh = np.linalg.norm(h)
    h = h / nh if nh > 1e-9 else np.array([0.0, 0.0, 1.0])
    v_dot_h = float(h[2])
    return h.astype(np.float32), v_dot_h


def _dot(normals: Any, v: Any) -> Any:
    return dot3(normals, [float(c) for c in v])


def specular(normals: Any, direction: Any, *, model: str = "ggx", roughness: float = 0.4, f0: float = 0.04) -> Any:
    """Specular term ``pi * f_spec(n, l, v) * max(0, n.l)`` per unit light intensity, ``(H, W)`` float32.

    Args:
        normals: ``(H, W, 3)`` unit normals.
        direction: Unit vector toward the light.
        model: ``ggx`` or ``blinn_phong``.
        roughness: Perceptual roughness in (0, 1]; clamped to >= 0.03.
        f0: Fresnel reflectance at normal incidence.
    """
    if model not in MODELS:
        raise ValueError(f"unknown specular model {model!r}; choose one of {MODELS}")
    xp = get_xp(normals)
    l = np.asarray(direction, np.float64)
    l = l / np.linalg.norm(l)
    h, v_dot_h = _half_vector(l)
    alpha = max(float(roughness), 0.03) ** 2
    fresnel = f0 + (1.0 - f0) * (1.0 - v_dot_h) ** 5
    n_l = xp.maximum(_dot(normals, l), np.float32(0.0))
    n_h = xp.maximum(_dot(normals, h), np.float32(0.0))
    n_v = xp.maximum(normals[..., 2], np.float32(1e-4))
    if model == "ggx":
        a2 = np.float32(alpha * alpha)
        d = a2 / (np.float32(math.pi) * (n_h * n_h * (a2 - 1) + 1) ** 2)
        k = np.float32(alpha / 2.0)
        g = (n_l / (n_l * (1 - k) + k)) * (n_v / (n_v * (1 - k) + k))
        # pi * D F G / (4 n.l n.v) * n.l  ==  pi * D F G / (4 n.v)
        out = np.float32(math.pi * fresnel / 4.0) * d * g / n_v
    else:
        s = max(2.0 / (alpha * alpha) - 2.0, 1.0)
        norm = (s + 8.0) / (8.0 * math.pi)
        lobe = xp.exp(np.float32(s) * xp.log(xp.maximum(n_h, np.float32(1e-30))))  # (n.h)^s
        out = np.float32(math.pi * norm * fresnel) * lobe * n_l
    return xp.where(n_l > 0, out, np.float32(0.0)).astype(xp.float32, copy=False)
