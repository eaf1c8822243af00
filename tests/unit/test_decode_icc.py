"""RELIABILITY.md A14: an embedded non-sRGB ICC profile (Adobe RGB, written by the test) is converted to sRGB with
``icc="convert"`` or kept raw and flagged with ``icc="flag"``, on the CPU paths and in a DALI batch."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

import fixtures_images as fx
from relight_stream.config import DecodeConfig
from relight_stream.pipeline.decode import decode_batches, decode_image, resolve_dali
from relight_stream.pipeline.sources import discover

ICC = fx.rgb_icc_profile("Test Adobe RGB (1998)")
CONVERT = DecodeConfig(resolution=64, min_size=16, backend="pil", icc="convert")
FLAG = DecodeConfig(resolution=64, min_size=16, backend="pil", icc="flag")


def _photo() -> np.ndarray:
    """64×64 smooth noise with saturated bars (where Adobe RGB and sRGB differ most)."""
    a = fx.noise(64, 64, seed=11).copy()
    a[:, :8], a[:, 8:16] = (200, 40, 40), (30, 220, 60)
    return a


def _files(a: np.ndarray) -> dict[str, bytes]:
    return {"jpeg": fx.jpeg_bytes(a, quality=100, icc=ICC), "png8": fx.encode(a, "PNG", icc_profile=ICC),
            "png16": fx.png16_bytes(a.astype(np.uint16) * 257, icc=ICC)}  # v·257: exactly v in 8 bits


def _raw(data: bytes) -> np.ndarray:
    """The file's pixels without colour management (Pillow; 16-bit reduced to 8)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _to_srgb(a: np.ndarray) -> np.ndarray:
    """The reference: LittleCMS through ``ImageCms.profileToProfile`` from the embedded profile to sRGB."""
    src = ImageCms.ImageCmsProfile(io.BytesIO(ICC))
    return np.asarray(ImageCms.profileToProfile(Image.fromarray(a), src, ImageCms.createProfile("sRGB")))


@pytest.mark.parametrize("kind", ["jpeg", "png8", "png16"])
def test_a14_icc_convert_gives_the_lcms_srgb_pixels(kind):
    data = _files(_photo())[kind]
    rgb, info = decode_image(data, CONVERT)
    ref = _to_srgb(_raw(data))
    assert info["icc_profile"] == "Test Adobe RGB (1998)" and info["icc_converted"] is True
    assert info["bit_depth"] == (16 if kind == "png16" else 8)
    assert np.abs(rgb.astype(int) - ref.astype(int)).max() <= 1
    assert np.abs(rgb.astype(int) - _raw(data).astype(int)).max() > 20  # the profile is not a no-op


@pytest.mark.parametrize("kind", ["jpeg", "png8", "png16"])
def test_a14_icc_flag_keeps_the_raw_pixels_and_records_the_profile(kind):
    a = _photo()
    data = _files(a)[kind]
    rgb, info = decode_image(data, FLAG)
    assert info["icc_profile"] == "Test Adobe RGB (1998)" and info["icc_converted"] is False
    raw = _raw(data) if kind == "jpeg" else a  # lossless files: exactly the stored values
    assert np.abs(rgb.astype(int) - raw.astype(int)).max() <= (1 if kind == "jpeg" else 0)


def test_a14_a_dali_batch_routes_icc_images_per_the_policy(tmp_path):
    pytest.importorskip("nvidia.dali")
    a = _photo()
    files = {"adobe.jpg": fx.jpeg_bytes(a, quality=100, icc=ICC), "plain.jpg": fx.jpeg_bytes(a, quality=100)}
    fx.write_tree(tmp_path / "in", files)
    items, _, _ = discover([str(tmp_path / "in")])
    raw = _raw(files["adobe.jpg"])
    for policy in ("convert", "flag"):
        cfg = DecodeConfig(resolution=64, min_size=16, batch_size=4, backend="dali", icc=policy)
        (batch,) = decode_batches(items, cfg, dali=resolve_dali(cfg, "cpu"), num_workers=1)
        rows = {k: (batch["rgb_BHW3"][i].astype(int), batch.meta[i]) for i, k in enumerate(batch.keys)}
        assert batch.num_kept == 2 and rows["plain"][1]["decoder"] == "dali-cpu"
        px, meta = rows["adobe"]
        assert meta["icc_profile"] == "Test Adobe RGB (1998)"
        if policy == "convert":  # DALI does not colour-manage: the CPU path converts it
            assert meta["decoder"] == "pil" and meta["icc_converted"] is True
            assert np.abs(px - _to_srgb(raw).astype(int)).max() <= 1
        else:  # nothing to convert: DALI decodes it as it is
            assert meta["decoder"] == "dali-cpu" and meta["icc_converted"] is False
            assert np.abs(px - raw.astype(int)).max() <= 2
