"""Blurs and resampling: the pyramid blur approximates a true Gaussian; OpenCV and pure-xp paths agree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from relight_stream.kernels import filters


@pytest.fixture(scope="module")
def grey(photos: dict[str, np.ndarray]) -> np.ndarray:
    return photos["coffee"][..., 1].astype(np.float32) / 255.0


@pytest.mark.parametrize("sigma", [1.5, 6.0, 20.0, 40.0])
def test_gaussian_blur_matches_scipy(grey: np.ndarray, sigma: float) -> None:
    """The pyramid blur (box-downsample, short blur, bilinear up) stays within 1.5 % rms of a true Gaussian."""
    ours = filters.gaussian_blur(grey, sigma)
    ref = gaussian_filter(grey, sigma, mode="reflect", truncate=4.0)
    rms = float(np.sqrt(((ours - ref) ** 2).mean()))
    assert rms < 0.015 * float(ref.std()) + 1e-4, f"rms {rms:.2e} vs signal std {ref.std():.3f}"


@pytest.mark.parametrize("shape", [(61, 77), (64, 64, 3), (50, 33, 3)])
def test_opencv_and_xp_paths_agree(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(1).random(shape).astype(np.float32)
    for sigma in (0.8, 2.5, 9.0, 30.0):
        a, b = filters.gaussian_blur(x, sigma), filters.gaussian_blur(x, sigma, fast=False)
        assert np.abs(a - b).max() < 1e-5, (sigma, np.abs(a - b).max())
    for f in (2, 3, 4):
        a, b = filters.downsample(x, f), filters.downsample(x, f, fast=False)
        assert np.abs(a - b).max() < 1e-5
    a = filters.resize_bilinear(x, (97, 120))
    b = filters.resize_bilinear(x, (97, 120), fast=False)
    assert np.abs(a - b).max() < 1e-4


def test_masked_blur_does_not_leak_the_background() -> None:
    x = np.full((64, 64), 100.0, np.float32)
    m = np.zeros((64, 64), np.float32)
    m[:, :32] = 1
    x[:, :32] = 0.5
    out = filters.masked_blur(x, m, 8.0)
    assert np.abs(out[:, :32] - 0.5).max() < 1e-3


def test_box_sum_counts_window_pixels() -> None:
    s = filters.box_sum(np.ones((10, 12), np.float32), 2)
    assert s[5, 5] == 25 and s[0, 0] == 9


@pytest.mark.parametrize("shape", [(1024, 41), (37, 300), (64, 64)])
def test_pyramid_blur_keeps_thin_images_aligned(shape: tuple[int, int]) -> None:
    """A ramp blurred on the pyramid stays a ramp (no stretch of the padded edge cells along either axis)."""
    ramp = np.tile(np.linspace(0, 1, shape[1], dtype=np.float32), (shape[0], 1))
    out = filters.gaussian_blur(ramp, 20.0)
    inner = slice(shape[1] // 4, 3 * shape[1] // 4)
    assert np.abs(out[:, inner] - ramp[:, inner]).max() < 0.05 + 40.0 / shape[1]
