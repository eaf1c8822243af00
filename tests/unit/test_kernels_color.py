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


def _exact_u8(x: np.ndarray) -> np.ndarray:  # rounding the IEC 61966-2-1 encode in float64
    x = np.clip(x.astype(np.float64), 0, 1)
    s = np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055)
    return np.round(s * 255).astype(int)


def test_fast_linear_to_srgb_u8_is_within_one_code_of_the_exact_formula_everywhere() -> None:
    # Every float32 within 256 ulps of each of the 255 code thresholds (where rounding can go wrong), a dense
    # grid over [-0.1, 1.1], and the clip ends.
    codes = np.arange(255, dtype=np.float64) + 0.5
    lin = np.where(codes / 255 <= 0.04045, codes / 255 / 12.92, ((codes / 255 + 0.055) / 1.055) ** 2.4)
    bits = lin.astype(np.float32).view(np.int32)[:, None] + np.arange(-256, 257, dtype=np.int32)[None]
    grid = np.linspace(-0.1, 1.1, 1_000_001, dtype=np.float32)
    x = np.concatenate([bits.view(np.float32).ravel(), grid,
                        np.array([0.0, 1.0, -1e30, 1e30, np.inf, -np.inf], np.float32)])
    fast = color.linear_to_srgb_u8(x)
    assert fast.dtype == np.uint8 and fast.shape == x.shape
    diff = np.abs(fast.astype(int) - _exact_u8(x))
    assert diff.max() <= 1
    assert fast[-6:].tolist() == [0, 255, 0, 255, 255, 0]  # clipped, infinities included
    on_grid = diff[bits.size : bits.size + grid.size]
    assert (on_grid == 0).mean() > 0.999  # off by one only next to a threshold


def test_fast_linear_to_srgb_u8_keeps_shape_for_any_layout_and_float64() -> None:
    x = np.random.default_rng(1).random((2, 5, 7, 3)).astype(np.float32)
    ref = color.linear_to_srgb_u8(x)
    assert ref.shape == x.shape
    assert np.array_equal(color.linear_to_srgb_u8(x.astype(np.float64)), ref)
    assert np.array_equal(color.linear_to_srgb_u8(x[:, ::2, ::-1]), ref[:, ::2, ::-1])  # non-contiguous view
    assert np.abs(ref.astype(int) - _exact_u8(x)).max() <= 1
    assert color.linear_to_srgb_u8(np.float32(0.5) * np.ones(0, np.float32)).shape == (0,)


def test_linear_to_srgb_u8_maps_nan_and_inf_alike_on_both_paths():
    x = np.array([np.nan, np.inf, -np.inf, 0.5, 2.0, -1.0], np.float32)
    fast = color.linear_to_srgb_u8(x)  # OpenCV path (NumPy float32)
    generic = color.linear_to_srgb_u8(x.astype(np.float16))  # the xp path CuPy takes
    assert fast.tolist() == generic.tolist() == [255, 255, 0, 188, 255, 0]
