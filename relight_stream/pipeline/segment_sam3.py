"""The ``sam3`` backend of the segment stage: text-prompted SAM 3 masks for a batch (``segment.prompts``).

Reads ``rgb_BHW3`` rows, writes ``mask_BHW`` rows (float32 0–1) and ``meta[i]["segment"]``: the prompts, how many
instances passed ``segment.score_threshold`` and their best score. The mask is the union (pixel-wise max) of every
kept instance of every prompt, so all persons (or all of each concept) stay in the input and the target alike. An
image with no instance above the threshold is skipped as ``segment:no_instance`` — the reference fell back to SAM2
here; ours records it, so a user can rerun those keys with ``--segmenter sam2`` or ``classical``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relight_stream.kernels.xp import asnumpy
from relight_stream.pipeline.engine_batch import call_in_chunks
from relight_stream.pipeline.geometry import engine_images
from relight_stream.sample import SampleBatch


def sam3_detect(engine: Any, images: Any, prompts: tuple[str, ...], threshold: float) -> tuple[np.ndarray, ...]:
    """Union over ``prompts`` of SAM 3's kept instances.

    Returns:
        ``(mask [B,H,W] float32 0–1, instances [B] int, best score [B] float32)``.
    """
    mask = count = best = None
    for prompt in prompts:
        det = engine.detect(images, prompt, threshold=threshold)
        m = asnumpy(det.mask).astype(np.float32)
        n = asnumpy(det.keep).sum(axis=1).astype(np.int64)
        s = asnumpy(det.scores).max(axis=1).astype(np.float32)
        mask, count, best = (m, n, s) if mask is None else (np.maximum(mask, m), count + n, np.maximum(best, s))
    return mask, count, best


def sam3_masks(stage: Any, batch: SampleBatch) -> None:
    """Fill ``mask_BHW`` for the kept rows of ``batch`` with ``stage.engine`` (a ``segmenter_sam3`` engine)."""
    cfg = stage.cfg
    idx = list(batch.kept())
    if not idx:
        return

    def run(chunk: list[int]) -> tuple[np.ndarray, ...]:
        return sam3_detect(stage.engine, engine_images(batch["rgb_BHW3"], chunk), tuple(cfg.prompts),
                           cfg.score_threshold)

    def store(chunk: list[int], out: tuple[np.ndarray, ...]) -> None:
        mask, count, best = out
        for j, i in enumerate(chunk):
            batch.meta[i]["segment"] = {
                "backend": "sam3", "model": {"flavor": stage.engine_flavor, "weights": cfg.weights},
                "prompts": list(cfg.prompts), "instances": int(count[j]), "best_score": round(float(best[j]), 4),
            }
            if not np.isfinite(mask[j]).all():
                batch.drop(i, "segment:nonfinite_output", failed=True, detail="mask_BHW")
            elif count[j] == 0:
                batch.drop(i, "segment:no_instance", detail=f"no {' / '.join(cfg.prompts)} scored above "
                           f"{cfg.score_threshold} (best {float(best[j]):.3f})")
            else:
                batch["mask_BHW"][i] = np.clip(mask[j], 0, 1)

    # Out of memory: retried in halved chunks, down to one sample, then dropped as segment:oom (C8).
    call_in_chunks(stage, batch, idx, run, on_result=store)
