"""Normals: analytic sphere, camera-frame conventions, resolution independence, mask inflation, encoding."""

from __future__ import annotations

import numpy as np
import pytest

from relight_stream.kernels import normals

R = 0.35  # sphere radius, in units of the image side


def sphere(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Height (image-side units), mask and exact normals of a centred sphere at n x n pixels."""
    c = (np.arange(n) + 0.5) / n - 0.5
    x, y = np.meshgrid(c, -c)  # +y up: row 0 is the top of the image
    r2 = x**2 + y**2
    z = np.sqrt(np.maximum(R**2 - r2, 0)).astype(np.float32)
    exact = np.stack([x / R, y / R, z / R], -1)
    return z, (r2 < R**2).astype(np.float32), exact


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1, 1)))


def interior(n: int, frac: float = 0.85) -> np.ndarray:
    c = (np.arange(n) + 0.5) / n - 0.5
    x, y = np.meshgrid(c, -c)
    return x**2 + y**2 < (frac * R) ** 2


def test_sphere_normals_from_height_match_the_analytic_normals() -> None:
    z, m, exact = sphere(128)
    n = normals.normals_from_height(z, m)
    assert angle_deg(n, exact)[interior(128)].max() < 2.0
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-5)
    assert np.allclose(n[m == 0], [0, 0, 1])


def test_normals_follow_the_camera_frame() -> None:
    z, m, _ = sphere(64)
    n = normals.normals_from_height(z, m)
    mid = 32
    assert n[mid, mid + 15, 0] > 0.5  # right side of the sphere faces +x
    assert n[mid - 15, mid, 1] > 0.5  # top of the image (small row) faces +y (up)
    assert n[mid + 15, mid, 1] < -0.5
    assert n[mid, mid, 2] > 0.99  # centre faces the viewer


def test_normals_from_depth_are_resolution_independent() -> None:
    """The same scene at two resolutions gives the same normals (the reference's tilt halved at 2x)."""
    out = []
    for n in (64, 128):
        z, m, _ = sphere(n)
        depth = z / z.max()
        out.append(normals.normals_from_depth(depth, m, depth_scale=float(z.max())))
    coarse = out[1].reshape(64, 2, 64, 2, 3).mean((1, 3))
    coarse /= np.linalg.norm(coarse, axis=-1, keepdims=True)
    inner = interior(64)
    assert angle_deg(out[0], coarse)[inner].mean() < 0.5
    tilt = [angle_deg(o, np.array([0, 0, 1.0]))[interior(o.shape[0])].mean() for o in out]
    assert abs(tilt[0] - tilt[1]) < 0.5, tilt


def test_inflating_a_disk_gives_a_hemisphere() -> None:
    z, m, _ = sphere(128)
    h = normals.inflate_mask((m * 255).astype(np.uint8))
    inner = interior(128, 0.9)
    assert np.abs(h - z)[inner].max() < 0.02 * 1.0  # 2 % of the image side
    assert (h[m == 0] == 0).all()


def test_normals_from_mask_returns_normalised_depth_and_unit_normals(photos: dict[str, np.ndarray]) -> None:
    from relight_stream.kernels.color import srgb_to_linear

    img = photos["chelsea"][:96, :128]
    m = np.zeros(img.shape[:2], np.uint8)
    m[10:90, 20:110] = 255
    depth, n = normals.normals_from_mask(m, srgb_to_linear(img), detail=0.15)
    assert depth.shape == m.shape and n.shape == (*m.shape, 3)
    assert np.isfinite(n).all() and np.isfinite(depth).all()
    assert depth.min() >= 0 and abs(float(depth.max()) - 1) < 1e-6
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1, atol=1e-5)
    plain_depth, plain = normals.normals_from_mask(m, None)
    assert angle_deg(n, plain)[m > 0].mean() > 0.05  # luminance detail does tilt the normals


@pytest.mark.parametrize("seed", [0, 1])
def test_normals_png_encoding_round_trips(seed: int) -> None:
    v = np.random.default_rng(seed).normal(size=(32, 32, 3)).astype(np.float32)
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    u8 = normals.normals_to_u8(v)
    assert u8.dtype == np.uint8
    assert angle_deg(normals.normals_from_u8(u8), v).max() < 1.0


def test_normals_from_mask_reports_the_true_depth_scale() -> None:
    z, m, _ = sphere(96)
    depth, _, scale = normals.normals_from_mask(m, None, return_scale=True)
    assert abs(scale - R) < 0.02  # the inflated disk is a hemisphere of the disk's radius
    inner = interior(96, 0.9)
    np.testing.assert_allclose((depth * scale)[inner], z[inner], atol=0.02)
