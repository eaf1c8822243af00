"""Evaluate the classical segmenter on every photo scikit-image bundles (no download), at 256² and 512².

Prints one row per image and resolution: expected verdict (``keep`` = has a clear subject, ``drop`` = texture /
star field / uniform, ``either`` = ambiguous), the stage's verdict, the mask area and shape statistics, and the
prior's cues. With ``--png DIR`` writes ``DIR/<name>_<n>.png`` (photo | mask | photo x mask) to look at.

Usage: ``.venv/bin/python scripts/eval_segment.py [--sizes 256 512] [--png /tmp/seg] [--only chelsea,cat]``
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from relight_stream.config import SegmentConfig
from relight_stream.pipeline.segment import SegmentStage
from relight_stream.sample import SampleBatch


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[-1] == 4:  # composite RGBA on white
        a = img[..., 3:4].astype(np.float32) / 255
        img = (img[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def bundled_images() -> list[tuple[str, str, np.ndarray]]:
    """``(name, expected, rgb)`` for scikit-image's bundled photos plus synthetic no-subject images."""
    from skimage import data

    chelsea = data.chelsea()
    rng = np.random.default_rng(0)
    rows = [
        ("astronaut", "keep", data.astronaut()),
        ("chelsea", "keep", chelsea),
        ("cat", "keep", data.cat()),  # scikit-image's cat() is chelsea again
        ("cat_closeup", "either", chelsea[30:270, 90:330]),  # all cat, no background: dropped
        ("coffee", "keep", data.coffee()),
        ("rocket", "keep", data.rocket()),
        ("camera", "keep", data.camera()),  # the cameraman (greyscale)
        ("horse", "keep", (~data.horse()).astype(np.uint8) * 255),  # a black silhouette on white
        ("motorcycle", "keep", data.stereo_motorcycle()[0]),
        ("logo", "keep", data.logo()),  # an illustration on transparent background
        ("colorwheel", "either", data.colorwheel()),
        ("coins", "either", data.coins()),
        ("retina", "either", data.retina()),
        ("immunohistochemistry", "either", data.immunohistochemistry()),
        ("hubble_deep_field", "drop", data.hubble_deep_field()),
        ("moon", "either", data.moon()),
        ("brick", "drop", data.brick()),
        ("grass", "drop", data.grass()),
        ("gravel", "drop", data.gravel()),
        ("flat", "drop", np.full((256, 256, 3), 128, np.uint8)),
        ("noise", "drop", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
    ]
    return [(n, e, _rgb(img)) for n, e, img in rows]


def square(img: np.ndarray, n: int) -> np.ndarray:
    """Centre square crop resized to ``n``² (what ``generate --resolution n`` feeds the stage)."""
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA if s > n else cv2.INTER_LINEAR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--png", default=None, help="folder for photo|mask|cut-out PNGs")
    ap.add_argument("--only", default=None, help="comma-separated names")
    args = ap.parse_args()
    images = bundled_images()
    if args.only:
        images = [r for r in images if r[0] in args.only.split(",")]
    if args.png:
        os.makedirs(args.png, exist_ok=True)
    stage = SegmentStage(SegmentConfig())
    stage.setup()
    print(f"{'image':22s} {'n':>4s} {'expect':6s} {'verdict':24s} {'area':>6s} {'border':>6s} {'comp':>4s} "
          f"{'solid':>5s} {'faces':>5s} {'ms':>5s}")
    bad = 0
    for n in args.sizes:
        for name, expect, img in images:
            rgb = square(img, n)
            batch = SampleBatch(keys=[name])
            batch["rgb_BHW3"] = rgb[None]
            t = time.perf_counter()
            stage.process(batch)
            ms = 1e3 * (time.perf_counter() - t)
            rec = batch.meta[0].get("segment", {})
            verdict = "keep" if batch.keep_B[0] else batch.drop_reason[0]
            ok = expect == "either" or (expect == "keep") == bool(batch.keep_B[0])
            bad += not ok
            print(f"{name:22s} {n:4d} {expect:6s} {verdict:24s} {rec.get('area', float('nan')):6.3f} "
                  f"{rec.get('border_fraction', float('nan')):6.3f} {rec.get('components', -1):4d} "
                  f"{rec.get('solidity', float('nan')):5.2f} {len(rec.get('faces', [])):5d} {ms:5.0f}"
                  f"{'' if ok else '  <-- unexpected'}")
            if args.png:
                m = batch["mask_BHW"][0]
                cut = (rgb * m[..., None] + 128 * (1 - m[..., None])).astype(np.uint8)
                mm = np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2)
                cv2.imwrite(os.path.join(args.png, f"{name}_{n}.png"),
                            cv2.cvtColor(np.concatenate([rgb, mm, cut], axis=1), cv2.COLOR_RGB2BGR))
    print(f"unexpected verdicts: {bad}")


if __name__ == "__main__":
    main()
