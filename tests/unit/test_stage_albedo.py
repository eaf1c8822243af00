"""Albedo stage: de-lighting in linear RGB, bounded reflectance, the reduced-resolution shading path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from relight_stream.config import AlbedoConfig
from relight_stream.kernels.color import linear_to_srgb_u8, srgb_to_linear
from relight_stream.pipeline.albedo import AlbedoStage
from relight_stream.sample import SampleBatch


def _shaded_disk(n: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured disk of known albedo lit by a smooth left-to-right ramp (linear light)."""
    rng = np.random.default_rng(0)
    albedo = np.clip(0.5 + 0.15 * rng.standard_normal((n, n, 1)), 0.2, 0.8) * np.float32([0.9, 0.6, 0.4])
    albedo = cv2.GaussianBlur(albedo.astype(np.float32), (0, 0), 1.0)
    ramp = np.linspace(0.15, 1.0, n, dtype=np.float32)[None, :, None]
    mask = np.zeros((n, n), np.float32)
    cv2.circle(mask, (n // 2, n // 2), int(0.4 * n), 1.0, -1)
    rgb = linear_to_srgb_u8(albedo * ramp)
    return rgb, mask, albedo


def _run(rgb: np.ndarray, mask: np.ndarray, **cfg) -> SampleBatch:
    batch = SampleBatch(keys=["a"])
    batch["rgb_BHW3"], batch["mask_BHW"] = rgb[None], mask[None]
    return AlbedoStage(AlbedoConfig(**cfg)).process(batch)


@pytest.mark.parametrize("method", ["retinex", "lab", "intrinsic"])
def test_albedo_removes_the_lighting_ramp(method: str) -> None:
    rgb, mask, _ = _shaded_disk()
    batch = _run(rgb, mask, method=method)
    assert batch.keep_B[0], batch.meta[0].get("drop_detail")
    alb = batch["albedo_BHW3"][0]
    inside = cv2.erode(mask, np.ones((15, 15), np.uint8)) > 0.5
    cols = np.where(inside.any(0))[0]
    left, right = cols[: len(cols) // 4], cols[-len(cols) // 4 :]

    def ratio(img: np.ndarray) -> float:
        y = img.mean(-1)
        return float(y[:, right][inside[:, right]].mean() / y[:, left][inside[:, left]].mean())

    lin = srgb_to_linear(rgb)
    assert ratio(lin) > 1.8
    assert ratio(alb) < 0.6 * ratio(lin), (ratio(lin), ratio(alb))
    assert alb.max() <= 1.0 + 1e-5 and alb.min() >= 0.0
    assert batch.meta[0]["albedo"]["method"] == method


def test_reduced_resolution_shading_keeps_the_texture() -> None:
    rgb, mask, _ = _shaded_disk(256)
    full = _run(rgb, mask, work_resolution=256)["albedo_BHW3"][0]
    half = _run(rgb, mask, work_resolution=128)["albedo_BHW3"][0]
    inside = cv2.erode(mask, np.ones((21, 21), np.uint8)) > 0.5
    rel = np.abs(full - half)[inside].mean() / full[inside].mean()
    assert rel < 0.05, rel
    # Texture (high frequencies) is carried at full resolution, not blurred by the upsampling.
    hp = lambda a: np.abs(a - cv2.GaussianBlur(a, (0, 0), 2.0))[inside].mean()  # noqa: E731
    assert hp(half) > 0.9 * hp(full)


def test_outside_the_mask_albedo_is_the_photo() -> None:
    rgb, mask, _ = _shaded_disk(64)
    alb = _run(rgb, mask)["albedo_BHW3"][0]
    np.testing.assert_allclose(alb[mask == 0], srgb_to_linear(rgb)[mask == 0], atol=1e-6)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError):
        AlbedoStage(AlbedoConfig(sigmas=(0.0, 2.0)))


def test_torch_input_from_gpu_decode_is_accepted() -> None:
    torch = pytest.importorskip("torch")
    rgb, mask, _ = _shaded_disk(64)
    batch = SampleBatch(keys=["t"])
    batch["rgb_BHW3"], batch["mask_BHW"] = torch.from_numpy(rgb[None].copy()), mask[None]
    out = AlbedoStage(AlbedoConfig()).process(batch)
    np.testing.assert_allclose(out["albedo_BHW3"][0], _run(rgb, mask)["albedo_BHW3"][0], atol=1e-6)


@pytest.mark.parametrize("work_resolution", [64, 32])  # full-resolution and reduced-resolution shading paths
def test_nonfinite_albedo_is_dropped_as_nonfinite_output(monkeypatch, work_resolution: int) -> None:
    """C9: a kernel returning NaN for one sample drops only it, as ``albedo:nonfinite_output``."""
    import relight_stream.pipeline.albedo as A

    rgb, mask, _ = _shaded_disk(64)
    batch = SampleBatch(keys=["a", "b", "c"])
    batch["rgb_BHW3"], batch["mask_BHW"] = np.repeat(rgb[None], 3, 0), np.repeat(mask[None], 3, 0)
    batch["mask_BHW"][1, 0, 0] = 1.0  # marks sample b for the poisoned kernel
    real = A.estimate_albedo

    def estimate_albedo(lin, mask_hw, **kw):
        alb, shading = real(lin, mask_hw, **kw)
        if mask_hw[0, 0] > 0:
            alb, shading = alb * np.float32(np.nan), shading * np.float32(np.nan)
        return alb, shading

    monkeypatch.setattr(A, "estimate_albedo", estimate_albedo)
    batch = AlbedoStage(AlbedoConfig(work_resolution=work_resolution)).process(batch)
    assert batch.drop_reason == [None, "albedo:nonfinite_output", None]
    assert batch.status(1) == "failed" and batch.meta[1]["drop_detail"] == "albedo_BHW3"
    clean = _run(rgb, mask, work_resolution=work_resolution)["albedo_BHW3"][0]
    for i in (0, 2):
        np.testing.assert_array_equal(batch["albedo_BHW3"][i], clean)
