"""RELIABILITY.md A7: the alpha is optionally kept as a mask (``decode.keep_alpha``: ``alpha_BHW``, ``alpha.png``)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import fixtures_images as fx
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig
from relight_stream.pipeline.decode import decode_batches, decode_writes
from relight_stream.pipeline.recipes import run_generate
from relight_stream.pipeline.sources import discover
from relight_stream.pipeline.verify import verify_dir


def _rgba(h: int = 48, w: int = 48) -> bytes:
    """Left half opaque noise, right half alpha 64 (a quarter visible)."""
    a = np.dstack([fx.noise(h, w, seed=3), np.full((h, w), 255, np.uint8)])
    a[:, w // 2 :, 3] = 64
    return fx.encode(Image.fromarray(a, "RGBA"), "PNG")


def _batch(tmp_path, files: dict[str, bytes], **kw):
    fx.write_tree(tmp_path / "in", files)
    items, _, _ = discover([str(tmp_path / "in")])
    cfg = DecodeConfig(resolution=48, min_size=16, batch_size=8, backend="pil", **kw)
    (batch,) = decode_batches(items, cfg, num_workers=1)
    return batch


def test_a7_keep_alpha_writes_alpha_bhw_as_float_0_to_1(tmp_path):
    batch = _batch(tmp_path, {"a.png": _rgba(), "la.png": fx.la_png(alpha=128), "opaque.jpg": fx.jpeg_bytes()},
                   keep_alpha=True)
    alpha = batch["alpha_BHW"]
    assert alpha.dtype == np.float32 and alpha.shape == (3, 48, 48) and 0 <= alpha.min() and alpha.max() <= 1
    a, la, opaque = (alpha[batch.keys.index(k)] for k in ("a", "la", "opaque"))
    assert (a[:, :24] == 1).all() and np.allclose(a[:, 24:], 64 / 255)
    assert np.allclose(la, 128 / 255) and (opaque == 1).all()
    assert batch.meta[batch.keys.index("a")]["has_alpha"] is True
    # the RGB is still composited onto the background
    rgb = batch["rgb_BHW3"][batch.keys.index("la")]
    assert np.abs(rgb.astype(int) - (200 * 128 + 128 * 127) / 255).max() <= 1


def test_alpha_follows_orientation_and_the_pad_letterbox(tmp_path):
    a = np.dstack([fx.noise(32, 64, seed=1), np.full((32, 64), 255, np.uint8)])
    a[:, :16, 3] = 0  # the left quarter is transparent
    im = Image.fromarray(a, "RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise: the transparent quarter ends up on top
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif.tobytes())
    batch = _batch(tmp_path, {"r.png": buf.getvalue()}, keep_alpha=True, resize="pad")
    al = batch["alpha_BHW"][0]  # 48×48: the 64×32 (w×h, upright 32×64) image fitted to 24×48, centred
    assert (al[:, :12] == 0).all() and (al[:, 36:] == 0).all()  # letterbox
    assert (al[:10, 13:35] == 0).all() and (al[14:, 13:35] == 1).all()  # the top quarter of the image


def test_without_keep_alpha_no_alpha_field_is_written(tmp_path):
    batch = _batch(tmp_path, {"a.png": _rgba()})
    assert "alpha_BHW" not in batch and decode_writes(DecodeConfig()) == ("rgb_BHW3",)


def test_alpha_png_member_in_generated_shards(tmp_path):
    import webdataset as wds

    fx.write_tree(tmp_path / "in", {"a.png": _rgba(), "b.jpg": fx.jpeg_bytes()})
    out = tmp_path / "out"
    dec = DecodeConfig(resolution=48, min_size=16, batch_size=4, backend="pil", num_workers=1, keep_alpha=True)
    cfg = GenerateConfig(inputs=[str(tmp_path / "in")], out=str(out), decode=dec, shard=ShardConfig())
    assert run_generate(cfg, RunConfig(seed=0), stages=[]) == 0
    samples = {s["__key__"]: s for s in wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False)}
    assert set(samples["a"]) >= {"alpha.png", "target.jpg", "meta.json"} and "alpha.png" in samples["b"]
    al = np.asarray(Image.open(io.BytesIO(samples["a"]["alpha.png"])))
    assert al.shape == (48, 48) and (al[:, :24] == 255).all() and (al[:, 24:] == 64).all()
    assert (np.asarray(Image.open(io.BytesIO(samples["b"]["alpha.png"]))) == 255).all()
    assert verify_dir(str(out))[0] == []


def test_keep_alpha_changes_the_config_hash_so_a_rerun_without_it_is_refused(tmp_path):
    fx.write_tree(tmp_path / "in", {"a.png": _rgba()})
    dec = {"resolution": 48, "min_size": 16, "backend": "pil", "num_workers": 1}
    out = str(tmp_path / "out")
    cfg = GenerateConfig(inputs=[str(tmp_path / "in")], out=out, decode=DecodeConfig(keep_alpha=True, **dec))
    assert run_generate(cfg, RunConfig(seed=0), stages=[]) == 0
    with pytest.raises(ValueError, match="config"):
        run_generate(GenerateConfig(inputs=cfg.inputs, out=out, decode=DecodeConfig(**dec)), RunConfig(seed=0),
                     stages=[])
