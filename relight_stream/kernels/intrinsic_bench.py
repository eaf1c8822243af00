"""Procedural intrinsic-image benchmark with exact ground truth, and the MIT Intrinsic Images LMSE metric.

Writes scenes ``{"image", "albedo", "shading", "specular", "mask", "depth", "normals", "record"}`` (NumPy,
linear float32; ``image = albedo * shading + specular`` exactly, shading grey) from analytic height fields —
spheres, blocks on a ground plane, a wavy terrain and a face-like head (ellipsoid + nose, eye sockets, brows,
lips, cheeks) — with textured albedo (coloured cells, stripes, checks, skin with features), one white directional
light plus ambient, cast shadows from ``shadows.cast_shadow`` and optional GGX speculars. Geometry is made in
image-side units (resolution-independent); every random choice comes from ``numpy.random.default_rng(seed)``.

Metric (Grosse, Johnson, Adelson & Freeman, ICCV 2009): local scale-invariant MSE over 20x20 windows with step
10, each window's estimate rescaled by its least-squares factor, summed errors normalised by the summed squared
ground truth; the score is half the albedo LMSE plus half the shading LMSE, computed on grey (channel mean)
images inside the mask. Window sums use integral images, so it is exact and fast (tests compare it with the
reference loop).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from relight_stream.kernels.normals import normals_from_height
from relight_stream.kernels.patterns import _hash, fbm
from relight_stream.kernels.shading import lambert, light_direction
from relight_stream.kernels.shadows import cast_shadow
from relight_stream.kernels.specular import specular

SCENES = ("sphere", "spheres", "blocks", "terrain", "face", "face_specular")


# -------------------------------------------------------------------------------------------------- metric


def _window_sums(a: np.ndarray, win: int, step: int) -> np.ndarray:
    c = np.pad(np.cumsum(np.cumsum(a, 0), 1), ((1, 0), (1, 0)))
    i = np.arange(0, a.shape[0] - win + 1, step)
    j = np.arange(0, a.shape[1] - win + 1, step)
    return c[i + win][:, j + win] - c[i][:, j + win] - c[i + win][:, j] + c[i][:, j]


def local_error(correct: np.ndarray, estimate: np.ndarray, mask: np.ndarray, window: int = 20,
                step: int = 10) -> float:
    """Scale-invariant local MSE of ``estimate`` vs ``correct`` (2-D grey arrays), normalised (MIT ``local_error``)."""
    x = estimate.astype(np.float64)
    y = correct.astype(np.float64)
    m = (mask > 0.5).astype(np.float64)
    sxy = _window_sums(m * x * y, window, step)
    sxx = _window_sums(m * x * x, window, step)
    syy = _window_sums(m * y * y, window, step)
    alpha = np.where(sxx > 1e-5, sxy / np.maximum(sxx, 1e-300), 0.0)
    ssq = syy - 2 * alpha * sxy + alpha * alpha * sxx
    total = syy.sum()
    return float(np.maximum(ssq, 0).sum() / total) if total > 0 else 0.0


def _grey(a: np.ndarray) -> np.ndarray:
    return a.mean(-1) if a.ndim == 3 else a


def lmse(true_albedo: np.ndarray, true_shading: np.ndarray, est_albedo: np.ndarray, est_shading: np.ndarray,
         mask: np.ndarray, window: int = 20) -> dict[str, float]:
    """MIT score: ``{"lmse": 0.5 albedo + 0.5 shading, "albedo": ..., "shading": ...}`` on grey images."""
    ea = local_error(_grey(true_albedo), _grey(est_albedo), mask, window, window // 2)
    es = local_error(_grey(true_shading), _grey(est_shading), mask, window, window // 2)
    return {"lmse": 0.5 * ea + 0.5 * es, "albedo": ea, "shading": es}


# -------------------------------------------------------------------------------------------------- scenes


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(n) + 0.5) / n - 0.5
    return np.meshgrid(c, -c)  # x right, y up, image-side units


def _cells_albedo(x, y, rng, cell=0.12, lo=0.15, hi=0.85):
    seed = int(rng.integers(1 << 30))
    ix, iy = np.floor(x / cell).astype(np.int64), np.floor(y / cell).astype(np.int64)
    return np.stack([lo + (hi - lo) * _hash(ix, iy, seed, k) for k in range(3)], -1)


def _stripes_albedo(x, y, rng):
    a, b = rng.uniform(0.15, 0.85, 3), rng.uniform(0.15, 0.85, 3)
    ang, per = rng.uniform(0, math.pi), rng.uniform(0.05, 0.15)
    t = (np.mod((x * math.cos(ang) + y * math.sin(ang)) / per, 1.0) < 0.5)[..., None]
    return np.where(t, a, b)


def _sphere(x, y, cx, cy, r):
    return np.sqrt(np.maximum(r * r - (x - cx) ** 2 - (y - cy) ** 2, 0.0))


def _geom_sphere(x, y, rng):
    z = _sphere(x, y, 0, 0, 0.38)
    return z, z > 0, _cells_albedo(x, y, rng)


def _geom_spheres(x, y, rng):
    z = np.full(x.shape, 0.02)  # a ground plane so cast shadows land somewhere
    for _ in range(3):
        cx, cy, r = rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25), rng.uniform(0.1, 0.2)
        z = np.maximum(z, _sphere(x, y, cx, cy, r) + 0.02)
    alb = np.where((z > 0.021)[..., None], _stripes_albedo(x, y, rng), _cells_albedo(x, y, rng, 0.2))
    return z, np.ones(x.shape, bool), alb


def _geom_blocks(x, y, rng):
    z = np.zeros(x.shape)
    for _ in range(4):
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        hw, hh, ht = rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.2)
        inside = (np.abs(x - cx) < hw) & (np.abs(y - cy) < hh)
        z = np.where(inside, np.maximum(z, ht), z)
    return z, np.ones(x.shape, bool), _cells_albedo(x, y, rng, 0.09)


def _geom_terrain(x, y, rng):
    seed = int(rng.integers(1 << 30))
    z = 0.08 * fbm(x.astype(np.float32) * 4 + 10, y.astype(np.float32) * 4 + 10, seed, 3).astype(np.float64)
    chk = ((np.floor(x / 0.1) + np.floor(y / 0.1)) % 2)[..., None]
    alb = np.where(chk > 0, rng.uniform(0.5, 0.85, 3), rng.uniform(0.15, 0.4, 3))
    return z, np.ones(x.shape, bool), alb


def _bump(x, y, cx, cy, sx, sy):
    return np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _geom_face(x, y, rng):
    a, b, c = 0.28, 0.38, 0.25
    head = c * np.sqrt(np.maximum(1 - (x / a) ** 2 - (y / b) ** 2, 0.0))
    mask = head > 0
    z = head + 0.07 * _bump(x, y, 0, -0.02, 0.03, 0.09) - 0.035 * (_bump(x, y, -0.1, 0.07, 0.06, 0.04)
                                                                + _bump(x, y, 0.1, 0.07, 0.06, 0.04))
    z += 0.02 * (_bump(x, y, -0.1, 0.13, 0.07, 0.015) + _bump(x, y, 0.1, 0.13, 0.07, 0.015))  # brows
    z += 0.015 * _bump(x, y, 0, -0.17, 0.06, 0.02) + 0.02 * (_bump(x, y, -0.12, -0.06, 0.05, 0.05)
                                                            + _bump(x, y, 0.12, -0.06, 0.05, 0.05))
    z = np.where(mask, z, 0.0)
    skin = np.array([0.62, 0.42, 0.32]) * rng.uniform(0.7, 1.2)
    seed = int(rng.integers(1 << 30))
    alb = skin * (0.9 + 0.2 * fbm(x.astype(np.float32) * 20, y.astype(np.float32) * 20, seed, 3))[..., None]
    brows = (_bump(x, y, -0.1, 0.14, 0.06, 0.012) + _bump(x, y, 0.1, 0.14, 0.06, 0.012)) > 0.5
    eyes = (_bump(x, y, -0.1, 0.07, 0.035, 0.015) + _bump(x, y, 0.1, 0.07, 0.035, 0.015)) > 0.5
    iris = (_bump(x, y, -0.1, 0.07, 0.012, 0.012) + _bump(x, y, 0.1, 0.07, 0.012, 0.012)) > 0.5
    lips = _bump(x, y, 0, -0.17, 0.055, 0.018) > 0.5
    alb = np.where(brows[..., None], [0.06, 0.04, 0.03], alb)
    alb = np.where(eyes[..., None], [0.8, 0.8, 0.78], alb)
    alb = np.where(iris[..., None], [0.1, 0.15, 0.25], alb)
    alb = np.where(lips[..., None], [0.5, 0.15, 0.15], alb)
    return z, mask, alb


_GEOMS: dict[str, Callable[..., Any]] = {"sphere": _geom_sphere, "spheres": _geom_spheres, "blocks": _geom_blocks,
                                         "terrain": _geom_terrain, "face": _geom_face, "face_specular": _geom_face}


def make_scene(name: str, size: int = 128, seed: int = 0) -> dict[str, Any]:
    """Render one benchmark scene at ``size``² (module docstring).

    Raises:
        ValueError: unknown scene name.
    """
    if name not in _GEOMS:
        raise ValueError(f"unknown scene {name!r}; choose one of {SCENES}")
    rng = np.random.default_rng([seed, SCENES.index(name)])
    x, y = _grid(size)
    z, mask, albedo = _GEOMS[name](x, y, rng)
    z = z.astype(np.float32)
    maskf = mask.astype(np.float32)
    albedo = np.clip(albedo, 0.02, 1.0).astype(np.float32)
    normals = normals_from_height(z, maskf)
    az, el = float(rng.uniform(0, 360)), float(rng.uniform(25, 65))
    d = light_direction(az, el)
    ambient, intensity = float(rng.uniform(0.1, 0.25)), 1.0
    zmax = float(z.max())
    depth = z / zmax
    vis = cast_shadow(depth, d, depth_scale=zmax, size_deg=1.0, work=size)
    shading = (ambient + intensity * lambert(normals, d) * vis).astype(np.float32)
    spec = np.zeros_like(shading)
    if name == "face_specular":
        spec = (specular(normals, d, model="ggx", roughness=0.35, f0=0.04) * vis).astype(np.float32)
    shading = np.where(mask, shading, 1.0).astype(np.float32)
    image = albedo * shading[..., None] + (spec * maskf)[..., None]
    record = {"scene": name, "size": size, "seed": seed, "azimuth": az, "elevation": el, "ambient": ambient,
              "specular": name == "face_specular"}
    return {"image": image.astype(np.float32), "albedo": albedo, "shading": shading, "specular": spec,
            "mask": maskf, "depth": depth.astype(np.float32), "normals": normals, "record": record}
