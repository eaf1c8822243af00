"""``relight-stream bench filter``: images/s of the lighting scorers, per backend, and of ``filter`` end to end.

Rows (each with ``img_s``):

* ``photometric`` — :func:`photometric_scores` on a 224² batch (NumPy; CuPy too when a GPU is usable);
* ``clip-<flavor>`` — the CLIP image tower alone on a fixed batch, once per available backend (eager,
  onnxruntime, and on CUDA compile and tensorrt), with the largest difference of its embeddings to eager's;
* ``filter-e2e-<scorer>`` — ``filter``'s streaming loop (discover, decode, score stages, scores sink) over a
  WebDataset shard of 256² JPEGs, with the fastest backend's engine already built and warm.

Config: ``backend`` (``auto`` = every backend), ``batch_sizes`` (a sweep; default 256 on CUDA, 16 on a CPU,
8 with ``--tiny``), ``precision`` (CUDA only; none given means ``filter``'s ``auto``: bf16), ``repeats``/``warmup``.
The e2e rows use ``filter``'s CPU thread default (``torch_threads``/``decode_workers`` columns);
``OMP_NUM_THREADS=N`` keeps torch at N threads instead (the before/after comparison).

Flavor: ``tiny`` with ``--tiny``; otherwise ``vit-b-32`` on a CPU (``vit-l-14`` would take minutes there) and
``vit-l-14`` on CUDA, where the target is ≥ 3,000 images/s (FACTS.md §2: 162 GFLOP per image, so 3,000 img/s
is ≈ 490 TFLOP/s, half of an H100's dense bf16 peak). Random weights: the FLOPs and timings equal real ones.
"""

from __future__ import annotations

import io
import logging
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from relight_stream.bench.timing import machine_info, measure
from relight_stream.config import BenchConfig, ClipConfig, DecodeConfig, FilterConfig, RunConfig

log = logging.getLogger(__name__)

GFLOP_PER_IMAGE = {"vit-b-32": 9.0, "vit-l-14": 162.0}
"""Forward GFLOP of the image tower at 224² (FACTS.md §2)."""
H100_TARGET_IMG_S = 3000


def _images(n: int, side: int, seed: int = 0) -> np.ndarray:
    """``n`` photo-like sRGB uint8 images (random crops and exposures of scikit-image's photos)."""
    import cv2
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [getattr(data, k)()[..., :3] for k in ("astronaut", "coffee", "chelsea", "rocket")]
    out = np.empty((n, side, side, 3), np.uint8)
    for i in range(n):
        p = photos[i % len(photos)]
        s = int(min(p.shape[:2]) * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, p.shape[0] - s + 1), rng.integers(0, p.shape[1] - s + 1)
        crop = cv2.resize(np.ascontiguousarray(p[y:y + s, x:x + s]), (side, side), interpolation=cv2.INTER_AREA)
        out[i] = np.clip(crop * rng.uniform(0.3, 1.6), 0, 255).astype(np.uint8)
    return out


def write_jpeg_shard(path: Path, images: np.ndarray) -> Path:
    """One WebDataset tar of ``NNNNNN.jpg`` members (quality 90)."""
    from PIL import Image

    with tarfile.open(path, "w") as tf:
        for i, img in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            ti = tarfile.TarInfo(f"{i:06d}.jpg")
            ti.size = buf.tell()
            buf.seek(0)
            tf.addfile(ti, buf)
    return path


def _precision(backend: str, cuda: bool, asked: str) -> str:
    """The precision a row runs at: fp32 on a CPU; on CUDA ``asked``, where ``auto`` or no ``--precision`` (the
    value BenchConfig defaults to, whatever it is) means ``filter``'s own setting, ``ClipConfig.precision``
    resolved by :func:`resolve_precision` (``auto``: bf16); fp16 for onnxruntime, which has no bf16 kernels."""
    import dataclasses

    from relight_stream.pipeline.clip_filter import resolve_precision

    if not cuda:
        return "fp32"
    unset = next(f.default for f in dataclasses.fields(BenchConfig) if f.name == "precision")
    p = resolve_precision(ClipConfig().precision if asked in ("auto", unset) else asked, "cuda")
    return "fp16" if backend == "onnxruntime" and p == "bf16" else p


def _clip_rows(flavor: str, dev: Any, batches: list[int], cfg: BenchConfig) -> tuple[list[dict[str, Any]], dict]:
    """One timed row per backend and batch size on the same random images, and the built engines by backend.

    Backends: ``cfg.backend`` when it names one, else every backend (unavailable ones get a ``skipped`` row).
    """
    import torch

    from relight_stream.engines.backends import BACKENDS, get_backend
    from relight_stream.engines.registry import create_engine

    cuda = dev.type == "cuda"
    backends = [b for b in BACKENDS if cuda or b in ("eager", "onnxruntime")]
    backends = [cfg.backend] if cfg.backend != "auto" else backends
    gen = torch.Generator().manual_seed(0)
    xs = {b: torch.rand(b, 3, 224, 224, generator=gen).to(dev) for b in batches}
    rows, refs, engines = [], {}, {}
    for backend in backends:
        prec = _precision(backend, cuda, cfg.precision)
        ok, why = get_backend(backend).available(dev)
        if not ok:
            rows.append({"name": f"clip-{flavor}", "backend": backend, "precision": prec, "skipped": why})
            continue
        for batch, x in xs.items():
            row: dict[str, Any] = {"name": f"clip-{flavor}", "backend": backend, "precision": prec, "batch": batch}
            try:
                eng = engines.get(backend) or create_engine("clip", flavor, backend=backend, device=dev,
                                                            precision=prec)
                with torch.inference_mode():
                    t = measure(lambda: eng.encode_image(x), warmup=max(1, cfg.warmup), repeats=cfg.repeats)
                    emb = eng.encode_image(x).float().cpu()
            except Exception as exc:  # a backend that fails here is reported, the others still run
                log.warning("bench filter: clip %s on %s failed: %s", flavor, backend, exc)
                rows.append({**row, "skipped": f"{type(exc).__name__}: {exc}"})
                break
            engines[backend] = eng
            row.update(median_ms=t["median_ms"], img_s=batch * 1e3 / t["median_ms"])
            if backend == "eager":
                refs[batch] = emb
            elif batch in refs:
                row["max_abs_diff_vs_eager"] = float((emb - refs[batch]).abs().max())
            if flavor in GFLOP_PER_IMAGE:
                row["tflop_s"] = row["img_s"] * GFLOP_PER_IMAGE[flavor] / 1e3
            rows.append(row)
    return rows, engines


def _e2e_row(scorer: str, shard: Path, n: int, engine: Any, run: RunConfig, batch: int) -> dict[str, Any]:
    """Stream the shard through decode and the scorer stages (``filter``'s loop) with a warm engine.

    On a CPU, torch's threads are set as ``filter`` sets them (:func:`configure_threads`) and a CLIP engine is
    rebuilt after that (an onnxruntime session keeps the thread count it was created with), then restored.
    """
    import torch

    from relight_stream.engines.registry import create_engine
    from relight_stream.pipeline.decode import decode_batches, resolve_dali
    from relight_stream.pipeline.filter_run import ScoresSink, build_stages, configure_threads, decode_workers
    from relight_stream.pipeline.runner import run_stages
    from relight_stream.pipeline.sources import discover

    clip = ClipConfig(model="tiny", pretrained=None, batch_size=batch)
    cfg = FilterConfig(inputs=[str(shard)], out="-", scorer=scorer, decode=DecodeConfig(resolution=224,
                                                                                           batch_size=batch), clip=clip)
    before = torch.get_num_threads()
    threads = configure_threads(run.device, decode_workers(cfg)) if engine is not None else None
    try:
        if threads is not None:
            engine = create_engine("clip", engine.spec.flavor, backend=engine.backend, device=engine.device,
                                   precision=engine.precision)
            with torch.inference_mode():
                engine.encode_image(torch.rand(batch, 3, 224, 224))
        stages = build_stages(cfg, run)
        for st in stages:
            if st.name == "clip":
                st.engine = engine  # built and warmed: time the stream, not the model build
        items, _, _ = discover(cfg.inputs)
        sink = ScoresSink({it.key: it for it in items}, save_embeddings=False)
        stats = run_stages(decode_batches(items, cfg.decode, dali=resolve_dali(cfg.decode, run.device)), stages, sink)
    finally:
        torch.set_num_threads(before)
    d = stats.as_dict()
    return {"name": f"filter-e2e-{scorer}", "backend": getattr(engine, "backend", "-") if scorer != "photometric"
            else "numpy", "batch": batch, "images": n, "ok": d["ok"], "img_s": d["samples_per_s"],
            "torch_threads": (threads or torch.get_num_threads()) if engine is not None else None,
            "decode_workers": decode_workers(cfg),
            "stage_ms_per_batch": d["stage_ms_per_batch"], "source_wait_ms_per_batch": d["source_wait_ms_per_batch"]}


def bench_filter(cfg: BenchConfig, run: RunConfig) -> dict[str, Any]:
    """Run the filter benchmarks (see the module docstring) and return ``{"target": "filter", "rows": [...]}``."""
    from relight_stream.engines.registry import resolve_device
    from relight_stream.kernels.xp import has_cupy
    from relight_stream.pipeline.lighting_score import photometric_scores

    dev = resolve_device(run.device)
    cuda = dev.type == "cuda"
    flavor = "tiny" if cfg.tiny else "vit-l-14" if cuda else "vit-b-32"
    n_photo, clip_batch = (32, 8) if cfg.tiny else (256, 256 if cuda else 16)
    n_e2e = 32 if cfg.tiny else 4096 if cuda else 64
    rows: list[dict[str, Any]] = []

    imgs = _images(n_photo, 224)
    t = measure(lambda: photometric_scores(imgs), warmup=cfg.warmup, repeats=cfg.repeats, sync=False)
    rows.append({"name": "photometric", "backend": "numpy", "batch": n_photo, "median_ms": t["median_ms"],
                 "img_s": n_photo * 1e3 / t["median_ms"]})
    if has_cupy():
        import cupy

        gimgs = cupy.asarray(imgs)
        t = measure(lambda: photometric_scores(gimgs), warmup=max(1, cfg.warmup), repeats=cfg.repeats)
        rows.append({"name": "photometric", "backend": "cupy", "batch": n_photo, "median_ms": t["median_ms"],
                     "img_s": n_photo * 1e3 / t["median_ms"]})

    clip_rows, engines = _clip_rows(flavor, dev, list(cfg.batch_sizes) or [clip_batch], cfg)
    rows += clip_rows
    timed = [r for r in clip_rows if "img_s" in r]
    best = max(timed, key=lambda r: r["img_s"]) if timed else None

    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        shard = write_jpeg_shard(Path(tmp) / "shard-000000.tar", _images(n_e2e, 256, seed=1))
        e2e_run = RunConfig(seed=0, device=str(dev), log_level=run.log_level, offline=True)
        rows.append(_e2e_row("photometric", shard, n_e2e, None, e2e_run, clip_batch))
        if best is not None:
            rows.append(_e2e_row("clip", shard, n_e2e, engines[best["backend"]], e2e_run, best["batch"]))

    result: dict[str, Any] = {
        "target": "filter", "rows": rows, "machine": machine_info(), "device": str(dev), "clip_flavor": flavor,
        "clip_best_img_s": best["img_s"] if best else None, "clip_best_backend": best["backend"] if best else None,
        "e2e_clip_img_s": rows[-1]["img_s"] if best else None,
        "e2e_photometric_img_s": next(r["img_s"] for r in rows if r["name"] == "filter-e2e-photometric"),
    }
    if cuda and flavor == "vit-l-14":
        result["h100_target_img_s"] = H100_TARGET_IMG_S
        result["meets_target"] = bool(best and best["img_s"] >= H100_TARGET_IMG_S)
    return result
