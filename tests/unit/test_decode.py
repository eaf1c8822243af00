"""Per-sample decode policy (RELIABILITY.md A1–A11; A14 in test_decode_icc.py): reason codes, orientation, bit depth,
alpha, animation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

import fixtures_images as fx
from relight_stream.config import DecodeConfig
from relight_stream.pipeline.decode import DecodeError, decode_image, fit_square, orient

CFG = DecodeConfig(resolution=64, min_size=16, backend="pil")


def _code(data: bytes, cfg: DecodeConfig = CFG, ext: str = "") -> str:
    with pytest.raises(DecodeError) as ei:
        decode_image(data, cfg, ext=ext)
    return ei.value.code


def test_a1_zero_byte_file_is_empty_file():
    assert _code(b"", ext="png") == "empty_file"


def test_a2_text_named_jpg_is_unidentified_and_misnamed_images_decode_by_content():
    assert _code(b"<html><body>404</body></html>", ext="jpg") == "unidentified"
    png = fx.png_bytes()
    rgb, info = decode_image(png, CFG, ext="jpg")
    assert info["ext_mismatch"] is True and info["format"] == "PNG" and rgb.shape == (64, 64, 3)
    _, info = decode_image(fx.jpeg_bytes(), CFG, ext="png")
    assert info["ext_mismatch"] is True and info["format"] == "JPEG"
    _, info = decode_image(png, CFG, ext="png")
    assert info["ext_mismatch"] is False


def test_a3_truncated_files_are_rejected_unless_opted_in_and_bad_huffman_still_decodes():
    jpg, png = fx.jpeg_bytes(), fx.png_bytes()
    assert _code(fx.truncated(jpg, 0.5)) == "truncated"
    assert _code(fx.truncated(png, 0.5)) == "truncated"
    assert _code(fx.png_without_iend(png)) == "truncated"
    assert _code(fx.png_bad_crc(png)) == "corrupt"
    rgb, info = decode_image(fx.truncated(jpg, 0.5), DecodeConfig(resolution=64, min_size=16, allow_truncated=True))
    assert info["truncated_filled"] is True and rgb.shape == (64, 64, 3)
    rgb, info = decode_image(fx.jpeg_bad_huffman(), CFG)
    assert rgb.shape == (64, 64, 3) and info["truncated_filled"] is False


def test_a3_allow_truncated_fills_cut_pngs_and_records_it_but_a_bad_crc_stays_corrupt():
    allow = DecodeConfig(resolution=64, min_size=16, backend="pil", allow_truncated=True)
    a = fx.noise(64, 64, seed=9)
    png = fx.png_bytes(a)
    rgb, info = decode_image(fx.png_without_iend(png), allow)  # every pixel is there, only IEND is missing
    assert info["truncated_filled"] is True and (rgb == a).all()
    rgb, info = decode_image(fx.truncated(png, 0.5), allow)
    assert info["truncated_filled"] is True and rgb.shape == (64, 64, 3)
    assert _code(fx.png_bad_crc(png), allow) == "corrupt"  # damaged data, not a cut file: never filled
    _, info = decode_image(png, allow)
    assert info["truncated_filled"] is False


@pytest.mark.parametrize("adobe", [True, False])
def test_a4_cmyk_jpeg_matches_the_pil_reference(adobe):
    data = fx.cmyk_jpeg(adobe=adobe)
    rgb, info = decode_image(data, CFG)
    ref = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB"))
    assert info["source_mode"] == "CMYK"
    assert np.abs(rgb.astype(int) - fit_square(ref, CFG).astype(int)).max() <= 1


@pytest.mark.parametrize("factory", [fx.png16_rgb_ramp, fx.png16_gray_ramp])
def test_a5_16bit_png_keeps_all_256_levels(factory):
    rgb, info = decode_image(factory(), DecodeConfig(resolution=256, min_size=16))
    assert info["bit_depth"] == 16
    assert len(np.unique(rgb)) == 256
    assert (rgb[0, :, 0] == np.arange(256)).all()  # v·257 maps exactly back to level v


def test_a6_palette_png_with_trns_composites_onto_the_background_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's "Palette images with Transparency expressed in bytes ..."
        rgb, info = decode_image(fx.palette_trns_png(), CFG)
    assert info["has_alpha"] is True and info["source_mode"] == "P"
    assert (rgb[:, :30] == 128).all() and (rgb[:, 34:] == (255, 0, 0)).all()


def test_a6_palette_with_per_index_byte_transparency_honours_every_alpha_without_warnings():
    p = np.zeros((64, 64), np.uint8)
    p[:, 32:], p[:16] = 1, 2
    img = Image.fromarray(p, "P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    data = fx.encode(img, "PNG", transparency=bytes([0, 255, 128]))  # a tRNS alpha per palette index
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb, info = decode_image(data, CFG)
    assert info["has_alpha"] is True
    bg, a = 128, 128
    assert (rgb[20:, :30] == bg).all() and (rgb[20:, 34:] == (255, 0, 0)).all()
    # out = (rgb·a + bg·(255 − a)) / 255, rounded: green at half alpha over grey
    assert (rgb[:14] == ((bg * (255 - a) + 127) // 255, (255 * a + bg * (255 - a) + 127) // 255,
                         (bg * (255 - a) + 127) // 255)).all()


def test_a7_rgba_la_and_gray_give_hxwx3_with_the_documented_background():
    white = DecodeConfig(resolution=64, min_size=16, background=(255, 255, 255))
    rgb, info = decode_image(fx.rgba_png(alpha=0), white)
    assert info["has_alpha"] and info["source_mode"] == "RGBA" and (rgb == 255).all()
    rgb, _ = decode_image(fx.rgba_png(alpha=255), CFG)
    assert (rgb == (255, 0, 0)).all()
    rgb, info = decode_image(fx.la_png(alpha=0), CFG)
    assert info["source_mode"] == "LA" and (rgb == 128).all()
    for fmt in ("PNG", "JPEG"):
        rgb, info = decode_image(fx.gray(fmt), CFG)
        assert rgb.shape == (64, 64, 3) and info["source_mode"] == "L" and not info["has_alpha"]
        assert np.abs(rgb.astype(int) - 77).max() <= 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a8_exif_orientation_matches_pil_exif_transpose(orientation):
    data = fx.jpeg_bytes(fx.quadrants(64, 96), quality=95, orientation=orientation)
    rgb, info = decode_image(data, CFG)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(__import__("io").BytesIO(data))).convert("RGB"))
    assert info["exif_orientation"] == orientation
    assert info["orig_size"] == [ref.shape[1], ref.shape[0]]
    assert np.abs(rgb.astype(int) - fit_square(ref, CFG).astype(int)).max() <= 1


def test_orient_is_exif_transpose_on_arrays():
    a = np.arange(2 * 3 * 1).reshape(2, 3, 1).astype(np.uint8)
    for o in range(1, 9):
        im = Image.fromarray(a[..., 0])
        im.getexif()[0x0112] = o
        ref = np.asarray(ImageOps.exif_transpose(im))
        assert (orient(a, o)[..., 0] == ref).all(), o


class _PixelDecode(BaseException):
    """Raised by the patched decoders (a BaseException: no ``except Exception`` in the decoder can swallow it)."""


def test_a9_decompression_bomb_and_over_limit_images_are_rejected_before_decode(monkeypatch):
    import cv2
    from PIL import ImageFile

    def no_pixels(*a, **k):
        raise _PixelDecode("pixel decode attempted")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)  # every Pillow plugin decodes through it
    monkeypatch.setattr(cv2, "imdecode", no_pixels)
    ok = DecodeConfig(resolution=64, min_size=16, max_pixels=128 * 128)
    rgba = fx.encode(np.dstack([fx.noise(128, 128), np.full((128, 128), 200, np.uint8)]), "PNG")  # Pillow's path
    for data in (fx.png_bytes(fx.noise(128, 128)), rgba):  # control: the patches do catch both decoders
        with pytest.raises(_PixelDecode):
            decode_image(data, ok)
    with pytest.raises(DecodeError) as ei:
        decode_image(fx.bomb_png(), CFG)  # 40k x 40k in the header: Pillow's bomb error
    assert ei.value.code == "too_large" and f"max_pixels {CFG.max_pixels}" in ei.value.detail
    small = DecodeConfig(resolution=64, min_size=16, max_pixels=100 * 100)
    for data in (fx.png_bytes(fx.noise(128, 128)), fx.jpeg_bytes(fx.noise(128, 128)), rgba):
        with pytest.raises(DecodeError) as ei:
            decode_image(data, small)
        assert ei.value.code == "too_large" and "max_pixels 10000" in ei.value.detail
    monkeypatch.undo()
    rgb, _ = decode_image(fx.png_bytes(fx.noise(128, 128)), ok)
    assert rgb.shape == (64, 64, 3)  # raising the limit lets it through


def test_a10_tiny_and_extreme_aspect_images_are_skipped():
    assert _code(fx.png_bytes(fx.noise(1, 1)), DecodeConfig(resolution=64)) == "too_small"
    assert _code(fx.png_bytes(fx.noise(16, 16)), DecodeConfig(resolution=64)) == "too_small"
    assert _code(fx.png_bytes(np.zeros((10, 8000, 3), np.uint8)), DecodeConfig(resolution=64)) == "too_small"
    assert _code(fx.png_bytes(fx.noise(64, 400)), DecodeConfig(resolution=64, min_size=32)) == "aspect_ratio"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_a11_animations_give_the_first_frame_or_are_skipped(fmt):
    data = fx.animated(fmt, n=3)
    rgb, info = decode_image(data, CFG)
    assert info["n_frames"] == 3 and rgb.shape == (64, 64, 3)
    assert np.abs(rgb.astype(int) - np.array(fx.QUADRANTS[0])).max() <= 8  # frame 0 is red
    assert _code(data, DecodeConfig(resolution=64, min_size=16, animated="skip")) == "animated"


def test_fit_square_crop_and_pad():
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, 20:60] = 255
    crop = fit_square(a, DecodeConfig(resolution=40))
    assert crop.shape == (40, 40, 3) and (crop == 255).all()  # the centred square
    pad = fit_square(a, DecodeConfig(resolution=40, resize="pad"))
    assert pad.shape == (40, 40, 3) and (pad[0] == 128).all() and (pad[20, 15:25] == 255).all()


def test_plain_jpeg_and_png_take_opencv_with_the_same_pixels_as_pil_and_the_rest_stays_on_pil():
    data = fx.jpeg_bytes(fx.noise(64, 64, seed=3))
    rgb, info = decode_image(data, CFG)
    ref = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB"))
    assert info["decoder"] == "cv2" and (rgb == ref).all()
    assert decode_image(fx.cmyk_jpeg(), CFG)[1]["decoder"] == "pil"
    png = fx.png_bytes(fx.noise(64, 64, seed=4))
    rgb, info = decode_image(png, CFG)
    assert info["decoder"] == "cv2" and (rgb == np.asarray(Image.open(__import__("io").BytesIO(png)))).all()
    assert decode_image(fx.rgba_png(), CFG)[1]["decoder"] == "pil"
