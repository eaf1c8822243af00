"""Decode: the batch iterator (DALI for JPEG, PIL/OpenCV for the rest) and the decode policy (RELIABILITY.md A).

Per sample (:func:`decode_image`): reads raw file bytes; writes an sRGB uint8 ``H×W×3`` array at ``resolution``²
plus a JSON-able ``info`` dict, or raises :class:`DecodeError` with a reason code. It lives in
:mod:`~relight_stream.pipeline.decode_cpu` (the per-sample decode), :mod:`~relight_stream.pipeline.decode_pixels`
(pixel decoders, orientation, alpha, square fit), :mod:`~relight_stream.pipeline.decode_suspicious` (the
constant-output check) and :mod:`~relight_stream.pipeline.decode_probe` (header checks); the names are re-exported
here.

Batches (:func:`decode_batches`, the API other commands build on): reads :class:`~relight_stream.pipeline.sources.
InputItem` s; yields :class:`~relight_stream.sample.SampleBatch` es of up to ``batch_size`` with

* ``rgb_BHW3``: uint8 sRGB ``B×R×R×3`` (NumPy; a torch CUDA tensor when DALI decodes on the GPU); rows of dropped
  samples are zeros;
* ``alpha_BHW`` (only with ``keep_alpha``): float32 0–1 ``B×R×R``, the alpha resized like the image (1 for opaque
  images, 0 in a ``pad`` letterbox), on the same device as ``rgb_BHW3``;
* ``meta[i]``: ``key``, ``source`` (path, URL or ``tar::member``), ``sample_seed`` (16 hex digits of
  :func:`~relight_stream.keys.sample_seed`), ``format``, ``orig_size`` [w, h], ``source_mode``, ``n_frames``,
  ``ext_mismatch``, ``has_alpha``, ``exif_orientation``, ``icc_profile`` (description or null), ``icc_converted``,
  ``bit_depth``, ``truncated_filled``, ``decoder`` (``dali-cpu``/``dali-mixed``/``pil``/``cv2``) — the same keys
  for every kept sample — and ``source_row`` (extra columns of a list input);
* drops as ``decode:<code>`` (``decode:truncated``; ``decode:error`` with ``failed=True`` for a decoder crash).

JPEGs go to DALI (:mod:`relight_stream.pipeline.decode_dali`) when the backend resolves to it and the header probe
says DALI gives the same result (RGB/L, ends with EOI, no ICC to convert); everything else, and every sample of a
DALI batch that fails, is decoded here on the CPU: plain 8-bit RGB/gray JPEG and PNG with OpenCV (the same pixels as
Pillow, faster), 16-bit PNG with OpenCV, everything else (alpha, palette, CMYK, ICC, GIF, WebP, ...) with Pillow.
DALI and OpenCV (both libjpeg-turbo) decode some JPEGs with corrupt entropy-coded data that Pillow would reject; a
JPEG neither can decode goes to Pillow, which names the problem. Reading, probing and CPU decoding run in a thread
pool (PIL and OpenCV release the GIL) with at most ``prefetch`` batches in flight, so memory stays flat in the
number of inputs.

Policy, the same on every path:

* The content decides the decoder (magic bytes), never the extension; a mismatch is recorded as ``ext_mismatch``.
* Header checks run **before** the pixel decode: ``too_large`` (width × height > ``max_pixels``; also Pillow's
  decompression-bomb error), ``too_small`` (a side < ``min_size``), ``aspect_ratio`` (> ``max_aspect_ratio``),
  ``animated`` (when ``animated="skip"``; otherwise the first frame, with ``n_frames`` recorded).
* Truncated data is rejected as ``truncated`` (JPEG cut short; PNG with chunks or IEND missing); a PNG chunk with
  a bad CRC is ``corrupt``. ``allow_truncated`` decodes cut files (Pillow) with the missing part filled, recorded as
  ``truncated_filled``; a bad CRC stays ``corrupt``.
* EXIF orientation (1–8) is applied to the pixels (the same transposes as ``PIL.ImageOps.exif_transpose``).
* 16-bit images are scaled with rounding, ``(v + 128) // 257``: all 256 output levels are reachable.
* Alpha (RGBA, LA, palette with tRNS) is composited in sRGB onto ``background`` (neutral grey 128 by default):
  ``out = (rgb·a + bg·(255 − a)) / 255``; ``has_alpha`` is recorded; ``keep_alpha`` also keeps it as a mask.
* A decoder output that is one solid colour (all-zero included) is cross-checked with an independent decoder
  (Pillow, or OpenCV when Pillow decoded it), whose 16-bit data is scaled as above and whose colours are converted
  with the same ICC profile when the output was; if that one sees varying pixels or another colour (> 8 levels; only
  varying pixels when the profile does not apply to its pixels), the sample is skipped as ``suspicious_decode``
  (A13). A file that really is one colour passes (a stage may drop it).
* CMYK (with or without the Adobe marker) is converted by Pillow. An embedded ICC profile is converted to sRGB when
  ``icc="convert"`` (``icc_profile`` records the profile's description either way).
* ``resize="crop"``: the centred square of side min(H, W) is resized to ``resolution``²; ``"pad"``: the image is
  fitted inside the square and padded with ``background``. Downscaling uses area averaging, upscaling bicubic.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from relight_stream.config import DecodeConfig
from relight_stream.kernels.xp import asnumpy
from relight_stream.log import pool_threads
from relight_stream.pipeline.decode_cpu import (  # noqa: F401  (re-exported: the public decode API)
    decode_full,
    decode_image,
    decode_probed,
)
from relight_stream.pipeline.decode_pixels import composite, fit_square, orient
from relight_stream.pipeline.decode_probe import (  # noqa: F401
    REASONS,
    DecodeError,
    _routable,
    check_png,
    jpeg_complete,
    probe,
    sniff_format,
)
from relight_stream.pipeline.decode_suspicious import check_suspicious, disagrees, is_constant, second_opinion

__all__ = ["REASONS", "DecodeError", "check_png", "check_suspicious", "composite", "decode_batches", "decode_full",
           "decode_image", "decode_probed", "decode_writes", "disagrees", "fit_square", "is_constant", "jpeg_complete",
           "orient", "probe", "resolve_dali", "second_opinion", "sniff_format"]
log = logging.getLogger(__name__)


def decode_writes(cfg: DecodeConfig) -> tuple[str, ...]:
    """The batch fields :func:`decode_batches` writes with ``cfg`` (for ``check_pipeline`` and the shard members)."""
    return ("rgb_BHW3", "alpha_BHW") if cfg.keep_alpha else ("rgb_BHW3",)


def resolve_dali(cfg: DecodeConfig, device: str = "auto"):
    """The DALI decoder for ``cfg.backend`` (``None`` for the CPU path); logs the choice and why.

    Raises:
        ValueError: ``backend="dali"`` asked for but DALI is not importable.
    """
    from relight_stream.pipeline.decode_dali import DaliDecoder, dali_available

    if cfg.backend == "pil":
        log.info("decode backend: pil/opencv (asked for)")
        return None
    ok, why = dali_available()
    if not ok:
        if cfg.backend == "dali":
            raise ValueError(f"decode backend 'dali' asked for but unavailable: {why}")
        log.info("decode backend: pil/opencv (%s)", why)
        return None
    gpu = False
    if device != "cpu":
        import torch

        gpu = torch.cuda.is_available()
        if device.startswith("cuda") and not gpu:
            raise ValueError(f"device {device!r} asked for but CUDA is not available")
    dev_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    dali = DaliDecoder(cfg, device="mixed" if gpu else "cpu", device_id=dev_id)
    log.info("decode backend: %s for JPEG, pil/opencv for other formats and DALI failures", dali.name)
    return dali


def _prepare(item: Any, cfg: DecodeConfig, use_dali: bool) -> tuple[str, Any, Any]:
    """Read + probe (+ CPU decode): ("dali", bytes, info) | ("ok", (rgb, alpha), info) | ("skip"/"fail", code,
    detail)."""
    if item.missing:
        return "skip", item.missing, item.describe_source()
    try:
        data = item.read()
    except FileNotFoundError:
        return "skip", "missing_file", item.describe_source()
    except Exception as exc:
        return "fail", "read_error", f"{type(exc).__name__}: {exc}"
    try:
        im, info = probe(data, cfg, ext=item.ext)
        # a kept alpha in a letterbox needs the exact content box: the CPU path computes it
        if use_dali and _routable(info, data, cfg) and not (cfg.keep_alpha and cfg.resize == "pad"):
            return "dali", data, info
        rgb, alpha, info = decode_full(im, info, data, cfg)
        return "ok", (rgb, alpha), info
    except DecodeError as exc:
        return "skip", exc.code, exc.detail
    except Exception as exc:  # a decoder crash is our failure, recorded per sample
        return "fail", "error", f"{type(exc).__name__}: {exc}"


def _constant_rows(out: Any) -> list[int]:
    """Rows of a ``B×R×R×3`` batch (NumPy or torch) that are one solid colour."""
    if isinstance(out, np.ndarray):
        return [j for j in range(len(out)) if is_constant(out[j])]
    flat = out.reshape(len(out), -1, out.shape[-1])
    return (flat == flat[:, :1]).all(dim=2).all(dim=1).nonzero().flatten().tolist()


def _recheck_dali(out: Any, idx: list[int], results: list, cfg: DecodeConfig, name: str, pool: Any) -> None:
    """A13 on the DALI rows: a solid-colour row that Pillow decodes with varying pixels is marked
    ``suspicious_decode`` in ``results`` and zeroed in ``out``."""
    const = _constant_rows(out)

    def check(j: int) -> bool:
        data, info = results[idx[j]][1], results[idx[j]][2]
        return disagrees(asnumpy(out[j]), second_opinion(data, name, fit=cfg, orientation=info["exif_orientation"]))

    for j, bad in zip(const, pool.map(check, const)):
        if bad:
            results[idx[j]] = ("skip", "suspicious_decode", f"{name} decoded one solid colour but pil decodes "
                               "something else")
            out[j] = 0


def _assemble(items: list, results: list, cfg: DecodeConfig, seed: int, dali, pool) -> Any:
    from relight_stream.keys import sample_seed
    from relight_stream.sample import SampleBatch

    res = cfg.resolution
    batch = SampleBatch(keys=[it.key for it in items])
    for i, it in enumerate(items):
        # hex string: a uint64 does not fit the int64 columns of pyarrow/datasets readers of meta.json
        batch.meta[i].update(key=it.key, source=it.describe_source(), sample_seed=f"{sample_seed(seed, it.key):016x}")
        if it.extra:
            batch.meta[i]["source_row"] = it.extra
    rgb = np.zeros((len(items), res, res, 3), np.uint8)
    alpha = np.zeros((len(items), res, res), np.float32) if cfg.keep_alpha else None
    dali_idx = [i for i, r in enumerate(results) if r[0] == "dali"]
    dali_out = None
    if dali_idx:
        try:
            dali_out = dali.decode([results[i][1] for i in dali_idx], pool=pool)
            for i in dali_idx:
                results[i][2]["decoder"] = dali.name
        except Exception as exc:
            log.warning("DALI failed on a batch of %d (%s); decoding it per sample on the CPU",
                        len(dali_idx), " ".join(str(exc).split())[:300])
            redo = pool.map(lambda i: _prepare(items[i], cfg, False), dali_idx)
            for i, r in zip(dali_idx, redo):
                results[i] = r
            dali_idx = []
    if dali_out is not None:
        _recheck_dali(dali_out, dali_idx, results, cfg, dali.name, pool)
    for i, (kind, a, b) in enumerate(results):
        if kind == "ok":
            rgb[i] = a[0]
            if alpha is not None:
                alpha[i] = a[1] * np.float32(1 / 255)
        if kind in ("ok", "dali"):
            batch.meta[i].update(b)
            if kind == "dali" and alpha is not None:
                alpha[i] = 1.0  # DALI only takes opaque JPEGs, and no letterbox when the alpha is kept
        elif kind in ("skip", "fail"):
            batch.drop(i, f"decode:{a}", failed=kind == "fail", detail=b)
    if dali is not None and dali.device == "mixed":  # GPU decode: every batch lives on the GPU
        import torch

        out = torch.from_numpy(rgb).to(f"cuda:{dali.device_id}")
        if dali_out is not None:
            out[torch.as_tensor(dali_idx, device=out.device)] = dali_out
        batch["rgb_BHW3"] = out
        if alpha is not None:
            batch["alpha_BHW"] = torch.from_numpy(alpha).to(out.device)
        return batch
    if dali_out is not None:
        rgb[dali_idx] = dali_out
    batch["rgb_BHW3"] = rgb
    if alpha is not None:
        batch["alpha_BHW"] = alpha
    return batch


def decode_batches(items: Any, cfg: DecodeConfig, *, seed: int = 0, dali: Any = None, num_workers: int = 0,
                   prefetch: int = 2, groups: Any = None) -> Any:
    """Stream ``items`` as decoded :class:`SampleBatch` es of up to ``cfg.batch_size`` (see the module docstring).

    Args:
        items: Iterable of ``InputItem`` in plan order (consumed lazily); ignored when ``groups`` is given.
        cfg: Decode settings.
        seed: Global seed (for ``meta.sample_seed``).
        dali: A decoder from :func:`resolve_dali`, or ``None`` for the CPU path.
        num_workers: Threads for reading/probing/CPU decode (0: ``log.pool_threads()``).
        prefetch: Batches submitted ahead of the one being yielded.
        groups: Iterable of item sequences (e.g. work units); no batch crosses a group boundary, while one thread
            pool and prefetch window serve all groups.
    """
    import itertools
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def chunks():
        for g in (groups if groups is not None else [items]):
            it = iter(g)
            while chunk := list(itertools.islice(it, cfg.batch_size)):
                yield chunk

    workers = num_workers or pool_threads()
    source = chunks()
    use_dali = dali is not None
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        window: deque = deque()

        def submit() -> bool:
            chunk = next(source, None)
            if chunk:
                window.append((chunk, [pool.submit(_prepare, x, cfg, use_dali) for x in chunk]))
            return bool(chunk)

        for _ in range(max(1, prefetch)):
            if not submit():
                break
        while window:
            chunk, futs = window.popleft()
            submit()
            yield _assemble(chunk, [f.result() for f in futs], cfg, seed, dali, pool)
