"""RELIABILITY.md A13: a decoder that returns an all-zero or constant image is caught, recorded and counted."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fixtures_images as fx
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig
from relight_stream.pipeline import decode_cpu
from relight_stream.pipeline.decode import DecodeError, _constant_rows, decode_batches, decode_image, is_constant
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
