"""The generate stages, in flow order: segment → geometry → albedo → relight → instruct.

Reads decoded batches (``rgb_BHW3``, sRGB uint8, square) and writes every field the triplet shard needs
(ARCHITECTURE.md §5): ``mask_BHW``, ``depth_BHW``, ``normals_BHW3``, ``albedo_BHW3``, ``shading_BHW3``,
``input_BHW3`` and ``instruction_B`` (+ ``input_l1/l2/l12_BHW3`` with ``relight.consistency``), and every random
parameter in ``meta[i]``. ``recipes.run_generate`` calls :func:`build_triplet_stages` and appends the preview.
"""

from __future__ import annotations

import logging

from relight_stream.config import GenerateConfig, RunConfig
from relight_stream.pipeline.albedo import AlbedoStage
from relight_stream.pipeline.geometry import GeometryStage
from relight_stream.pipeline.instruct import InstructStage
from relight_stream.pipeline.relight import RelightStage
from relight_stream.pipeline.segment import SegmentStage
from relight_stream.pipeline.stage import Stage

log = logging.getLogger(__name__)


def build_triplet_stages(cfg: GenerateConfig, run: RunConfig) -> list[Stage]:
    """The per-sample stages of ``generate``; every config check runs here, before any model loads.

    Raises:
        ValueError: a bad stage config (unknown backend, impossible ranges, missing caption file).
    """
    return [
        SegmentStage(cfg.segment, run),
        GeometryStage(cfg.geometry, run),
        AlbedoStage(cfg.albedo, run),
        RelightStage(cfg.relight, run),
        InstructStage(cfg.instruct, run),
    ]
