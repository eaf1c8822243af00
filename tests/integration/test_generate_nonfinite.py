"""``generate`` with a non-finite model/kernel output (RELIABILITY C9): the sample is recorded, never written."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

import relight_stream.pipeline.relight as R
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig
from relight_stream.pipeline.recipes import run_generate


def test_c9_nonfinite_shading_is_recorded_as_failed_and_not_written(tmp_path: Path, monkeypatch) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(3):  # a subject on a plain backdrop, found by the default (classical) segmenter
        img = np.full((96, 96, 3), (60, 90, 140), np.uint8)
        cv2.circle(img, (48, 52), 28, (210, 160, 110 - 20 * i), -1)
        cv2.imwrite(str(d / f"k{i}.png"), img)
    real_draw, real_render = R.RelightStage.draw, R.render_shading

    def draw(self, key, depth_scale, stream="relight"):  # tags k1's lights for the poisoned kernel
        return {**real_draw(self, key, depth_scale, stream), "_poison": key == "k1"}

    def render_shading(n, depth, params):
        sh, spec = real_render(n, depth, params)
        return (sh * np.float32(np.nan), spec) if params.get("_poison") else (sh, spec)

    monkeypatch.setattr(R.RelightStage, "draw", draw)
    monkeypatch.setattr(R, "render_shading", render_shading)
    out = tmp_path / "out"
    cfg = GenerateConfig(inputs=[str(d)], out=str(out), workers=1,
                         decode=DecodeConfig(resolution=96, min_size=16, backend="pil", batch_size=3, num_workers=0),
                         shard=ShardConfig(samples_per_shard=3))
    assert run_generate(cfg, RunConfig(seed=0)) == 0

    rec = json.loads((out / "shard-000000.json").read_text())
    rows = {r["key"]: r for r in rec["rows"]}
    assert rows["k1"]["status"] == "failed" and rows["k1"]["reason"] == "relight:nonfinite_output"
    assert rows["k1"]["detail"] == "shading_BHW3"
    assert rows["k0"]["status"] == rows["k2"]["status"] == "ok"
    with tarfile.open(out / "shard-000000.tar") as tf:
        written = {m.name.split(".")[0] for m in tf.getmembers()}
    assert written == {"k0", "k2"}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["drops"] == {"relight:nonfinite_output": 1} and stats["failed"] == 1
