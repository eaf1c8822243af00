"""Relighting records and rendering: JSON records from a seeded Generator, range, and light-transport linearity."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from relight_stream.kernels import color, lights, normals, render


@pytest.fixture(scope="module")
def subject(photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from relight_stream.kernels.retinex import estimate_albedo

    img = photos["astronaut"][::8, ::8]  # 64 x 64
    lin = np.ascontiguousarray(color.srgb_to_linear(img))
    yy, xx = (np.mgrid[0:64, 0:64] + 0.5) / 64
    m = ((((xx - 0.49) / 0.21) ** 2 + ((yy - 0.26) / 0.23) ** 2 < 1)
         | (((xx - 0.5) / 0.45) ** 2 + ((yy - 1.0) / 0.5) ** 2 < 1)).astype(np.uint8) * 255
    depth, nrm = normals.normals_from_mask(m, lin)
    albedo, _ = estimate_albedo(lin, m)
    return {"albedo": albedo, "normals": nrm, "depth": depth, "mask": m}


def test_records_are_json_and_deterministic_per_seed() -> None:
    for kind in lights.DEGRADATIONS:
        a = lights.sample_relight(np.random.default_rng(5), degradation=kind)
        b = lights.sample_relight(np.random.default_rng(5), degradation=kind)
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
        assert json.loads(json.dumps(a)) == a
        assert a["degradation"] == kind
        for light in a["lights"]:
            np.testing.assert_allclose(np.linalg.norm(light["direction"]), 1, atol=1e-9)


def test_mix_weights_choose_the_degradation_and_bad_mixes_fail() -> None:
    rng = np.random.default_rng(0)
    assert {lights.sample_relight(rng, {"shadow": 1.0, "soft": 0.0})["degradation"] for _ in range(20)} == {"shadow"}
    kinds = {lights.sample_relight(rng, {k: 1.0 for k in lights.DEGRADATIONS})["degradation"] for _ in range(200)}
    assert kinds == set(lights.DEGRADATIONS)
    with pytest.raises(ValueError, match="unknown degradation"):
        lights.sample_relight(rng, {"sparkle": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        lights.sample_relight(rng, {"soft": 0.0})


def test_multi_light_rig_geometry() -> None:
    for seed in range(10):
        rec = lights.sample_relight(np.random.default_rng(seed), degradation="multi")
        key, fill, rim = rec["lights"]
        assert (key["role"], fill["role"], rim["role"]) == ("key", "fill", "rim")
        assert rim["elevation"] < 0 and rim["direction"][2] < 0  # the rim light is behind the subject
        assert fill["intensity"] < key["intensity"]
        opposite = abs(((fill["azimuth"] - key["azimuth"]) % 360) - 180)
        assert opposite <= 40.0 + 1e-9  # fill comes from the other side


@pytest.mark.parametrize("kind", lights.DEGRADATIONS)
def test_every_degradation_renders_finite_non_negative_values(subject: dict, kind: str) -> None:
    for seed in range(3):
        rec = lights.sample_relight(np.random.default_rng(seed), degradation=kind)
        relit, shading = render.render_relight(subject["albedo"], subject["normals"], subject["depth"],
                                               subject["mask"], rec)
        assert relit.shape == shading.shape == subject["albedo"].shape and relit.dtype == np.float32
        assert np.isfinite(relit).all() and relit.min() >= -1e-6 and shading.min() >= -1e-6
        assert relit.max() < 8.0
        out = color.linear_to_srgb_u8(render.composite(color.tonemap(relit), subject["mask"]))
        assert out.dtype == np.uint8 and (out[subject["mask"] == 0] == 128).all()


@pytest.mark.parametrize("k1,k2", list(itertools.combinations(lights.DEGRADATIONS, 2))[::2])
def test_light_transport_is_linear(subject: dict, k1: str, k2: str) -> None:
    p1 = lights.sample_relight(np.random.default_rng(1), degradation=k1)
    p2 = lights.sample_relight(np.random.default_rng(2), degradation=k2)
    i1, i2, i12 = render.render_consistency_triplet(subject["albedo"], subject["normals"], subject["depth"],
                                                    subject["mask"], p1, p2)
    assert len(lights.combine_lights(p1, p2)["lights"]) == len(p1["lights"]) + len(p2["lights"])
    assert np.abs(i1 - i2).max() > 1e-3  # two different lightings, not a trivial identity
    np.testing.assert_allclose(i12, i1 + i2, atol=1e-5, rtol=1e-5)


def test_shading_happens_in_linear_light() -> None:
    """Half the light on a white surface is half the linear radiance: sRGB code 188, not 128."""
    n = np.zeros((8, 8, 3), np.float32)
    n[..., 2] = 1
    rec = {"ambient": {"rgb": [0, 0, 0]}, "sh": None, "lights": [lights.make_light(0, 90, intensity=0.5, kelvin=None)]}
    relit, _ = render.render_relight(np.ones((8, 8, 3), np.float32), n, None, None, rec)
    np.testing.assert_allclose(relit, 0.5, atol=1e-6)
    assert int(color.linear_to_srgb_u8(relit)[0, 0, 0]) == 188


def test_combining_records_with_different_depth_scales_fails() -> None:
    p1 = lights.sample_relight(np.random.default_rng(0), degradation="soft", depth_scale=0.5)
    p2 = lights.sample_relight(np.random.default_rng(0), degradation="soft", depth_scale=0.3)
    with pytest.raises(ValueError):
        lights.combine_lights(p1, p2)


def _sphere_subject(n: int = 96) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = (np.arange(n) + 0.5) / n - 0.5
    x, y = np.meshgrid(c, -c)
    z = np.sqrt(np.maximum(0.35**2 - x**2 - y**2, 0)).astype(np.float32)
    m = (z > 0).astype(np.float32)
    return normals.normals_from_height(z, m), z / z.max(), m


def test_specular_records_add_a_highlight_where_the_half_vector_points() -> None:
    nrm, depth, m = _sphere_subject()
    light = lights.make_light(45, 40, intensity=0.8, kelvin=None)
    base = {"ambient": {"rgb": [0.1] * 3}, "sh": None, "lights": [light]}
    shiny = {**base, "lights": [{**light, "specular": {"model": "ggx", "roughness": 0.25, "f0": 0.04, "strength": 1}}]}
    albedo = np.full((96, 96, 3), 0.4, np.float32)
    plain, _ = render.render_relight(albedo, nrm, depth, m, base)
    glossy, shade = render.render_relight(albedo, nrm, depth, m, shiny)
    extra = (glossy - plain)[..., 0]
    h = np.asarray(light["direction"]) + [0, 0, 1]
    h /= np.linalg.norm(h)
    peak = np.unravel_index(np.argmax(extra), extra.shape)
    assert extra.max() > 0.2 and float(nrm[peak] @ h) > 0.98
    np.testing.assert_allclose(shade, render.render_relight(albedo, nrm, depth, m, base)[1])  # diffuse unchanged


def test_rim_light_only_lights_the_silhouette() -> None:
    nrm, depth, m = _sphere_subject()
    rim = lights.make_light(180, -45, intensity=1.0, kelvin=None, role="rim")  # behind the subject, on the left
    rec = {"ambient": {"rgb": [0, 0, 0]}, "sh": None, "lights": [rim]}
    _, shade = render.render_relight(np.ones((96, 96, 3), np.float32), nrm, depth, m, rec)
    lit = shade[..., 0] > 0.05
    assert lit.any() and not lit[:, 48:].any()  # only the left limb
    assert nrm[lit][:, 2].max() < 0.75  # and only where the surface turns away from the camera
