"""Albedo (de-lighting): reads ``rgb_BHW3`` (sRGB uint8) and ``mask_BHW``; writes ``albedo_BHW3``.

``albedo_BHW3`` is linear RGB float32 with ``albedo * shading == photo`` inside the mask (the shading estimate
itself is not kept: the relight stage writes the *applied* shading as ``shading_BHW3``). The shading is smooth, so
above ``work_resolution`` it is estimated on a box-downsampled copy and the albedo is the full-resolution photo
divided by the upsampled shading: all texture stays in the albedo. The decomposition runs
in linear RGB on the original photo, with the mask keeping the background out of the blurs, through
:func:`relight_stream.kernels.retinex.estimate_albedo`: ``retinex`` (multi-scale, on a blur pyramid — not the
reference's 7.6 s full-resolution sigma-250 blur), ``lab`` (edge-preserving L*) or ``intrinsic`` (Color-Retinex
gradient classification, which keeps cast shadows out of the albedo better than Retinex).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from relight_stream.config import AlbedoConfig, RunConfig
from relight_stream.kernels.color import srgb_to_linear
from relight_stream.kernels.filters import downsample
from relight_stream.kernels.retinex import METHODS, estimate_albedo
from relight_stream.kernels.xp import get_xp, to_device
from relight_stream.pipeline.geometry import kernel_array, upsample_to, work_factor
from relight_stream.pipeline.stage import Stage, per_sample
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)


def albedo_from_shading(lin: Any, shading_hw: Any, mask_hw: Any) -> Any:
    """``lin / shading`` inside the mask (shading raised so no albedo channel exceeds 1), ``lin`` outside."""
    xp = get_xp(lin)
    peak = xp.maximum(xp.maximum(lin[..., 0], lin[..., 1]), lin[..., 2])  # (much faster than lin.max(-1))
    s = xp.maximum(shading_hw, peak)
    s = xp.where(mask_hw > 0.5, xp.maximum(s, np.float32(1e-4)), np.float32(1.0))
    return (lin / s[..., None]).astype(xp.float32, copy=False)


class AlbedoStage(Stage):
    """Writes ``albedo_BHW3`` (linear float32, on the device of ``rgb_BHW3``) and ``meta[i]["albedo"]``."""

    name = "albedo"
    reads = ("rgb_BHW3", "mask_BHW")
    writes = ("albedo_BHW3",)

    def __init__(self, cfg: AlbedoConfig, run: RunConfig | None = None) -> None:
        if cfg.work_resolution < 32:
            raise ValueError(f"albedo.work_resolution must be >= 32, got {cfg.work_resolution}")
        if cfg.method not in METHODS:
            raise ValueError(f"albedo.method must be one of {list(METHODS)}, got {cfg.method!r}")
        if cfg.method == "retinex" and (not cfg.sigmas or any(not 0 < s <= 1 for s in cfg.sigmas)):
            raise ValueError(f"albedo.sigmas must be fractions of the image side in (0, 1], got {cfg.sigmas}")
        self.cfg = cfg

    def describe(self) -> str:
        extra = f" sigmas={list(self.cfg.sigmas)}" if self.cfg.method == "retinex" else ""
        return f"{self.cfg.method}{extra} (linear RGB, masked; shading @<={self.cfg.work_resolution})"

    def process(self, batch: SampleBatch) -> SampleBatch:
        rgb = kernel_array(batch["rgb_BHW3"])
        xp = get_xp(rgb)
        mask = to_device(batch["mask_BHW"], xp)
        albedo = xp.zeros(rgb.shape, xp.float32)
        batch["albedo_BHW3"] = albedo
        kwargs = {"sigmas": tuple(self.cfg.sigmas)} if self.cfg.method == "retinex" else {}

        H, W = rgb.shape[1:3]
        f = work_factor((H, W), self.cfg.work_resolution)

        def one(i: int) -> None:
            lin = srgb_to_linear(rgb[i])
            if f == 1:
                albedo[i], _ = estimate_albedo(lin, mask[i], method=self.cfg.method, **kwargs)
            else:
                _, s_small = estimate_albedo(downsample(lin, f), downsample(mask[i], f), method=self.cfg.method,
                                             **kwargs)
                albedo[i] = albedo_from_shading(lin, upsample_to(s_small[..., 0], (H, W), f), mask[i])
            batch.meta[i]["albedo"] = {"method": self.cfg.method, **{k: list(v) for k, v in kwargs.items()}}

        per_sample(self, batch, one, check=("albedo_BHW3",), parallel=True)
        return batch

