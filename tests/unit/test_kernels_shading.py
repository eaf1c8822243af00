"""Light models: directions, Lambert on a sphere vs the analytic solution, SH, speculars, shadows, patterns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from relight_stream.kernels import lights, normals, patterns, render, shading, shadows, specular
from relight_stream.kernels.pattern_sampling import sample_pattern

R = 0.35


def sphere(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(n) + 0.5) / n - 0.5
    x, y = np.meshgrid(c, -c)
    r2 = x**2 + y**2
    z = np.sqrt(np.maximum(R**2 - r2, 0)).astype(np.float32)
    return z, (r2 < R**2).astype(np.float32), np.stack([x / R, y / R, z / R], -1)


def test_light_direction_conventions() -> None:
    np.testing.assert_allclose(shading.light_direction(0, 0), [1, 0, 0], atol=1e-12)  # from image right
    np.testing.assert_allclose(shading.light_direction(90, 0), [0, 1, 0], atol=1e-12)  # from above
    np.testing.assert_allclose(shading.light_direction(180, 0), [-1, 0, 0], atol=1e-12)  # from left
    np.testing.assert_allclose(shading.light_direction(33, 90), [0, 0, 1], atol=1e-12)  # frontal
    az, el = shading.direction_angles(shading.light_direction(250, -30))
    assert abs(az - 250) < 1e-9 and abs(el + 30) < 1e-9


def test_rendered_sphere_matches_the_analytic_lambert_solution() -> None:
    """Depth -> normals -> render: a white sphere under one light + ambient equals ambient + I max(0, n.l)."""
    z, m, exact = sphere(128)
    depth = z / z.max()
    nrm = normals.normals_from_depth(depth, m, depth_scale=float(z.max()))
    light = lights.make_light(40, 30, intensity=0.8, kelvin=None)
    rec = {"ambient": {"rgb": [0.1, 0.1, 0.1]}, "sh": None, "lights": [light], "depth_scale": float(z.max())}
    relit, shade = render.render_relight(np.ones((128, 128, 3), np.float32), nrm, None, m, rec)
    truth = 0.1 + 0.8 * np.maximum(exact @ np.asarray(light["direction"]), 0)
    inner = (exact[..., 0] ** 2 + exact[..., 1] ** 2) < 0.85**2
    assert np.abs(relit[..., 1] - truth)[inner].max() < 0.03
    np.testing.assert_allclose(relit, shade, atol=1e-6)  # albedo 1: the image is the shading


def test_shade_directional_is_ambient_plus_coloured_lambert_times_visibility() -> None:
    n = np.zeros((2, 3, 3), np.float32)
    n[..., 2] = 1.0  # facing the camera
    n[0, 0] = [1.0, 0.0, 0.0]  # facing right
    n[1, 2] = [-1.0, 0.0, 0.0]  # facing left: away from a light on the right
    d = shading.light_direction(0, 0)  # from the image's right, grazing
    vis = np.ones((2, 3), np.float32)
    vis[0, 1] = 0.25
    out = shading.shade_directional(n, d, color=(1.0, 0.5, 0.25), intensity=2.0, ambient=(0.1, 0.1, 0.1),
                                    visibility=vis)
    expected = 0.1 + 2.0 * np.array([1.0, 0.5, 0.25]) * np.clip(n @ np.asarray(d), 0, None)[..., None] * vis[..., None]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(out[0, 0], [2.1, 1.1, 0.6], atol=1e-6)  # fully lit, warm light
    np.testing.assert_allclose(out[1, 2], [0.1, 0.1, 0.1], atol=1e-6)  # facing away: ambient only


def test_sh_of_a_directional_light_approximates_lambert() -> None:
    _, m, n = sphere(96)
    n = np.where(m[..., None] > 0, n, [0, 0, 1]).astype(np.float32)
    d = shading.light_direction(120, 40)
    sh = shading.shade_sh(n, shading.sh_from_directional(d, (1, 1, 1), 1.0))[..., 0]
    lam = shading.lambert(n, d)
    err = np.abs(sh - lam)[m > 0]
    assert err.mean() < 0.05 and err.max() < 0.2  # order-2 SH of a clamped cosine


def test_sampled_sh_environments_are_non_negative() -> None:
    for seed in range(5):
        rec = lights.sample_relight(np.random.default_rng(seed), degradation="sh")
        assert shading.sh_min_irradiance(rec["sh"]).min() > -1e-4


@pytest.mark.parametrize("model", specular.MODELS)
def test_specular_peaks_at_the_half_vector_and_widens_with_roughness(model: str) -> None:
    _, m, n = sphere(128)
    n = np.where(m[..., None] > 0, n, [0, 0, 1]).astype(np.float32)
    d = np.asarray(shading.light_direction(30, 45))
    h = (d + [0, 0, 1]) / np.linalg.norm(d + [0, 0, 1])
    sharp = specular.specular(n, d, model=model, roughness=0.2) * m
    rough = specular.specular(n, d, model=model, roughness=0.6) * m
    peak = np.unravel_index(np.argmax(sharp), sharp.shape)
    assert float(n[peak] @ h) > 0.99
    assert sharp.max() > rough.max()
    assert (rough > rough.max() / 2).sum() > (sharp > sharp.max() / 2).sum()
    assert np.isfinite(sharp).all() and sharp.min() >= 0


def test_cast_shadow_falls_away_from_the_light_and_softens_with_size() -> None:
    depth = np.zeros((96, 96), np.float32)
    depth[40:56, 40:56] = 1.0  # a tall block on a ground plane
    d = shading.light_direction(0, 30)  # from image right, fairly low
    hard = shadows.cast_shadow(depth, d, depth_scale=0.3, size_deg=0.0)
    soft = shadows.cast_shadow(depth, d, depth_scale=0.3, size_deg=10.0)
    assert hard[48, 20:38].mean() < 0.1  # left of the block (away from the light): shadowed
    assert hard[48, 60:90].min() > 0.9  # right of it (toward the light): lit
    assert hard[10:30, :].min() > 0.9  # above the block: lit
    partial = lambda v: ((v > 0.05) & (v < 0.95)).sum()  # noqa: E731
    assert partial(soft) > 2 * partial(hard)
    assert shadows.cast_shadow(depth, shading.light_direction(0, 90)).min() == 1.0  # frontal: no cast shadow


@pytest.mark.parametrize("kind", patterns.PATTERNS)
def test_patterns_are_finite_in_range_json_and_resolution_independent(kind: str) -> None:
    rec = sample_pattern(np.random.default_rng(7), kind)
    assert json.loads(json.dumps(rec)) == rec
    small = patterns.pattern_transmission(rec, (96, 96))
    big = patterns.pattern_transmission(rec, (192, 192))
    for t in (small, big):
        assert t.dtype == np.float32 and np.isfinite(t).all() and t.min() >= 0 and t.max() <= 1
    # Sizes are relative to the image: same coverage, and the same picture up to sampling of the finest detail.
    assert abs(float(big.mean()) - float(small.mean())) < 0.03
    assert np.abs(big.reshape(96, 2, 96, 2).mean((1, 3)) - small).mean() < 0.12
    assert float(big.std()) > 1e-3 or kind == "branches"  # the pattern actually casts something


def test_pattern_shifts_with_depth_along_the_light() -> None:
    rec = sample_pattern(np.random.default_rng(3), "blinds")
    flat = patterns.pattern_transmission(rec, (64, 64), depth=np.zeros((64, 64), np.float32),
                                         direction=shading.light_direction(90, 45))
    raised = patterns.pattern_transmission(rec, (64, 64), depth=np.ones((64, 64), np.float32),
                                           direction=shading.light_direction(90, 45))
    assert np.abs(flat - raised).mean() > 0.05
