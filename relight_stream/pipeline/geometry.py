"""Geometry: reads ``rgb_BHW3`` (sRGB uint8) and ``mask_BHW``; writes ``depth_BHW`` and ``normals_BHW3``.

``depth_BHW``: relative, larger = nearer, normalised to [0, 1] over the foreground (float32; 0 outside).
``normals_BHW3``: unit vectors in the camera frame (+x right, +y up, +z toward the viewer), ``(0, 0, 1)``
outside the mask.

Backends:

* ``classical`` (default, no download): mask inflation (:func:`kernels.normals.normals_from_mask`) with a
  little high-passed luminance detail, in image-side units so the tilt does not depend on resolution.
* ``depth-anything`` / ``dpt``: the depth engine (``create_engine("depth", flavor)``) run on the *original*
  photo (not on the albedo, as the reference did), a batch at a time; its relative inverse depth is
  normalised over the foreground and turned into normals by :func:`kernels.normals.normals_from_depth`.

Normals are computed at most at ``work_resolution`` and upsampled (they are smooth). This module also holds the
helpers the other generate stages share: the
reduced-resolution factor (:func:`work_factor`, :func:`upsample_to`) and the engine/kernel array adapters.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from relight_stream.config import GeometryConfig, RunConfig
from relight_stream.kernels.color import srgb_to_linear
from relight_stream.kernels.filters import downsample, resize_bilinear
from relight_stream.kernels.normals import normals_from_depth, normals_from_mask
from relight_stream.kernels.xp import asnumpy, get_xp, has_cupy, to_device
from relight_stream.log import warn_once
from relight_stream.pipeline.engine_batch import call_in_chunks
from relight_stream.pipeline.stage import NonFiniteOutput, Stage, is_finite, per_sample
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

ENGINE_FLAVOR_PREFIX = {"classical": "", "depth-anything": "depth-anything-v2", "dpt": "midas-dpt"}
DEFAULT_FLAVOR = {"classical": "", "depth-anything": "s", "dpt": "hybrid"}
"""``geometry.flavor`` when unset: Depth Anything V2 Small, MiDaS 3.0 DPT-Hybrid."""


def work_factor(shape: tuple[int, int], work: int) -> int:
    """Integer box-downsampling factor that brings the longer side to at most ``work`` pixels."""
    return max(1, -(-max(shape) // max(1, work)))


def upsample_to(x: Any, shape: tuple[int, int], f: int) -> Any:
    """Bilinear upsampling of an array made by ``downsample(X, f)`` back to ``X``'s ``shape`` (exact scale f)."""
    if f == 1:
        return x
    exact = x.shape[0] * f == shape[0] and x.shape[1] * f == shape[1]
    return resize_bilinear(x, shape, crop_from=None if exact else shape)


def kernel_array(x: Any) -> Any:
    """An array the kernels take: NumPy and CuPy pass through; a torch tensor (GPU decode) becomes CuPy through
    DLPack when CuPy can run (no copy, stays on the device), else NumPy."""
    if not type(x).__module__.startswith("torch"):
        return x
    if x.is_cuda and has_cupy():
        import cupy

        return cupy.from_dlpack(x.contiguous())
    return asnumpy(x)


def check_engine_args(kind: str, flavor: str, weights: str | None) -> None:
    """Validate a pipeline stage's engine flavor and weights without building anything (``ValueError`` if bad).

    A stage's model must be a real one: a full-size flavor needs ``weights`` (``org/name@commit`` or a local
    path); untrained weights are taken only when asked for by name (``weights: random``, for throughput
    benchmarks of the architecture), and a tiny flavor (``tiny``, ``midas-dpt-tiny``: random weights, for tests and
    demos) logs a warning, since its masks and depth are noise. Then the reference's form and, offline or for a
    local path, that the files exist and are complete (RELIABILITY D1/D2).
    """
    from relight_stream.engines import get_spec
    from relight_stream.engines.spec import parse_weights
    from relight_stream.engines.weights import check_weights

    spec = get_spec(kind, flavor)
    if weights is None and not (spec.flavor == "tiny" or spec.flavor.endswith("-tiny")):
        where = f"'{spec.hf_id}@<commit sha>' (Hugging Face) or " if spec.hf_id else ""
        raise ValueError(f"{kind} flavor {flavor!r} has no weights: give {where}a local checkpoint path as its "
                         "weights (`--segmenter-weights`/`--depth-weights`, or `weights:` in the YAML); "
                         "`weights: random` runs the untrained architecture (benchmarks only)")
    ref = parse_weights(weights, spec)
    if ref.source == "random" and not spec.random_build:
        raise ValueError(f"{kind} flavor {flavor!r} has no random-weight build (its architecture comes with its "
                         f"weights): give '{spec.hf_id}@<commit sha>' or a local folder")
    if ref.source == "random":
        warn_once(log, f"{kind} {flavor}: random weights — its outputs are noise (tests, demos and benchmarks "
                       "only); give real weights for training data")
    check_weights(ref, spec.hf_file)


def engine_images(rgb_BHW3: Any, idx: list[int]) -> Any:
    """Rows ``idx`` of a uint8 sRGB batch as a torch ``[B,3,H,W]`` float tensor in [0, 1] on the array's device.

    NumPy stays on the host (the engine moves it); CuPy and CUDA torch arrays are shared through DLPack, so
    GPU-decoded images never round-trip through the host.
    """
    import torch

    mod = type(rgb_BHW3).__module__
    if mod.startswith("torch"):
        x = rgb_BHW3[idx]
    elif mod.startswith("cupy"):
        x = torch.from_dlpack(rgb_BHW3[idx])
    else:
        x = torch.from_numpy(np.ascontiguousarray(rgb_BHW3[idx]))
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def renormalise(n: Any) -> Any:
    """Unit vectors along the last axis (``(..., 3)`` float32; zero vectors stay finite)."""
    xp = get_xp(n)
    sq = xp.einsum("...i,...i->...", n, n) if xp is np else (n * n).sum(-1)
    return n * (1.0 / xp.sqrt(xp.maximum(sq, np.float32(1e-12))))[..., None]


def depth_extent(mask_hw: np.ndarray, *, work: int = 128) -> float:
    """Depth extent of the subject's [0, 1] depth range as a fraction of the image side.

    A subject is about as deep as it is wide: the radius of the largest disk inside the silhouette (distance
    transform maximum, in image-side units) — exactly the height mask inflation gives a round silhouette, so the
    classical and neural backends and the cast-shadow march share one scale. Clipped to [0.03, 0.5].
    """
    import cv2

    h, w = mask_hw.shape
    f = min(1.0, work / max(h, w))
    small = cv2.resize((mask_hw > 0.5).astype(np.uint8), (max(1, int(w * f)), max(1, int(h * f))),
                       interpolation=cv2.INTER_NEAREST)
    r = float(cv2.distanceTransform(np.pad(small, 1), cv2.DIST_L2, 5).max()) / max(small.shape)
    return float(np.clip(r, 0.03, 0.5))


def normalise_depth(raw_hw: Any, mask_hw: Any) -> Any:
    """Relative depth (larger = nearer) rescaled to [0, 1] over the foreground (1st–99th percentile), 0 outside.

    Raises:
        NonFiniteOutput: the engine's map has a NaN/inf anywhere (``geometry:nonfinite_output``, C9).
        ValueError: the foreground is empty (under 16 pixels) or has no depth range (flat output).
    """
    xp = get_xp(raw_hw)
    if not is_finite(raw_hw):
        raise NonFiniteOutput("depth_BHW", "depth engine output is non-finite")
    inside = mask_hw > 0.5
    vals = raw_hw[inside]
    if vals.size < 16:
        raise ValueError(f"depth output has an empty foreground ({vals.size} pixels)")
    lo, hi = (float(v) for v in xp.percentile(vals, xp.asarray([1.0, 99.0])))
    if not hi - lo > 1e-8:
        raise ValueError(f"depth output is flat over the foreground ({lo:.3g})")
    d = xp.clip((raw_hw - lo) / (hi - lo), 0.0, 1.0) * inside
    return d.astype(xp.float32)


class GeometryStage(Stage):
    """Writes ``depth_BHW``, ``normals_BHW3`` and ``meta[i]["geometry"]`` (backend, model, depth scale)."""

    name = "geometry"
    reads = ("rgb_BHW3", "mask_BHW")
    writes = ("depth_BHW", "normals_BHW3")

    def __init__(self, cfg: GeometryConfig, run: RunConfig | None = None) -> None:
        if cfg.backend not in ("classical", "depth-anything", "dpt"):
            raise ValueError(f"geometry.backend must be classical, depth-anything or dpt, got {cfg.backend!r}")
        if cfg.work_resolution < 32:
            raise ValueError(f"geometry.work_resolution must be >= 32, got {cfg.work_resolution}")
        if not 0.0 <= cfg.detail <= 1.0:
            raise ValueError(f"geometry.detail must be in [0, 1], got {cfg.detail}")
        self.cfg = cfg
        self.run = run or RunConfig()
        self.engine: Any = None
        if cfg.backend != "classical":
            check_engine_args("depth", self.engine_flavor, cfg.weights)

    @property
    def engine_flavor(self) -> str:
        """Depth engine flavor: a full name, or a short size expanded by backend (``s`` -> ``depth-anything-v2-s``,
        ``hybrid`` -> ``midas-dpt-hybrid``, ``tiny`` -> ``tiny`` for depth-anything and ``midas-dpt-tiny`` for dpt)."""
        f = self.cfg.flavor or DEFAULT_FLAVOR[self.cfg.backend]
        prefix = ENGINE_FLAVOR_PREFIX[self.cfg.backend]
        if f.startswith(prefix) or (f == "tiny" and self.cfg.backend == "depth-anything"):
            return f  # Depth Anything's test model is plain ``tiny``; dpt's ``tiny`` expands to ``midas-dpt-tiny``
        return f"{prefix}-{f}"

    def setup(self) -> None:
        if self.cfg.backend != "classical" and self.engine is None:
            from relight_stream.engines import create_engine

            self.engine = create_engine("depth", self.engine_flavor, weights=self.cfg.weights,
                                        device=self.run.device)

    def describe(self) -> str:
        if self.cfg.backend == "classical":
            return f"classical: mask inflation + luminance detail {self.cfg.detail} @<={self.cfg.work_resolution}"
        return f"{self.cfg.backend} depth engine flavor={self.engine_flavor} weights={self.cfg.weights or 'random'}"

    def process(self, batch: SampleBatch) -> SampleBatch:
        if self.cfg.backend == "classical":  # mask inflation: OpenCV on the host
            rgb, mask = asnumpy(batch["rgb_BHW3"]), asnumpy(batch["mask_BHW"])
            xp = np
        else:  # depth, normals and their resampling stay on the batch's device (CuPy after a GPU decode)
            rgb = kernel_array(batch["rgb_BHW3"])
            xp = get_xp(rgb)
            mask = to_device(batch["mask_BHW"], xp)
        B, H, W = mask.shape
        depth = xp.zeros((B, H, W), xp.float32)
        normals = xp.zeros((B, H, W, 3), xp.float32)
        normals[..., 2] = 1.0
        batch["depth_BHW"], batch["normals_BHW3"] = depth, normals
        raw = self._run_engine(batch, xp) if self.cfg.backend != "classical" else None
        flat = xp.asarray((0.0, 0.0, 1.0), xp.float32)

        f = work_factor((H, W), self.cfg.work_resolution)

        def one(i: int) -> None:
            scale = depth_extent(asnumpy(mask[i]))
            m_s = downsample(mask[i], f)
            if raw is None:
                lin_s = srgb_to_linear(downsample(rgb[i].astype(np.float32) / 255.0, f))
                d_s, n_s = normals_from_mask(m_s, lin_s, detail=self.cfg.detail)
                d = upsample_to(d_s, (H, W), f)
            else:
                d = normalise_depth(raw[i], mask[i])
                n_s = normals_from_depth(downsample(d, f), m_s, depth_scale=scale, smooth=0.004)
            outside = mask[i] <= 0.5
            n = renormalise(upsample_to(n_s, (H, W), f))
            n[outside] = flat
            d[outside] = 0.0
            depth[i], normals[i] = d, n
            batch.meta[i]["geometry"] = {
                "backend": self.cfg.backend,
                "model": None if raw is None else {"flavor": self.engine_flavor, "weights": self.cfg.weights},
                "depth_scale": round(scale, 5),
                "detail": self.cfg.detail if raw is None else None,
            }

        per_sample(self, batch, one, check=("depth_BHW", "normals_BHW3"), parallel=True)
        return batch

    def _run_engine(self, batch: SampleBatch, xp: Any) -> Any:
        """Raw depth ``[B,H,W]`` float32 as an ``xp`` array (rows of dropped samples stay 0)."""
        idx = list(batch.kept())
        out = xp.zeros(batch["mask_BHW"].shape, xp.float32)
        if not idx:
            return out

        def store(chunk: list[int], pred: Any) -> None:
            out[xp.asarray(chunk)] = to_device(kernel_array(pred), xp).astype(xp.float32)

        # Out of memory: retried in halved chunks, down to one sample, then dropped as geometry:oom (C8); any
        # other engine failure drops the chunk as geometry:error, recorded, never raised.
        call_in_chunks(self, batch, idx, lambda chunk: self.engine(engine_images(batch["rgb_BHW3"], chunk)),
                       on_result=store)
        return out

