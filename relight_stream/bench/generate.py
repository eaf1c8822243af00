"""``relight-stream bench generate``: images/s of ``generate`` end to end and per stage.

Rows:

* ``<stage>`` at ``resolution`` — one batch through each triplet stage (segment, geometry, albedo, relight,
  instruct) with the classical backends, plus ``encode`` (every shard member, as the shard writer encodes them)
  and ``decode`` (the JPEG inputs); median ms per batch and images/s.
* ``gpu-run-cpu`` at ``resolution`` — ms per image, one thread, of what stays on the CPU when SAM2, depth and the
  kernels run on a GPU (the prompt prior, the shard encoders with and without the artefacts), and the img/s
  ceiling that sets for a 16-core host (``ceiling_img_s_16_cores``; ``write_artifacts: false`` for ``lean``).
* ``e2e`` at ``resolution`` — :func:`relight_stream.pipeline.recipes.run_generate` over a folder of JPEGs (decode
  in its background thread, the stages, shard writing with every artefact), wall-clock images/s after a warm-up
  run on the same machine (``images_per_s`` over all inputs, ``ok_per_s`` over written triplets), and
  ``speedup_vs_reference`` (per written triplet) against the reference pipeline's CPU cost per image
  (FACTS.md §1: ≈ 2.3 s at 512², ≈ 16 s at 1024²; the target is ≥ 50x at 1024² on 2 CPU cores).
  ``speedup_cpu_bound`` divides the reference time by the process CPU-seconds per triplet: what an idle machine
  gives with no overlap at all, a lower bound that does not depend on other processes' load.
* ``e2e-workers`` — the same run in one worker process per core (``generate --workers N``, what ``--workers 0``
  picks for a large CPU run), start-up of the workers included; ``workers_speedup_<side>`` is its ratio to ``e2e``.
  The summary's ``e2e_images_per_s_<side>`` and speedups are those of the faster of the two.

Inputs are crops of scikit-image's real photos (people, animals, objects), so the segmenter's prior and GrabCut
do their real work (:data:`PHOTOS`). ``--backend classical|neural|auto`` picks the segmenter and depth backends
(:func:`resolve_models`). ``--tiny`` runs 64² and 96² with eight images (a smoke run for tests); the full run
uses 96 images in shards of one batch, so the workers get shards to share. ``cpu_s_per_ok`` (process CPU time,
all threads, workers included, per written triplet) is reported beside wall-clock rates: on a shared machine it
is the steadier figure.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from relight_stream.bench.timing import machine_info, measure
from relight_stream.config import (
    BenchConfig,
    DecodeConfig,
    GenerateConfig,
    GeometryConfig,
    RunConfig,
    SegmentConfig,
    ShardConfig,
    config_to_dict,
)
from relight_stream.log import cores_per_rank
from relight_stream.pipeline.stage import NUM_THREADS
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

REFERENCE_S_PER_IMAGE = {512: 2.3, 1024: 16.0}
"""The reference pipeline's measured CPU cost per image on 2 cores (FACTS.md §1)."""
TARGET_SPEEDUP = 50.0
PHOTOS = ("astronaut", "coffee", "rocket", "retina", "camera", "horse", "logo", "chelsea")
"""Portraits, objects, a silhouette and a logo (illustrations), and a close-up cat that the classical segmenter
rightly skips (scattered fragments): one realistic skip in eight."""


def bench_images(n: int, side: int) -> np.ndarray:
    """``n`` square sRGB uint8 images: centre crops of scikit-image photos, mirrored and shifted for variety."""
    import cv2
    from skimage import data

    out = []
    for k in range(n):
        name = PHOTOS[k % len(PHOTOS)]
        try:
            img = getattr(data, name)()
        except Exception:  # a photo that needs a download (pooch) in this scikit-image: use another
            img = data.astronaut()
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.shape[2] == 4:  # RGBA: onto the neutral grey, as decode does
            a = img[..., 3:].astype(np.float32) / 255.0
            img = (img[..., :3] * a + 128 * (1 - a) + 0.5).astype(np.uint8)
        h, w = img.shape[:2]
        s = min(h, w)
        dx = (w - s) // 2 + (k // len(PHOTOS)) * min(8, (w - s) // 4 + 1)
        crop = img[(h - s) // 2 : (h - s) // 2 + s, dx : dx + s]
        crop = crop[:, ::-1] if (k // len(PHOTOS)) % 2 else crop
        out.append(cv2.resize(np.ascontiguousarray(crop), (side, side), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def _stage_rows(images: np.ndarray, cfg: GenerateConfig, run: RunConfig, bench: BenchConfig) -> list[dict[str, Any]]:
    import cv2

    from relight_stream.pipeline import shard as S
    from relight_stream.pipeline.triplet import build_triplet_stages

    n, side = len(images), images.shape[1]
    jpegs = [cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for img in images]
    rows = []

    def decode() -> None:
        for b in jpegs:
            cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)

    t = measure(decode, warmup=bench.warmup, repeats=bench.repeats, sync=False)
    rows.append({"name": "decode", "resolution": side, "batch": n, "ms": round(t["median_ms"], 2),
                 "images_per_s": round(1e3 * n / t["median_ms"], 2)})
    stages = build_triplet_stages(cfg, run)
    for st in stages:
        st.setup()
    batch = SampleBatch(keys=[f"bench/{i:04d}" for i in range(n)])
    batch["rgb_BHW3"] = images
    for st in stages:
        snapshot = dict(batch.arrays), [dict(m) for m in batch.meta], batch.keep_B.copy(), list(batch.drop_reason)

        def call(st=st, snapshot=snapshot) -> None:
            batch.arrays, batch.meta = dict(snapshot[0]), [dict(m) for m in snapshot[1]]
            batch.keep_B, batch.drop_reason = snapshot[2].copy(), list(snapshot[3])
            st.process(batch)

        t = measure(call, warmup=bench.warmup, repeats=bench.repeats, sync=True)
        rows.append({"name": st.name, "resolution": side, "batch": n, "ms": round(t["median_ms"], 2),
                     "images_per_s": round(1e3 * n / t["median_ms"], 2), "kept": batch.num_kept})
    fields = S.output_fields(set(batch.arrays), write_artifacts=True)

    t = measure(_encoder(batch, fields, cfg.shard.jpeg_quality), warmup=bench.warmup, repeats=bench.repeats,
                sync=False)
    kept = batch.num_kept
    rows.append({"name": "encode", "resolution": side, "batch": kept, "ms": round(t["median_ms"], 2),
                 "images_per_s": round(1e3 * kept / t["median_ms"], 2) if kept else None})
    for st in stages:
        st.teardown()
    if kept:
        rows.append(_gpu_run_cpu_row(images, batch, fields, cfg, bench))
    return rows


def _encoder(batch: SampleBatch, fields: list[str], quality: int) -> Any:
    """A call that encodes ``fields`` of every kept sample, as the shard writer does (one thread)."""
    from relight_stream.pipeline import shard as S

    def run() -> None:
        for i in batch.kept():
            for f in fields:
                S.MEMBERS[f][1](batch[f][i], quality)

    return run


def _gpu_run_cpu_row(images: np.ndarray, batch: SampleBatch, fields: list[str], cfg: GenerateConfig,
                     bench: BenchConfig) -> dict[str, Any]:
    """CPU work per image that stays on the CPU when the models and kernels run on a GPU (one thread, in series):
    the SAM2 prompt prior (frontal faces + saliency) and the shard encoders, with and without the artefacts. The
    fields reach the encoders as a GPU run hands them over: already 8-bit (``shard.host_field`` converts them on
    the device). Its ``ceiling_img_s_16_cores`` bounds what a 16-core GPU host can feed (the H100 target is 500
    img/s)."""
    from relight_stream.pipeline import shard as S
    from relight_stream.pipeline.subject_prior import subject_prior

    host = SampleBatch(keys=list(batch.keys))
    host.keep_B = batch.keep_B.copy()
    for f in fields:
        host[f] = batch[f] if isinstance(batch[f], list) else S.member_u8(f, batch[f])

    def prior() -> None:
        for img in images:
            subject_prior(img, work=cfg.segment.work_resolution, cascades=("frontal",))

    n, kept = len(images), batch.num_kept
    lean = S.output_fields(set(fields), write_artifacts=False)
    ms = {"prior": measure(prior, warmup=bench.warmup, repeats=bench.repeats, sync=False)["median_ms"] / n}
    for name, members in (("encode", fields), ("encode_lean", lean)):
        enc = _encoder(host, members, cfg.shard.jpeg_quality)
        ms[name] = measure(enc, warmup=bench.warmup, repeats=bench.repeats, sync=False)["median_ms"] / kept
    full, lean_ms = ms["prior"] + ms["encode"], ms["prior"] + ms["encode_lean"]
    return {"name": "gpu-run-cpu", "resolution": images.shape[1], "batch": n,
            "ms": round(full, 2), "prior_ms": round(ms["prior"], 2), "encode_ms": round(ms["encode"], 2),
            "encode_lean_ms": round(ms["encode_lean"], 2), "images_per_s": round(1e3 / full, 2),
            "ceiling_img_s_16_cores": round(16e3 / full, 1), "ceiling_lean_img_s_16_cores": round(16e3 / lean_ms, 1)}


def _e2e_rows(images: np.ndarray, cfg: GenerateConfig, run: RunConfig, workers: int) -> list[dict[str, Any]]:
    """``generate`` over a folder of JPEGs: a warm-up run, then one timed run in this process (``e2e``) and one in
    ``workers`` processes (``e2e-workers``; skipped for ``workers`` < 2). CPU time includes the workers'."""
    import cv2

    from relight_stream.pipeline.recipes import run_generate

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i, img in enumerate(images):
            cv2.imwrite(str(src / f"img{i:04d}.jpg"), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        # run 0 warms caches (cascades, imports, page cache) and is not reported
        for k, (name, n) in enumerate([("warm-up", 1), ("e2e", 1), ("e2e-workers", workers)]):
            if n < 2 and name == "e2e-workers":
                continue
            c = GenerateConfig(**{**{f: getattr(cfg, f) for f in cfg.__slots__}, "inputs": [str(src)],
                                  "out": str(Path(tmp) / f"out{k}"), "workers": n})
            t0, c0 = time.perf_counter(), os.times()
            code = run_generate(c, run)
            c1 = os.times()
            wall = time.perf_counter() - t0
            cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
            if code != 0:
                raise RuntimeError(f"generate exited with {code} during the benchmark")
            if k:
                import json

                stats = json.loads((Path(tmp) / f"out{k}" / "stats.json").read_text())
                rows.append(_e2e_row(name, images, cfg, n, stats["ok"], wall, cpu))
    return rows


def _e2e_row(name: str, images: np.ndarray, cfg: GenerateConfig, workers: int, ok: int, wall: float,
             cpu: float) -> dict[str, Any]:
    side = images.shape[1]
    row = {"name": name, "resolution": side, "batch": cfg.decode.batch_size, "workers": workers,
           "images": len(images), "ok": ok, "wall_s": round(wall, 3), "images_per_s": round(len(images) / wall, 2),
           "ok_per_s": round(ok / wall, 2), "cpu_s_per_ok": round(cpu / ok, 4) if ok else None}
    ref = REFERENCE_S_PER_IMAGE.get(side)
    if ref and ok:
        # Per *written* triplet (skipped inputs are cheaper, so images/s would flatter us).
        row["speedup_vs_reference"] = round(ref * ok / wall, 1)
        # Load-independent lower bound for an idle machine: every CPU-second spent serially (no overlap at all).
        row["speedup_cpu_bound"] = round(ref / max(cpu / ok, 1e-9), 1)
    return row


def resolve_models(cfg: BenchConfig, run: RunConfig) -> dict[str, Any]:
    """Stage configs for ``--backend``: ``classical`` (weight-free), ``neural`` (SAM2 + Depth Anything V2: ``tiny``
    with ``--tiny``, else hiera-s and V2-S with random weights — the FLOPs of the real ones), ``auto`` = neural on
    CUDA, classical otherwise."""
    backend = cfg.backend
    if backend == "auto":
        import torch

        backend = "neural" if torch.cuda.is_available() and run.device != "cpu" else "classical"
    if backend == "classical":
        return {}
    if backend != "neural":
        raise ValueError(f"bench generate: --backend must be auto, classical or neural, got {cfg.backend!r}")
    seg, depth = ("tiny", "tiny") if cfg.tiny else ("hiera-s", "depth-anything-v2-s")
    # random weights: the throughput of the architectures, the FLOPs of the real models; their masks fail the
    # plausibility checks, so they are kept (verdict recorded) for every later stage to run
    return {"segment": SegmentConfig(backend="sam2", flavor=seg, weights="random", drop_implausible=False),
            "geometry": GeometryConfig(backend="depth-anything", flavor=depth, weights="random")}


def bench_generate(cfg: BenchConfig, run: RunConfig) -> dict[str, Any]:
    """Per-stage and end-to-end throughput of ``generate`` with the classical (weight-free) backends."""
    import cv2

    cv2.setNumThreads(1)  # the stages spread samples over threads themselves
    sizes = (64, 96) if cfg.tiny else (512, 1024)
    num = 8 if cfg.tiny else 96
    batch_size = (cfg.batch_sizes or [4 if cfg.tiny else 8])[0]
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    models = resolve_models(cfg, run)
    workers = 1 if models else max(2, cores_per_rank())  # model stages share one device: no CPU workers
    for side in sizes:
        gcfg = GenerateConfig(decode=DecodeConfig(resolution=side, batch_size=batch_size),
                              shard=ShardConfig(samples_per_shard=batch_size), **models)
        images = bench_images(num, side)
        rows += _stage_rows(images[:batch_size], gcfg, run, cfg)
        e2e = _e2e_rows(images, gcfg, run, workers)
        rows += e2e
        best = max(e2e, key=lambda r: r["ok_per_s"])
        summary[f"e2e_images_per_s_{side}"] = best["images_per_s"]
        summary[f"e2e_workers_{side}"] = best["workers"]
        if len(e2e) == 2:
            summary[f"workers_speedup_{side}"] = round(e2e[1]["ok_per_s"] / max(e2e[0]["ok_per_s"], 1e-9), 2)
        if "speedup_vs_reference" in best:
            summary[f"speedup_vs_reference_{side}"] = best["speedup_vs_reference"]
            summary[f"speedup_cpu_bound_{side}"] = best["speedup_cpu_bound"]
    top = max(sizes)
    if f"speedup_vs_reference_{top}" in summary:
        summary["target_speedup"] = TARGET_SPEEDUP
        summary["meets_target"] = summary[f"speedup_vs_reference_{top}"] >= TARGET_SPEEDUP
    summary["threads"] = NUM_THREADS
    summary["backends"] = {k: config_to_dict(v) for k, v in models.items()} or "classical"
    return {"target": "generate", "rows": rows, **summary, "machine": machine_info(),
            "command": f"relight-stream bench generate{' --tiny' if cfg.tiny else ''} --backend {cfg.backend}"}
