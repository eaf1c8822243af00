"""Albedo methods and the intrinsic benchmark: reconstruction identity, physical range, LMSE metric."""

from __future__ import annotations

import numpy as np
import pytest

from relight_stream.kernels import intrinsic_bench as ib
from relight_stream.kernels.color import srgb_to_linear
from relight_stream.kernels.retinex import METHODS, estimate_albedo


@pytest.fixture(scope="module")
def subject(photos: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    img = photos["chelsea"][::3, ::3][:96, :128]
    lin = np.ascontiguousarray(srgb_to_linear(img))
    m = np.zeros(img.shape[:2], np.uint8)
    m[8:90, 16:120] = 255
    return lin, m


@pytest.mark.parametrize("method", METHODS)
def test_albedo_times_shading_is_the_image(subject: tuple[np.ndarray, np.ndarray], method: str) -> None:
    lin, m = subject
    albedo, shading = estimate_albedo(lin, m, method=method)
    assert albedo.shape == lin.shape == shading.shape and albedo.dtype == np.float32
    assert np.isfinite(albedo).all() and np.isfinite(shading).all()
    np.testing.assert_allclose(albedo * shading, lin, rtol=1e-5, atol=1e-6)
    assert albedo.min() >= 0 and albedo.max() <= 1 + 1e-5  # a physical reflectance
    assert shading.min() > 0
    assert np.all(shading[m == 0] == 1)  # the background is left as it is
    np.testing.assert_array_equal(shading[..., 0], shading[..., 2])  # grey (white-light) shading


def test_unknown_method_is_rejected(subject: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="unknown albedo method"):
        estimate_albedo(subject[0], subject[1], method="magic")


def _reference_local_error(correct, estimate, mask, window, step):  # the MIT benchmark's loop, verbatim logic
    ssq = total = 0.0
    for i in range(0, correct.shape[0] - window + 1, step):
        for j in range(0, correct.shape[1] - window + 1, step):
            c, e, m = (a[i:i + window, j:j + window] for a in (correct, estimate, mask))
            alpha = np.sum(c * e * m) / np.sum(e**2 * m) if np.sum(e**2 * m) > 1e-5 else 0.0
            ssq += np.sum(m * (c - alpha * e) ** 2)
            total += np.sum(m * c**2)
    return ssq / total


def test_lmse_matches_the_reference_loop() -> None:
    rng = np.random.default_rng(0)
    c, e = rng.random((57, 71)), rng.random((57, 71))
    m = (rng.random((57, 71)) > 0.2).astype(float)
    assert abs(ib.local_error(c, e, m) - _reference_local_error(c, e, m, 20, 10)) < 1e-10


def test_lmse_is_zero_for_truth_and_scale_invariant() -> None:
    sc = ib.make_scene("face", size=64, seed=0)
    assert ib.lmse(sc["albedo"], sc["shading"], sc["albedo"], sc["shading"], sc["mask"])["lmse"] < 1e-12
    scaled = ib.lmse(sc["albedo"], sc["shading"], 3 * sc["albedo"], 0.2 * sc["shading"], sc["mask"])
    assert scaled["lmse"] < 1e-12


@pytest.mark.parametrize("name", ib.SCENES)
def test_scenes_have_exact_ground_truth(name: str) -> None:
    sc = ib.make_scene(name, size=64, seed=1)
    recon = sc["albedo"] * sc["shading"][..., None] + (sc["specular"] * sc["mask"])[..., None]
    np.testing.assert_allclose(recon, sc["image"], atol=1e-6)
    assert 0 < sc["albedo"].min() and sc["albedo"].max() <= 1 and sc["shading"].min() >= 0
    assert np.isfinite(sc["image"]).all() and sc["mask"].sum() > 0.1 * 64 * 64
    again = ib.make_scene(name, size=64, seed=1)
    np.testing.assert_array_equal(again["image"], sc["image"])  # deterministic from the seed


def test_methods_beat_the_trivial_baseline_on_the_benchmark() -> None:
    scores = {m: [] for m in METHODS + ("constant_shading",)}
    for name in ib.SCENES:
        sc = ib.make_scene(name, size=96, seed=0)
        for m in METHODS:
            a, s = estimate_albedo(sc["image"], sc["mask"], method=m)
            scores[m].append(ib.lmse(sc["albedo"], sc["shading"], a, s, sc["mask"])["lmse"])
        scores["constant_shading"].append(
            ib.lmse(sc["albedo"], sc["shading"], sc["image"], np.ones_like(sc["image"]), sc["mask"])["lmse"])
    base = np.mean(scores["constant_shading"])
    for m in METHODS:
        assert np.mean(scores[m]) < base, (m, np.mean(scores[m]), base)
