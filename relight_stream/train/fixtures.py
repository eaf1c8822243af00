"""Synthetic triplet shards for tests, demos and ``bench train`` (no download, no generate run needed).

Writes ``shard-NNNNNN.tar`` files in the ARCHITECTURE.md §5 layout from scikit-image's bundled photos: the
target is the photo, the input is the photo lit by a directional ramp (in linear light) inside an elliptical
subject mask, composited on sRGB grey 128. With ``consistency=True`` each sample also has
``input_l1/l2/l12.jpg`` (two ramps and their linear sum).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from relight_stream.keys import sample_rng

INSTRUCTIONS = ("light from the left", "soft light from above", "warm light from the right", "frontal studio light")


def _jpeg(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _photos(resolution: int) -> list[np.ndarray]:
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        img = getattr(data, name)()
        img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(img).resize((resolution, resolution), Image.BICUBIC)))
    return out


def _relit(lin: np.ndarray, mask: np.ndarray, gain: np.ndarray) -> np.ndarray:
    from relight_stream.kernels.color import linear_to_srgb_u8
    from relight_stream.kernels.render import composite

    return linear_to_srgb_u8(composite(np.clip(lin * gain[..., None], 0, 1).astype(np.float32), mask))


def write_synthetic_shards(out: str | Path, *, num_samples: int = 16, per_shard: int = 8, resolution: int = 64,
                           consistency: bool = False, seed: int = 0) -> list[str]:
    """Write ``ceil(num_samples / per_shard)`` shards; returns their paths."""
    import webdataset as wds

    from relight_stream.kernels.color import srgb_to_linear

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photos = _photos(resolution)
    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32) / max(resolution - 1, 1)
    mask = (((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.45) ** 2 <= 1).astype(np.float32)
    paths = []
    for s in range(0, num_samples, per_shard):
        path = out / f"shard-{s // per_shard:06d}.tar"
        with wds.TarWriter(str(path), mtime=0) as sink:
            for i in range(s, min(s + per_shard, num_samples)):
                key = f"s{i:05d}"
                rng = sample_rng(seed, key, "fixture")
                photo = photos[i % len(photos)]
                lin = srgb_to_linear(photo)
                az = float(rng.uniform(0, 2 * np.pi))
                ramp1 = np.clip(0.6 + 0.8 * ((xx - 0.5) * np.cos(az) + (0.5 - yy) * np.sin(az)), 0.05, 2.0)
                ramp2 = np.clip(0.6 - 0.8 * ((xx - 0.5) * np.cos(az) + (0.5 - yy) * np.sin(az)), 0.05, 2.0)
                text = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
                sample = {"__key__": key, "input.jpg": _jpeg(_relit(lin, mask, ramp1)), "target.jpg": _jpeg(photo),
                          "instruction.txt": text.encode(),
                          "meta.json": json.dumps({"key": key, "azimuth_rad": az, "fixture": True}).encode()}
                if consistency:
                    sample["input_l1.jpg"] = sample["input.jpg"]
                    sample["input_l2.jpg"] = _jpeg(_relit(lin, mask, ramp2))
                    sample["input_l12.jpg"] = _jpeg(_relit(lin, mask, ramp1 + ramp2))
                sink.write(sample)
        paths.append(str(path))
    return paths
