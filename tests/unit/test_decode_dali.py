"""Batch decode with DALI (CPU operators here) and the per-sample CPU fallback (RELIABILITY.md A2, A4, A8, A12)."""

from __future__ import annotations

import numpy as np
import pytest

import fixtures_images as fx
from relight_stream.config import DecodeConfig
from relight_stream.pipeline.decode import decode_batches, decode_image, resolve_dali
from relight_stream.pipeline.sources import discover

pytest.importorskip("nvidia.dali")


def _items(tmp_path, files: dict[str, bytes]):
    fx.write_tree(tmp_path / "in", files)
    items, _, _ = discover([str(tmp_path / "in")])
    return items


def _decode_all(items, cfg):
    dali = resolve_dali(cfg, "cpu")
    batches = list(decode_batches(items, cfg, seed=3, dali=dali, num_workers=2))
    return dali, batches


def test_a12_one_corrupt_jpeg_in_a_dali_batch_of_64_drops_only_that_one(tmp_path):
    files = {f"{i:03d}.jpg": fx.jpeg_bytes(fx.noise(64, 64, seed=i)) for i in range(64)}
    files["031.jpg"] = fx.jpeg_corrupt_tables(files["031.jpg"])
    cfg = DecodeConfig(resolution=64, min_size=16, batch_size=64, backend="dali")
    dali, (batch,) = _decode_all(_items(tmp_path, files), cfg)
    assert dali is not None and dali.name == "dali-cpu"
    assert batch.num_kept == 63 and batch.drop_reason[31] == "decode:corrupt" and batch.status(31) == "skipped"
    assert {batch.meta[i]["decoder"] for i in batch.kept()} == {"cv2"}  # the failed DALI batch, redone per sample
    assert (batch["rgb_BHW3"][31] == 0).all() and batch["rgb_BHW3"].shape == (64, 64, 64, 3)
    # without the bad file the same batch stays on DALI
    del files["031.jpg"]
    (tmp_path / "in" / "031.jpg").unlink()
    _, (batch,) = _decode_all(_items(tmp_path, files), cfg)
    assert batch.num_kept == 63 and {m["decoder"] for m in batch.meta} == {"dali-cpu"}


def test_dali_and_cpu_paths_agree_and_route_by_content(tmp_path):
    files = {f"o{o}.jpg": fx.jpeg_bytes(fx.quadrants(64, 96), quality=95, orientation=o) for o in range(1, 9)}
    files.update({"cmyk.jpg": fx.cmyk_jpeg(), "png_named.jpg": fx.png_bytes(), "cut.jpg": fx.truncated(fx.jpeg_bytes()),
                  "gray.jpg": fx.gray("JPEG"), "photo.jpg": fx.jpeg_bytes(fx.noise(80, 120, seed=5))})
    cfg = DecodeConfig(resolution=64, min_size=16, batch_size=8, backend="dali")
    items = _items(tmp_path, files)
    _, batches = _decode_all(items, cfg)
    rows = {k: (b["rgb_BHW3"][i], b.meta[i], b.drop_reason[i]) for b in batches for i, k in enumerate(b.keys)}
    assert rows["cut"][2] == "decode:truncated"  # never handed to DALI, which would fill it silently
    assert rows["png_named"][1]["ext_mismatch"] is True and rows["png_named"][1]["decoder"] == "cv2"  # not DALI
    assert rows["gray"][1]["decoder"] == "dali-cpu"
    assert rows["cmyk"][1]["decoder"] == "pil"
    kept = [m for m, r in ((v[1], v[2]) for v in rows.values()) if r is None]
    assert len({tuple(sorted(m)) for m in kept}) == 1  # every path records the same meta keys
    for o in range(1, 9):
        assert rows[f"o{o}"][1]["decoder"] == "dali-cpu"
    for it in items:
        if it.key == "cut":
            continue
        ref, _ = decode_image(it.read(), cfg, ext=it.ext)
        got = rows[it.key][0].astype(int)
        # different resamplers: compare 8x8 block means (orientation errors would be off by ~255)
        diff = np.abs(got.reshape(8, 8, 8, 8, 3).mean((1, 3)) - ref.astype(int).reshape(8, 8, 8, 8, 3).mean((1, 3)))
        assert diff.max() < 24, (it.key, diff.max())


def test_batches_carry_meta_seeds_and_list_columns(tmp_path):
    fx.write_tree(tmp_path / "imgs", {"a.png": fx.png_bytes(), "b.png": b""})
    (tmp_path / "list.csv").write_text("image_path,lighting_score\nimgs/a.png,0.25\nimgs/b.png,0.5\n")
    items, _, _ = discover([str(tmp_path / "list.csv")])
    (batch,) = decode_batches(items, DecodeConfig(resolution=32, min_size=16, backend="pil"), seed=7)
    from relight_stream.keys import sample_seed

    assert batch.keys == ["imgs/a", "imgs/b"]
    assert batch.meta[0]["source_row"] == {"lighting_score": 0.25}
    assert batch.meta[0]["sample_seed"] == f"{sample_seed(7, 'imgs/a'):016x}"
    assert batch.meta[0]["orig_size"] == [64, 64] and batch.meta[0]["decoder"] == "cv2"
    assert batch.drop_reason == [None, "decode:empty_file"]


def test_explicit_dali_backend_that_is_missing_is_an_error(monkeypatch):
    import relight_stream.pipeline.decode_dali as dd

    monkeypatch.setattr(dd, "dali_available", lambda: (False, "not installed; pip install 'relight-stream[dali]'"))
    with pytest.raises(ValueError, match="relight-stream\\[dali\\]"):
        resolve_dali(DecodeConfig(backend="dali"), "cpu")
    assert resolve_dali(DecodeConfig(backend="auto"), "cpu") is None


@pytest.mark.gpu
def test_mixed_decode_keeps_the_batch_on_the_gpu_and_matches_the_cpu_path(tmp_path):
    files = {f"{i:02d}.jpg": fx.jpeg_bytes(fx.noise(96, 128, seed=i)) for i in range(6)}
    files["bad.jpg"] = fx.jpeg_corrupt_tables(files["00.jpg"])
    files["p.png"] = fx.png_bytes()
    items = _items(tmp_path, files)
    # batch 1 = 00..03 (all decoded by nvJPEG), batch 2 = 04, 05, bad, p (DALI fails on bad: CPU fallback)
    cfg = DecodeConfig(resolution=64, min_size=16, batch_size=4, backend="dali")
    dali = resolve_dali(cfg, "cuda")
    assert dali.name == "dali-mixed"
    gpu = list(decode_batches(items, cfg, dali=dali))
    cpu = list(decode_batches(items, cfg, dali=None))
    assert [m.get("decoder") for m in gpu[0].meta] == ["dali-mixed"] * 4  # the GPU decode itself is compared
    for g, c in zip(gpu, cpu, strict=True):
        assert g["rgb_BHW3"].is_cuda and g.drop_reason == c.drop_reason
        diff = np.abs(g["rgb_BHW3"].cpu().numpy().astype(int) - c["rgb_BHW3"].astype(int))
        assert diff.mean() < 3  # the same square (square_graph); nvJPEG's IDCT and DALI's filters differ a little


@pytest.mark.gpu
def test_mixed_decode_checks_constant_rows_and_keeps_alpha_on_the_gpu(tmp_path, monkeypatch):
    import torch

    files = {"photo.jpg": fx.jpeg_bytes(fx.noise(96, 128, seed=1)), "black.jpg": fx.jpeg_bytes(np.zeros((64, 64, 3),
                                                                                                        np.uint8))}
    items = _items(tmp_path, files)
    cfg = DecodeConfig(resolution=64, min_size=16, batch_size=4, backend="dali", keep_alpha=True)
    dali = resolve_dali(cfg, "cuda")
    (batch,) = decode_batches(items, cfg, dali=dali)
    assert batch.num_kept == 2 and batch["alpha_BHW"].is_cuda and bool((batch["alpha_BHW"] == 1).all())
    monkeypatch.setattr(type(dali), "decode", lambda self, blobs, pool=None: torch.zeros(
        (len(blobs), 64, 64, 3), dtype=torch.uint8, device="cuda"))
    (batch,) = decode_batches(items, cfg, dali=dali)
    assert dict(zip(batch.keys, batch.drop_reason)) == {"black": None, "photo": "decode:suspicious_decode"}


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("res", [64, 200])
def test_the_gpu_resize_graph_makes_the_cpu_path_square(mode, res):
    """The mixed pipeline resizes in DALI (square_graph); the same graph on DALI's CPU operators must give the
    square fit_square gives: same crop window, same letterbox rows and columns, pixels within a level or two."""
    import cv2

    from relight_stream.pipeline.decode_dali import DaliDecoder

    shapes = [(96, 128), (131, 77), (64, 64), (300, 180)]
    imgs = [cv2.GaussianBlur(fx.noise(h, w, seed=k), (0, 0), 2) for k, (h, w) in enumerate(shapes)]
    blobs = [fx.jpeg_bytes(a) for a in imgs]
    blobs.append(fx.jpeg_bytes(imgs[0], orientation=6))  # EXIF rotation: the header's shape is pre-rotation
    cfg = DecodeConfig(resolution=res, resize=mode, batch_size=len(blobs))
    graph = DaliDecoder(cfg, device="cpu", dali_resize=True).decode(blobs)
    opencv = DaliDecoder(cfg, device="cpu").decode(blobs)
    assert graph.shape == opencv.shape == (len(blobs), res, res, 3)
    for g, o in zip(graph, opencv, strict=True):
        assert np.abs(g.astype(int) - o.astype(int)).mean() < 1.5
        if mode == "pad":
            for axis in ((1, 2), (0, 2)):  # letterboxed rows, then columns
                assert np.array_equal((g != 128).any(axis=axis), (o != 128).any(axis=axis))
