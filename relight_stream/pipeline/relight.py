"""Synthetic relighting: reads ``albedo_BHW3``, ``normals_BHW3``, ``depth_BHW``, ``mask_BHW`` (and ``rgb_BHW3`` for
the exposure match); writes ``input_BHW3`` (sRGB uint8 model input), ``shading_BHW3`` (linear float32, the applied
diffuse shading, 0 outside the mask) and, with ``consistency``, ``input_l1_BHW3``/``input_l2_BHW3``/
``input_l12_BHW3``.

Per sample, :func:`relight_stream.kernels.lights.sample_relight` draws a record from
``sample_rng(seed, key, "relight")`` and the degradation ``mix`` (soft shading, hard/soft cast shadow, occluder
pattern, specular, SH environment, multi-light rig); :func:`relight_stream.kernels.render.render_shading` renders
its shading in *linear* RGB (the reference shaded in sRGB) at most at ``work_resolution`` (upsampled; the shading
is smooth), and ``relit = albedo x shading + speculars`` at full resolution, as ``render_relight`` does; the result
is clipped to [0, 1], alpha-composited in linear light onto the neutral sRGB grey 128 with the same soft mask that
the target's subject has, and encoded to sRGB.
With ``match_exposure`` the relit subject is scaled to the target's mean foreground luminance times a random
0.8–1.25 (stream ``exposure``), so inputs are not systematically darker than targets. The record goes verbatim to
``meta[i]["relight"]`` (with the seed and the ``exposure`` gain), so every random parameter is in ``meta.json``.

Consistency mode (IC-Light's light-transport linearity): a second record from stream ``relight_l2`` gives L2;
I(L1), I(L2) and I(L1 + L2) (``kernels.lights.combine_lights``) are rendered (``i12 == i1 + i2`` in linear light
before clipping: every step, the upsampling included, is linear in the lights) and written as three extra inputs
for the same target; ``input_BHW3`` is I(L1).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from relight_stream.config import RelightConfig, RunConfig
from relight_stream.kernels.color import linear_to_srgb_u8, luminance, srgb_to_linear, tonemap
from relight_stream.kernels.filters import downsample
from relight_stream.kernels.lights import DEGRADATIONS, combine_lights, sample_relight
from relight_stream.kernels.render import composite, render_shading
from relight_stream.kernels.xp import get_xp, to_device
from relight_stream.keys import sample_rng, sample_seed
from relight_stream.pipeline.geometry import kernel_array, upsample_to, work_factor
from relight_stream.pipeline.stage import NonFiniteOutput, Stage, is_finite, per_sample
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

CONSISTENCY_FIELDS = ("input_l1_BHW3", "input_l2_BHW3", "input_l12_BHW3")


def encode_input(relit_lin: Any, mask: Any) -> Any:
    """Clip linear radiance to [0, 1], composite on sRGB grey 128 in linear light, encode to sRGB uint8."""
    return linear_to_srgb_u8(composite(tonemap(relit_lin, mode="clip"), mask))


def seed_record(global_seed: int, key: str, stream: str) -> dict[str, str]:
    """The sample seed of ``stream`` for ``meta.json``: a decimal string (64-bit values overflow Arrow's int64
    when ``datasets`` loads the shards), with the stream name that reproduces it via ``keys.sample_rng``."""
    return {"seed": str(sample_seed(global_seed, key, stream)), "seed_stream": stream}


class RelightStage(Stage):
    """Writes the relit input, the applied shading and ``meta[i]["relight"]`` (the full light record + seed)."""

    name = "relight"
    reads = ("rgb_BHW3", "albedo_BHW3", "normals_BHW3", "depth_BHW", "mask_BHW")

    def __init__(self, cfg: RelightConfig, run: RunConfig | None = None) -> None:
        bad = sorted(set(cfg.mix) - set(DEGRADATIONS))
        if bad:
            raise ValueError(f"relight.mix: unknown degradation(s) {bad}; valid: {list(DEGRADATIONS)}")
        if any(w < 0 for w in cfg.mix.values()) or sum(cfg.mix.values()) <= 0:
            raise ValueError(f"relight.mix weights must be >= 0 and not all zero, got {cfg.mix}")
        if cfg.work_resolution < 32:
            raise ValueError(f"relight.work_resolution must be >= 32, got {cfg.work_resolution}")
        lo, hi = cfg.ambient
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"relight.ambient must satisfy 0 <= lo <= hi < 1, got {cfg.ambient}")
        self.cfg = cfg
        self.seed = int((run or RunConfig()).seed or 0)
        self.writes = ("input_BHW3", "shading_BHW3") + (CONSISTENCY_FIELDS if cfg.consistency else ())

    def describe(self) -> str:
        mix = ",".join(f"{k}={v:g}" for k, v in self.cfg.mix.items())
        extra = "; consistency (L1, L2, L1+L2)" if self.cfg.consistency else ""
        return f"mix {mix}; ambient {list(self.cfg.ambient)}; shading @<={self.cfg.work_resolution}{extra}"

    def draw(self, key: str, depth_scale: float, stream: str = "relight") -> dict:
        """The light record of sample ``key`` (deterministic in the global seed and the key)."""
        rng = sample_rng(self.seed, key, stream)
        return sample_relight(rng, self.cfg.mix, ambient=tuple(self.cfg.ambient), depth_scale=depth_scale)

    def exposure(self, key: str, rgb_u8: Any, relit: Any, mask: Any) -> float:
        """Gain that brings the relit foreground's mean luminance to the target's times a random 0.8–1.25."""
        s = max(1, mask.shape[0] // 256)  # a strided subsample estimates the means to well under 1 %
        w = mask[::s, ::s] * (mask[::s, ::s] > 0.5)
        target = float((luminance(srgb_to_linear(rgb_u8[::s, ::s])) * w).sum())
        now = float((luminance(relit[::s, ::s]) * w).sum())
        jitter = float(np.exp(sample_rng(self.seed, key, "exposure").uniform(np.log(0.8), np.log(1.25))))
        if now <= 1e-6 or target <= 1e-6:
            return 1.0
        return float(np.clip(target / now * jitter, 0.25, 4.0))

    def process(self, batch: SampleBatch) -> SampleBatch:
        albedo = batch["albedo_BHW3"]
        xp = get_xp(albedo)
        rgb = to_device(kernel_array(batch["rgb_BHW3"]), xp)
        normals, depth, mask = (to_device(batch[f], xp) for f in ("normals_BHW3", "depth_BHW", "mask_BHW"))
        B, H, W = mask.shape
        out = {f: xp.full((B, H, W, 3), 128, xp.uint8) for f in self.writes if f != "shading_BHW3"}
        shading_all = xp.zeros((B, H, W, 3), xp.float32)
        batch["shading_BHW3"] = shading_all
        for f, arr in out.items():
            batch[f] = arr

        f = work_factor((H, W), self.cfg.work_resolution)

        def one(i: int) -> None:
            key = batch.keys[i]
            ds = float((batch.meta[i].get("geometry") or {}).get("depth_scale") or 0.5)
            n_s = downsample(normals[i], f)
            n_s = n_s / xp.maximum(xp.sqrt((n_s * n_s).sum(-1, keepdims=True)), np.float32(1e-6))
            d_s, m3 = downsample(depth[i], f), mask[i][..., None]

            def render(params: dict) -> tuple:
                sh_s, spec_s = render_shading(n_s, d_s, params)
                # checked at work resolution (cheap): the upsampling of finite values is finite
                if not (is_finite(sh_s) and (spec_s is None or is_finite(spec_s))):
                    raise NonFiniteOutput("shading_BHW3", "non-finite shading or specular from render_shading")
                shading = upsample_to(sh_s, (H, W), f)
                relit = albedo[i] * shading
                if spec_s is not None:
                    relit = relit + upsample_to(spec_s, (H, W), f) * m3
                return relit, shading

            p1 = self.draw(key, ds)
            relit, shading = render(p1)
            k = self.exposure(key, rgb[i], relit, mask[i]) if self.cfg.match_exposure else 1.0
            if k != 1.0:
                relit *= np.float32(k)
            xp.multiply(shading, m3 * np.float32(k), out=shading_all[i])
            rec = {**p1, **seed_record(self.seed, key, "relight"), "exposure": round(k, 6)}
            if self.cfg.consistency:
                p2 = self.draw(key, ds, "relight_l2")
                p12 = combine_lights(p1, p2)
                i2, i12 = (render(p)[0] * np.float32(k) for p in (p2, p12))  # one exposure keeps i12 = i1 + i2
                for name, img in (("input_l2_BHW3", i2), ("input_l12_BHW3", i12)):
                    if not is_finite(img):
                        raise NonFiniteOutput(name)
                out["input_l1_BHW3"][i] = encode_input(relit, mask[i])
                out["input_l2_BHW3"][i] = encode_input(i2, mask[i])
                out["input_l12_BHW3"][i] = encode_input(i12, mask[i])
                rec["consistency"] = {"l2": {**p2, **seed_record(self.seed, key, "relight_l2")},
                                      "l12_variant": p12["variant"]}
            if not is_finite(relit):
                raise NonFiniteOutput("input_BHW3", "non-finite relit image")
            out["input_BHW3"][i] = encode_input(relit, mask[i])
            batch.meta[i]["relight"] = rec

        per_sample(self, batch, one, check=("shading_BHW3",), parallel=True)
        return batch

