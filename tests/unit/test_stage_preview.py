"""Preview contact sheet: one row per sample (target | input | mask | normals | albedo | shading) + caption."""

from __future__ import annotations

import numpy as np
from PIL import Image

from relight_stream.pipeline.preview import COLUMNS, PreviewStage
from relight_stream.sample import SampleBatch


def _batch(n: int, side: int = 40) -> SampleBatch:
    b = SampleBatch(keys=[f"k{i}" for i in range(n)])
    rng = np.random.default_rng(0)
    b["rgb_BHW3"] = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    b["input_BHW3"] = np.full((n, side, side, 3), 128, np.uint8)
    b["mask_BHW"] = np.ones((n, side, side), np.float32)
    b["normals_BHW3"] = np.tile(np.float32([0, 0, 1]), (n, side, side, 1))
    b["albedo_BHW3"] = np.full((n, side, side, 3), 0.5, np.float32)
    b["shading_BHW3"] = np.full((n, side, side, 3), 2.0, np.float32)
    b["instruction_B"] = [f"relight sample {i} from the left" for i in range(n)]
    b.drop(1, "segment:empty_mask")
    return b


def test_preview_writes_the_first_n_kept_samples(tmp_path) -> None:
    stage = PreviewStage(2, tmp_path, tile=48)
    stage.process(_batch(3))
    stage.process(_batch(3))  # already full: ignored
    stage.teardown()
    sheet = np.asarray(Image.open(tmp_path / "preview.png"))
    assert sheet.shape[1] == 48 * len(COLUMNS) and sheet.shape[0] >= 2 * 48
    assert [r[1] for r in stage.rows] == ["k0", "k2"], "dropped samples are not previewed"
    tiles = stage.rows[0][0]
    assert (tiles[1] == 128).all(), "the input tile shows the input"
    assert (tiles[3][..., 2] == 255).all() and (tiles[3][..., 0] == 128).all(), "normals encoded as (n+1)/2"
    assert tiles[5].max() == 255, "shading is exposure-normalised for display"


def test_preview_zero_writes_nothing(tmp_path) -> None:
    stage = PreviewStage(0, tmp_path)
    stage.process(_batch(2))
    stage.teardown()
    assert not (tmp_path / "preview.png").exists()
