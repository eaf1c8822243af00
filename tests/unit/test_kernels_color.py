"""Colour kernels: exact sRGB transfer, table-based encode, colour temperature, tone mapping."""

from __future__ import annotations

import numpy as np
import pytest

from relight_stream.kernels import color


def _exact_srgb_to_linear(s: np.ndarray) -> np.ndarray:  # IEC 61966-2-1, float64
    return np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4)


def test_srgb_to_linear_is_the_exact_curve_for_u8_and_float() -> None:
    codes = np.arange(256, dtype=np.uint8)
    expected = _exact_srgb_to_linear(codes / 255.0)
    np.testing.assert_allclose(color.srgb_to_linear(codes), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(color.srgb_to_linear(codes.astype(np.float32) / 255), expected, rtol=2e-6, atol=1e-7)
    assert color.srgb_to_linear(codes).dtype == np.float32
    assert abs(float(color.srgb_to_linear(np.array([0.5], np.float32))[0]) - 0.214041) < 1e-5


def test_u8_round_trip_is_lossless_for_every_code() -> None:
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(color.linear_to_srgb_u8(color.srgb_to_linear(codes)), codes)


def test_linear_to_srgb_u8_agrees_with_rounding_the_exact_curve() -> None:
    x = np.random.default_rng(0).random(200_000).astype(np.float32)
    exact = np.round(color.linear_to_srgb(x) * 255).astype(int)
    fast = color.linear_to_srgb_u8(x).astype(int)
    assert np.abs(fast - exact).max() <= 1
    assert (fast == exact).mean() > 0.999
    assert color.linear_to_srgb_u8(np.array([-1.0, 2.0], np.float32)).tolist() == [0, 255]  # clipped


def test_linear_to_srgb_inverts_srgb_to_linear() -> None:
    s = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(color.linear_to_srgb(color.srgb_to_linear(s)), s, atol=2e-6)


def test_luminance_uses_rec709_weights() -> None:
    lin = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)
    np.testing.assert_allclose(color.luminance(lin), [0.2126, 0.7152, 0.0722, 1.0], atol=1e-6)


def test_kelvin_is_white_at_d65_warm_below_and_blue_above() -> None:
    for k in (2000, 3200, 6500, 10000):
        assert abs(np.dot(color.kelvin_to_rgb(k), color.LUMA) - 1) < 1e-9
    white = color.kelvin_to_rgb(6504)
    assert max(abs(c - 1) for c in white) < 0.06
    r, g, b = color.kelvin_to_rgb(3000)
    assert r > g > b
    r, g, b = color.kelvin_to_rgb(12000)
    assert b > g > r


@pytest.mark.parametrize("mode", ["clip", "reinhard"])
def test_tonemap_maps_hdr_into_unit_range_monotonically(mode: str) -> None:
    x = np.linspace(0, 8, 100, dtype=np.float32)
    y = color.tonemap(x, mode=mode)
    assert y.min() >= 0 and y.max() <= 1 and np.all(np.diff(y) >= 0)
    with pytest.raises(ValueError):
        color.tonemap(x, mode="filmic-ish")
