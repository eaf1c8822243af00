"""RELIABILITY.md A13: a decoder that returns an all-zero or constant image is caught, recorded and counted."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import fixtures_images as fx
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig
from relight_stream.pipeline import decode_cpu
from relight_stream.pipeline.decode import (
    DecodeError,
    _constant_rows,
    decode_batches,
    decode_image,
    disagrees,
    is_constant,
)
from relight_stream.pipeline.recipes import run_generate
from relight_stream.pipeline.sources import discover

CFG = DecodeConfig(resolution=32, min_size=16, backend="pil")


def _zeros_for(monkeypatch, name: str, bad: bytes | None = None) -> None:
    """Make ``decode_cpu.<name>`` return an all-zero image (for ``bad`` only, when given)."""
    real = getattr(decode_cpu, name)

    def broken(data, *a, **k):
        out = real(data, *a, **k)
        return np.zeros_like(out) if bad is None or data == bad else out

    monkeypatch.setattr(decode_cpu, name, broken)


def test_a13_an_all_zero_opencv_decode_of_a_real_photo_is_suspicious(monkeypatch):
    _zeros_for(monkeypatch, "_pixels_cv2_8bit")
    for data in (fx.jpeg_bytes(fx.noise(48, 48, seed=1)), fx.png_bytes(fx.noise(48, 48, seed=2))):
        with pytest.raises(DecodeError) as ei:
            decode_image(data, CFG)
        assert ei.value.code == "suspicious_decode" and "cv2" in ei.value.detail


def test_a13_a_constant_pillow_decode_is_cross_checked_with_opencv(monkeypatch):
    real = decode_cpu._pixels_pil
    monkeypatch.setattr(decode_cpu, "_pixels_pil", lambda *a: np.full_like(real(*a), 7))
    rgba = fx.encode(np.dstack([fx.noise(48, 48), np.full((48, 48), 200, np.uint8)]), "PNG")
    with pytest.raises(DecodeError) as ei:
        decode_image(rgba, CFG)
    assert ei.value.code == "suspicious_decode" and "pil" in ei.value.detail


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a13_a_file_that_really_is_one_colour_is_not_flagged(fmt):
    for value in (0, 128):
        rgb, info = decode_image(fx.encode(np.full((48, 64, 3), value, np.uint8), fmt), CFG)
        assert (rgb == value).all() and info["decoder"] == "cv2"
    rgb, _ = decode_image(fx.rgba_png(alpha=0), CFG)  # fully transparent: the background, and genuinely so
    assert (rgb == 128).all()


def test_a13_a_constant_decode_of_another_colour_than_the_file_is_suspicious(monkeypatch):
    _zeros_for(monkeypatch, "_pixels_cv2_8bit")
    with pytest.raises(DecodeError, match="suspicious_decode"):
        decode_image(fx.png_bytes(np.full((48, 48, 3), 128, np.uint8)), CFG)
    rgb, _ = decode_image(fx.png_bytes(np.zeros((48, 48, 3), np.uint8)), CFG)  # black, and really black
    assert (rgb == 0).all()


ADOBE = fx.rgb_icc_profile()
COLOUR = (60, 160, 90)


def _adobe_to_srgb(colour: tuple[int, int, int]) -> np.ndarray:
    """LittleCMS's sRGB value of an Adobe RGB colour (the reference for a converted pixel)."""
    from PIL import Image, ImageCms

    src = ImageCms.ImageCmsProfile(io.BytesIO(ADOBE))
    one = Image.new("RGB", (1, 1), colour)
    return np.asarray(ImageCms.profileToProfile(one, src, ImageCms.createProfile("sRGB")))[0, 0]


def _solid_files() -> dict[str, bytes]:
    solid = np.full((48, 48, 3), COLOUR, np.uint8)
    return {"g30000.png": fx.png16_bytes(np.full((48, 48), 30000, np.uint16)),  # I;16 in Pillow
            "g200.png": fx.png16_bytes(np.full((48, 48), 200, np.uint16)),  # under 256: still 16-bit data
            "adobe_j.jpg": fx.jpeg_bytes(solid, quality=100, icc=ADOBE),
            "adobe_p.png": fx.encode(solid, "PNG", icc_profile=ADOBE)}


def test_a13_a_constant_16bit_gray_png_is_not_flagged():
    # Pillow's convert() clips I;16 to 255: the second opinion must scale it like the primary path, (v + 128) // 257
    files = _solid_files()
    for name, level in (("g30000.png", (30000 + 128) // 257), ("g200.png", (200 + 128) // 257)):
        rgb, info = decode_image(files[name], CFG)
        assert info["bit_depth"] == 16 and info["decoder"] == "cv2" and (rgb == level).all(), name


@pytest.mark.parametrize("name", ["adobe_j.jpg", "adobe_p.png"])
def test_a13_a_constant_adobe_rgb_image_converted_to_srgb_is_not_flagged(name):
    rgb, info = decode_image(_solid_files()[name], CFG)  # icc="convert" is the default
    expected = _adobe_to_srgb(COLOUR)
    assert info["icc_converted"] is True and info["decoder"] == "pil"
    assert np.abs(expected.astype(int) - COLOUR).max() > 20  # the conversion really moves the colour
    assert np.abs(rgb.astype(int) - expected.astype(int)).max() <= 1


def test_a13_a_wrong_constant_decode_of_an_icc_image_is_still_caught(monkeypatch):
    real = decode_cpu._pixels_pil
    monkeypatch.setattr(decode_cpu, "_pixels_pil", lambda *a: np.full_like(real(*a), 7))
    files = _solid_files()
    photo = fx.encode(fx.noise(48, 48, seed=3), "PNG", icc_profile=ADOBE)
    for data in (files["adobe_p.png"], files["adobe_j.jpg"], photo):  # another colour, or varying pixels
        with pytest.raises(DecodeError, match="suspicious_decode"):
            decode_image(data, CFG)


def test_disagrees_can_ignore_the_colour_when_it_cannot_be_compared():
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 50, np.uint8)
    assert disagrees(a, b) and not disagrees(a, b, colour=False) and not disagrees(a, a)
    assert disagrees(a, fx.noise(8, 8), colour=False) and not disagrees(a, None)


def test_a13_constant_16bit_and_icc_images_pass_through_a_dali_batch(tmp_path):
    pytest.importorskip("nvidia.dali")
    from relight_stream.pipeline.decode import resolve_dali

    files = _solid_files()
    fx.write_tree(tmp_path / "in", files)
    items, _, _ = discover([str(tmp_path / "in")])
    for icc in ("convert", "flag"):
        cfg = DecodeConfig(resolution=32, min_size=16, batch_size=8, backend="dali", icc=icc)
        (batch,) = decode_batches(items, cfg, dali=resolve_dali(cfg, "cpu"), num_workers=1)
        assert batch.num_kept == 4, batch.drop_reason
        rows = {k: (batch["rgb_BHW3"][i].astype(int), batch.meta[i]) for i, k in enumerate(batch.keys)}
        assert (rows["g30000"][0] == (30000 + 128) // 257).all() and (rows["g200"][0] == 1).all()
        expected = _adobe_to_srgb(COLOUR) if icc == "convert" else np.array(COLOUR)
        assert rows["adobe_p"][1]["icc_converted"] == (icc == "convert")
        assert np.abs(rows["adobe_p"][0] - expected.astype(int)).max() <= 1
        px, meta = rows["adobe_j"]
        if icc == "convert":
            assert meta["decoder"] == "pil" and np.abs(px - _adobe_to_srgb(COLOUR).astype(int)).max() <= 1
        else:  # kept raw: DALI decodes it, and Pillow's unmanaged second opinion agrees
            assert meta["decoder"] == "dali-cpu" and np.abs(px - COLOUR).max() <= 2


def test_a13_suspicious_decodes_are_recorded_per_sample_and_counted_in_stats(tmp_path, monkeypatch):
    src = tmp_path / "in"
    files = {f"{i}.jpg": fx.jpeg_bytes(fx.noise(48, 48, seed=i)) for i in range(4)}
    files["flat.png"] = fx.png_bytes(np.full((48, 48, 3), 90, np.uint8))
    fx.write_tree(src, files)
    _zeros_for(monkeypatch, "_pixels_cv2_8bit", bad=files["2.jpg"])
    cfg = GenerateConfig(inputs=[str(src)], out=str(tmp_path / "out"), shard=ShardConfig(samples_per_shard=8),
                         decode=DecodeConfig(resolution=32, min_size=16, batch_size=4, backend="pil", num_workers=1))
    assert run_generate(cfg, RunConfig(seed=0), stages=[]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert (stats["ok"], stats["skipped"]) == (4, 1) and stats["drops"] == {"decode:suspicious_decode": 1}
    rows = json.loads((tmp_path / "out" / "shard-000000.json").read_text())["rows"]
    assert [(r["key"], r["status"]) for r in rows if r["reason"]] == [("2", "skipped")]


def test_a13_a_constant_dali_output_is_checked_against_pillow(tmp_path, monkeypatch):
    pytest.importorskip("nvidia.dali")
    from relight_stream.pipeline import decode_dali
    from relight_stream.pipeline.decode import resolve_dali

    flat = np.full((48, 48, 3), 60, np.uint8)
    files = {"photo.jpg": fx.jpeg_bytes(fx.noise(48, 48, seed=5)), "flat.jpg": fx.jpeg_bytes(flat),
             "black.jpg": fx.jpeg_bytes(flat * 0)}
    fx.write_tree(tmp_path / "in", files)
    items, _, _ = discover([str(tmp_path / "in")])
    cfg = DecodeConfig(resolution=32, min_size=16, batch_size=4, backend="dali")
    (batch,) = decode_batches(items, cfg, dali=resolve_dali(cfg, "cpu"), num_workers=1)  # the real DALI first
    assert batch.num_kept == 3 and {m["decoder"] for m in batch.meta} == {"dali-cpu"}
    # a broken DALI: every image comes back as zeros
    monkeypatch.setattr(decode_dali.DaliDecoder, "decode",
                        lambda self, blobs, pool=None: np.zeros((len(blobs), 32, 32, 3), np.uint8))
    (batch,) = decode_batches(items, cfg, dali=resolve_dali(cfg, "cpu"), num_workers=1)
    reasons = dict(zip(batch.keys, batch.drop_reason))
    # the photo has varying pixels and the flat file another colour; the black file really is all zeros
    assert reasons == {"black": None, "flat": "decode:suspicious_decode", "photo": "decode:suspicious_decode"}


def test_constant_checks_on_numpy_and_torch_batches():
    a = np.zeros((3, 16, 16, 3), np.uint8)
    a[1, 5, 7, 2] = 1
    a[2] = (10, 20, 30)
    assert [is_constant(x) for x in a] == [True, False, True] and _constant_rows(a) == [0, 2]
    torch = pytest.importorskip("torch")
    assert _constant_rows(torch.from_numpy(a)) == [0, 2]  # the GPU (DALI mixed) path, here on the CPU
