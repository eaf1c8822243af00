"""Contact sheet of generated triplets: one row per sample, ``target | input | mask | normals | albedo | shading``
with the instruction as caption; written as ``<out>/preview.png`` (``generate --preview N``, ``demo``).

Reads ``rgb_BHW3`` (the target, sRGB uint8), ``input_BHW3`` (sRGB uint8), ``mask_BHW`` (0–1), ``normals_BHW3``
(unit, camera frame), ``albedo_BHW3`` and ``shading_BHW3`` (linear float) and ``instruction_B``. Linear images are
encoded to sRGB for display; the shading is divided by its 99th percentile so that it is visible.
"""

from __future__ import annotations

import io
import logging
import os
import textwrap
from pathlib import Path

import numpy as np

from relight_stream.fileio import atomic_write
from relight_stream.kernels.color import linear_to_srgb_u8
from relight_stream.kernels.normals import normals_to_u8
from relight_stream.kernels.xp import asnumpy
from relight_stream.log import rank_world
from relight_stream.pipeline.stage import Stage
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

COLUMNS = ("target", "input", "mask", "normals", "albedo", "shading")
TILE = 192
CAPTION_H = 34


def preview_tiles(batch: SampleBatch, i: int, *, tile: int = TILE) -> list[np.ndarray]:
    """The six sRGB uint8 tiles (``tile``², HxWx3) of sample ``i``; a missing field gives a black tile."""
    import cv2

    def get(name: str) -> np.ndarray | None:
        return asnumpy(batch[name][i]) if name in batch else None

    mask = get("mask_BHW")
    mask_u8 = None if mask is None else (np.clip(mask, 0, 1) * 255 + 0.5).astype(np.uint8)
    shading = get("shading_BHW3")
    if shading is not None:
        shading = linear_to_srgb_u8(shading / max(float(np.percentile(shading, 99)), 1e-6))
    imgs = {
        "target": get("rgb_BHW3"),
        "input": get("input_BHW3"),
        "mask": None if mask_u8 is None else np.repeat(mask_u8[..., None], 3, -1),
        "normals": None if get("normals_BHW3") is None else normals_to_u8(get("normals_BHW3")),
        "albedo": None if get("albedo_BHW3") is None else linear_to_srgb_u8(get("albedo_BHW3")),
        "shading": shading,
    }
    out = []
    for name in COLUMNS:
        img = imgs[name]
        if img is None:
            out.append(np.zeros((tile, tile, 3), np.uint8))
        else:
            out.append(cv2.resize(np.ascontiguousarray(img), (tile, tile), interpolation=cv2.INTER_AREA))
    return out


def contact_sheet(rows: list[tuple[list[np.ndarray], str, str]], *, tile: int = TILE) -> np.ndarray:
    """Assemble rows of (tiles, key, instruction) into one sRGB uint8 image with a header and captions."""
    from PIL import Image, ImageDraw

    width = tile * len(COLUMNS)
    height = 18 + len(rows) * (tile + CAPTION_H)
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(COLUMNS):
        draw.text((c * tile + 4, 3), name, fill=(230, 230, 230))
    y = 18
    chars = max(20, width // 6)
    for tiles, key, text in rows:
        sheet.paste(Image.fromarray(np.concatenate(tiles, axis=1)), (0, y))
        caption = textwrap.shorten(f"{key}: {text}", width=2 * chars, placeholder=" ...")
        for k, line in enumerate(textwrap.wrap(caption, chars)[:2]):
            draw.text((4, y + tile + 3 + 14 * k), line, fill=(240, 240, 200))
        y += tile + CAPTION_H
    return np.asarray(sheet)


class PreviewStage(Stage):
    """Collects the first ``num`` kept samples and writes ``preview.png`` into ``out_dir`` at teardown (rank 0)."""

    name = "preview"
    reads = ("rgb_BHW3", "input_BHW3", "mask_BHW", "instruction_B")
    writes = ()

    def __init__(self, num: int, out_dir: str | os.PathLike[str], *, tile: int = TILE) -> None:
        if num < 0:
            raise ValueError(f"preview must be >= 0, got {num}")
        self.num, self.out_dir, self.tile = num, Path(out_dir), tile
        self.rows: list[tuple[list[np.ndarray], str, str]] = []
        self.path: Path | None = None

    def describe(self) -> str:
        return f"first {self.num} samples -> {self.out_dir / 'preview.png'}"

    def process(self, batch: SampleBatch) -> SampleBatch:
        if len(self.rows) >= self.num or rank_world()[0] != 0:
            return batch
        for i in batch.kept():
            if len(self.rows) >= self.num:
                break
            self.rows.append((preview_tiles(batch, i, tile=self.tile), batch.keys[i], batch["instruction_B"][i]))
        return batch

    def teardown(self) -> None:
        if self.rows:
            self.path = write_preview(self.rows, self.out_dir / "preview.png", tile=self.tile)

    def extend(self, rows: list[tuple[list[np.ndarray], str, str]]) -> None:
        """Add rows gathered elsewhere (e.g. from worker processes), keeping the first ``num``."""
        self.rows.extend(rows[: max(0, self.num - len(self.rows))])


def write_preview(rows: list[tuple[list[np.ndarray], str, str]], path: Path, *, tile: int = TILE) -> Path:
    """Write the contact sheet atomically (temporary name, then rename)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(contact_sheet(rows, tile=tile)).save(buf, format="PNG")
    atomic_write(str(path), buf.getvalue())
    log.info("wrote contact sheet of %d samples to %s", len(rows), path)
    return path
