"""``relight-stream bench decode``: images/s of DALI-CPU vs PIL vs OpenCV (and simplejpeg) on the same inputs.

Reads nothing from disk: the inputs are scikit-image's bundled photos (astronaut, coffee, chelsea, rocket), cropped,
flipped and resized to 512² (``--tiny``: 128²), encoded once as JPEG (q95, 4:2:0) and PNG (level 6) into a temp
folder. Every decoder decodes the same bytes to RGB uint8 with the same number of threads (the CPU count):
DALI with ``num_threads``, the others through a thread pool (they release the GIL). Rows:

* ``raw`` decoders: ``dali-cpu`` (decode + a 512² resize/crop, identity here), ``pil``, ``opencv``,
  ``simplejpeg`` (JPEG only);
* ``pipeline``: :func:`relight_stream.pipeline.decode.decode_batches` end to end (file read, header probe, checks,
  routing, decode, square resize, batch assembly) with the DALI and the PIL backend.

``cfg.backend`` ``dali`` or ``pil`` restricts the rows to that backend and names them ``raw/<fmt>`` and
``pipeline/<fmt>``, so ``--compare dali,pil`` matches them. Returns
``{"target": "decode", "rows": [{name, backend, format, kind, images, threads, ms, images_per_s}], ...}``.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from relight_stream.bench.timing import machine_info
from relight_stream.config import BenchConfig, DecodeConfig, RunConfig


def make_inputs(n: int, size: int) -> dict[str, list[bytes]]:
    """``n`` photo-like images of ``size``², as JPEG q95 and PNG bytes."""
    import cv2
    from PIL import Image
    from skimage import data

    photos = [getattr(data, k)() for k in ("astronaut", "coffee", "chelsea", "rocket")]
    jpg, png = [], []
    for i in range(n):
        p = photos[i % 4]
        p = p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2)
        h, w = p.shape[:2]
        s = min(h, w) - 8 * (i // 4 % 8)
        y0, x0 = (h - s) // 2, (w - s) // 2
        crop = np.ascontiguousarray(p[y0 : y0 + s, x0 : x0 + s, :3])
        if (i // 4) % 2:
            crop = np.ascontiguousarray(crop[:, ::-1])
        img = Image.fromarray(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA))
        for fmt, out, kw in (("JPEG", jpg, {"quality": 95}), ("PNG", png, {"compress_level": 6})):
            b = io.BytesIO()
            img.save(b, fmt, **kw)
            out.append(b.getvalue())
    return {"jpeg": jpg, "png": png}


def _pool_decoder(fn: Callable[[bytes], np.ndarray], pool: ThreadPoolExecutor) -> Callable[[list[bytes]], Any]:
    return lambda blobs: list(pool.map(fn, blobs))


def _pil(b: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def _cv2(b: bytes) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _simplejpeg(b: bytes) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(b, colorspace="RGB")


def bench_decode(cfg: BenchConfig, run: RunConfig) -> dict[str, Any]:
    """Time every decoder on the same JPEG and PNG inputs (see the module docstring)."""
    from relight_stream.pipeline.decode import decode_batches, resolve_dali
    from relight_stream.pipeline.decode_dali import DaliDecoder, dali_available
    from relight_stream.pipeline.sources import discover

    n, size = (16, 128) if cfg.tiny else (64, 512)
    threads = os.cpu_count() or 1
    inputs = make_inputs(n, size)
    want = cfg.backend if cfg.backend in ("dali", "pil") else "all"
    has_dali = dali_available()[0]
    rows: list[dict[str, Any]] = []

    cases: list[tuple[dict[str, Any], Callable[[], Any]]] = []

    def add(name: str, decoder: str, fmt: str, kind: str, fn: Callable[[], Any]) -> None:
        if want != "all":  # one backend: backend-neutral names, so --compare dali,pil can match rows
            name = f"{kind}/{fmt}"
        cases.append(({"name": name, "backend": decoder, "format": fmt, "kind": kind, "images": n,
                       "threads": threads}, fn))

    with ThreadPoolExecutor(threads) as pool, tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        for fmt, blobs in inputs.items():
            if has_dali and want in ("all", "dali"):
                dali = DaliDecoder(DecodeConfig(resolution=size, batch_size=32), device="cpu", num_threads=threads)
                add(f"dali-cpu/{fmt}", "dali-cpu", fmt, "raw",
                    lambda d=dali, b=blobs: [d.decode(b[i : i + 32]) for i in range(0, len(b), 32)])
            if want in ("all", "pil"):
                add(f"pil/{fmt}", "pil", fmt, "raw", lambda b=blobs: _pool_decoder(_pil, pool)(b))
            if want == "all":
                add(f"opencv/{fmt}", "opencv", fmt, "raw", lambda b=blobs: _pool_decoder(_cv2, pool)(b))
                if fmt == "jpeg":
                    add(f"simplejpeg/{fmt}", "simplejpeg", fmt, "raw",
                        lambda b=blobs: _pool_decoder(_simplejpeg, pool)(b))
            folder = os.path.join(tmp, fmt)
            os.makedirs(folder)
            for i, b in enumerate(blobs):
                with open(os.path.join(folder, f"{i:05d}.{'jpg' if fmt == 'jpeg' else 'png'}"), "wb") as f:
                    f.write(b)
            items = discover([folder])[0]
            for backend in ("dali", "pil"):
                if want not in ("all", backend) or (backend == "dali" and not has_dali):
                    continue
                bcfg = DecodeConfig(resolution=size, min_size=16, batch_size=32, backend=backend, num_workers=threads)
                dec = resolve_dali(bcfg, "cpu")
                add(f"pipeline-{backend}/{fmt}", f"pipeline-{backend}", fmt, "pipeline",
                    lambda c=bcfg, d=dec, it=items: [b.num_kept for b in decode_batches(it, c, dali=d,
                                                                                        num_workers=threads)])
        # interleaved rounds: every case once per round, so load drift on a shared machine hits all cases alike
        times: list[list[float]] = [[] for _ in cases]
        for r in range(cfg.warmup + max(1, cfg.repeats)):
            for k, (_, fn) in enumerate(cases):
                t0 = time.perf_counter()
                fn()
                if r >= cfg.warmup:
                    times[k].append((time.perf_counter() - t0) * 1e3)
    for (row, _), ts in zip(cases, times):
        ms = statistics.median(ts)
        rows.append({**row, "ms": round(ms, 2), "images_per_s": round(n / (ms / 1e3), 1)})
    best = {fmt: max((r for r in rows if r["format"] == fmt and r["kind"] == "raw"), key=lambda r: r["images_per_s"],
                     default={}).get("backend") for fmt in inputs}
    return {"target": "decode", "rows": rows, "size": size, "images": n, "threads": threads, "fastest": best,
            "columns": ["name", "backend", "kind", "images", "threads", "ms", "images_per_s"],
            "machine": machine_info(),
            "note": "ms = median wall time to decode all images once, cases interleaved round-robin; same bytes and "
                    "thread count for every decoder"}
