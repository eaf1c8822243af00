"""Decode: the batch iterator (DALI for JPEG, PIL/OpenCV for the rest) and the per-sample CPU path (RELIABILITY.md A).

Per sample (:func:`decode_image`): reads raw file bytes; writes an sRGB uint8 ``H×W×3`` array at ``resolution``²
plus a JSON-able ``info`` dict, or raises :class:`DecodeError` with a reason code.

Batches (:func:`decode_batches`, the API other commands build on): reads :class:`~relight_stream.pipeline.sources.
InputItem` s; yields :class:`~relight_stream.sample.SampleBatch` es of up to ``batch_size`` with

* ``rgb_BHW3``: uint8 sRGB ``B×R×R×3`` (NumPy; a torch CUDA tensor when DALI decodes on the GPU); rows of dropped
  samples are zeros;
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
  a bad CRC is ``corrupt``. ``allow_truncated`` decodes cut files with the missing part filled, recorded as
  ``truncated_filled``.
* EXIF orientation (1–8) is applied to the pixels (the same transposes as ``PIL.ImageOps.exif_transpose``).
* 16-bit images are scaled with rounding, ``(v + 128) // 257``: all 256 output levels are reachable.
* Alpha (RGBA, LA, palette with tRNS) is composited in sRGB onto ``background`` (neutral grey 128 by default):
  ``out = (rgb·a + bg·(255 − a)) / 255``; ``has_alpha`` is recorded.
* CMYK (with or without the Adobe marker) is converted by Pillow. An embedded ICC profile is converted to sRGB when
  ``icc="convert"`` (``icc_profile`` records the profile's description either way).
* ``resize="crop"``: the centred square of side min(H, W) is resized to ``resolution``²; ``"pad"``: the image is
  fitted inside the square and padded with ``background``. Downscaling uses area averaging, upscaling bicubic.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import warnings
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from relight_stream.config import DecodeConfig

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_TRUNCATED_LOCK = threading.Lock()

_FORMAT_EXTS = {"JPEG": ("jpg", "jpeg"), "PNG": ("png",), "WEBP": ("webp",), "GIF": ("gif",), "BMP": ("bmp",),
                "TIFF": ("tif", "tiff"), "MPO": ("jpg", "jpeg")}
#: Reason codes the decoder can emit, all ``skipped`` (bad input) records.
REASONS = ("empty_file", "unidentified", "truncated", "corrupt", "too_large", "too_small", "aspect_ratio",
           "animated", "missing_component", "missing_file")


class DecodeError(Exception):
    """A per-sample decode problem with a reason code (``truncated``) and a human-readable detail."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


def sniff_format(data: bytes) -> str | None:
    """Format by magic bytes: ``JPEG``, ``PNG``, ``GIF``, ``WEBP``, ``BMP``, ``TIFF`` or ``None``."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def check_png(data: bytes) -> int:
    """Walk the PNG chunks: raise ``truncated`` when cut short / without IEND, ``corrupt`` on a bad CRC.

    Returns:
        The bit depth from IHDR.
    """
    pos, n, depth = 8, len(data), 8
    while True:
        if pos + 8 > n:
            raise DecodeError("truncated", "PNG ends before IEND")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > n:
            raise DecodeError("truncated", f"PNG chunk {ctype!r} cut short")
        crc = struct.unpack(">I", data[end - 4 : end])[0]
        if zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise DecodeError("corrupt", f"PNG chunk {ctype!r} has a bad CRC")
        if ctype == b"IHDR":
            depth = data[pos + 16]
        if ctype == b"IEND":
            return depth
        pos = end


def jpeg_complete(data: bytes) -> bool:
    """True when the JPEG ends with an EOI marker (trailing zero padding allowed)."""
    return data.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def probe(data: bytes, cfg: DecodeConfig, *, ext: str = "") -> tuple[Image.Image, dict[str, Any]]:
    """Open the header and run every check that needs no pixel decode.

    Returns:
        (the lazily opened PIL image, info with ``format``, ``orig_size`` [w, h] after orientation, ``source_mode``,
        ``n_frames``, ``ext_mismatch``, ``exif_orientation``, ``icc_profile``, ``bit_depth``).

    Raises:
        DecodeError: ``empty_file``, ``unidentified``, ``too_large``, ``too_small``, ``aspect_ratio``, ``animated``.
    """
    if not data:
        raise DecodeError("empty_file", "0 bytes")
    if Image.MAX_IMAGE_PIXELS is not None and cfg.max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels  # a raised max_pixels must raise Pillow's own bomb limit too
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_large", f"{exc} (max_pixels {cfg.max_pixels})") from None
    except UnidentifiedImageError:
        raise DecodeError("unidentified", f"not an image ({data[:8]!r}...)") from None
    except Exception as exc:
        raise DecodeError("corrupt", f"{type(exc).__name__}: {exc}") from None
    fmt = im.format or sniff_format(data) or "?"
    w, h = im.size
    if w * h > cfg.max_pixels:
        raise DecodeError("too_large", f"{w}x{h} = {w * h} pixels > max_pixels {cfg.max_pixels}")
    if min(w, h) < cfg.min_size:
        raise DecodeError("too_small", f"{w}x{h} < min_size {cfg.min_size}")
    if max(w, h) / min(w, h) > cfg.max_aspect_ratio:
        raise DecodeError("aspect_ratio", f"{w}x{h} > max_aspect_ratio {cfg.max_aspect_ratio}")
    n_frames = int(getattr(im, "n_frames", 1) or 1)
    if fmt == "MPO":  # a camera JPEG with extra MPF pictures (depth, previews): not an animation
        fmt, n_frames = "JPEG", 1
    if n_frames > 1 and cfg.animated == "skip":
        raise DecodeError("animated", f"{n_frames} frames")
    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        orientation = 1
    orientation = orientation if 1 <= orientation <= 8 else 1
    icc = im.info.get("icc_profile")
    info: dict[str, Any] = {
        "format": fmt,
        "orig_size": [h, w] if orientation >= 5 else [w, h],
        "source_mode": im.mode,
        "n_frames": n_frames,
        "ext_mismatch": bool(ext) and ext not in _FORMAT_EXTS.get(fmt, (ext,)),
        "exif_orientation": orientation,
        "icc_profile": _icc_name(icc) if icc else None,
        "has_alpha": im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info,
        "bit_depth": 8,
        "icc_converted": False,
        "truncated_filled": False,
    }
    return im, info


def _icc_name(icc: bytes) -> str:
    try:
        from PIL import ImageCms

        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip() or "unknown"
    except Exception:
        return "unreadable"


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation ``1..8`` to an ``H×W[×C]`` array (as ``PIL.ImageOps.exif_transpose``)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _to_u8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.max(initial=0) > 255):
        return ((np.clip(a, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.dtype.kind == "f":
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Alpha-composite ``H×W×4`` uint8 onto a solid sRGB background (integer, rounded)."""
    a = rgba[..., 3:4].astype(np.uint16)
    bg = np.asarray(background, dtype=np.uint16)
    out = (rgba[..., :3].astype(np.uint16) * a + bg * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _pixels_pil(im: Image.Image, data: bytes, cfg: DecodeConfig, info: dict[str, Any]) -> np.ndarray:
    """Decode to ``H×W×3`` or ``H×W×4`` uint8 (before orientation)."""
    try:
        im.load()
    except Exception as exc:
        msg = str(exc)
        if "truncated" not in msg:  # "broken data stream" is corrupt data, not a cut file
            raise DecodeError("corrupt", f"{type(exc).__name__}: {msg}") from None
        if not cfg.allow_truncated:
            raise DecodeError("truncated", msg) from None
        with _TRUNCATED_LOCK:  # Pillow's switch is process-global
            ImageFile.LOAD_TRUNCATED_IMAGES = True
            try:
                im = Image.open(io.BytesIO(data))
                im.load()
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = False
        info["truncated_filled"] = True
    if im.info.get("icc_profile") and cfg.icc == "convert" and im.mode in ("RGB", "RGBA", "CMYK", "L", "LA"):
        im = _icc_to_srgb(im, info)
    mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        return np.asarray(im.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        g = _to_u8(np.asarray(im))
        return np.repeat(g[..., None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im)


def _icc_to_srgb(im: Image.Image, info: dict[str, Any]) -> Image.Image:
    from PIL import ImageCms

    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        out_mode = "RGBA" if im.mode in ("RGBA", "LA") else "RGB"
        if im.mode == "LA":
            im = im.convert("RGBA")
        res = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode=out_mode)
        info["icc_converted"] = True
        return res
    except Exception as exc:
        info["icc_converted"] = False
        log.debug("ICC conversion failed: %s", exc)
        return im


def _pixels_cv2_16bit(data: bytes) -> np.ndarray:
    """16-bit PNG via OpenCV (Pillow reduces 16-bit RGB by truncation and clips I;16 when converting)."""
    import cv2

    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None:
        raise DecodeError("corrupt", "OpenCV could not decode the 16-bit PNG")
    a = _to_u8(a)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 2:  # gray + alpha
        return np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGBA)
    return cv2.cvtColor(a, cv2.COLOR_BGR2RGB)


def _pixels_cv2_8bit(data: bytes) -> np.ndarray | None:
    """A plain 8-bit RGB/gray JPEG or PNG via OpenCV: the same pixels as Pillow (libjpeg-turbo, zlib), faster.
    ``None`` when OpenCV cannot decode it (the caller then lets Pillow name the problem)."""
    import cv2

    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if a is None else cv2.cvtColor(a, cv2.COLOR_BGR2RGB)


def fit_square(img: np.ndarray, cfg: DecodeConfig) -> np.ndarray:
    """Centre-crop (``crop``) or letterbox (``pad``) ``H×W×3`` uint8 to ``resolution``²."""
    import cv2

    res = cfg.resolution
    h, w = img.shape[:2]
    if cfg.resize == "crop":
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        img = img[y0 : y0 + s, x0 : x0 + s]
        if s == res:
            return np.ascontiguousarray(img)
        interp = cv2.INTER_AREA if s > res else cv2.INTER_CUBIC
        return cv2.resize(np.ascontiguousarray(img), (res, res), interpolation=interp)
    scale = res / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    small = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)
    out = np.empty((res, res, 3), np.uint8)
    out[:] = np.asarray(cfg.background, np.uint8)
    y0, x0 = (res - nh) // 2, (res - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = small
    return out


def decode_image(data: bytes, cfg: DecodeConfig, *, ext: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one file on the CPU: checks, pixels, orientation, alpha, resize.

    Returns:
        (``resolution``² ×3 sRGB uint8, info dict; ``decoder`` is ``pil`` or ``cv2``).

    Raises:
        DecodeError: with a reason code from :data:`REASONS`.
    """
    im, info = probe(data, cfg, ext=ext)
    return decode_probed(im, info, data, cfg)


def decode_probed(im: Image.Image, info: dict[str, Any], data: bytes, cfg: DecodeConfig) -> tuple[np.ndarray, dict]:
    """:func:`decode_image` after :func:`probe` (the header is not parsed twice)."""
    depth = 8
    if info["format"] == "PNG":
        try:
            depth = check_png(data)
        except DecodeError:
            if not cfg.allow_truncated:
                raise
    px = None
    if depth == 16 and not (im.info.get("icc_profile") and cfg.icc == "convert"):
        px, info["decoder"] = _pixels_cv2_16bit(data), "cv2"
    elif _routable(info, data, cfg) or _plain_png(info, cfg):
        px, info["decoder"] = _pixels_cv2_8bit(data), "cv2"
    if px is None:
        if info["n_frames"] > 1:
            im.seek(0)
        px, info["decoder"] = _pixels_pil(im, data, cfg, info), "pil"
    if depth == 16:
        info["bit_depth"] = 16
    if px.shape[2] == 4:
        info["has_alpha"] = True
        px = composite(px, cfg.background)
    px = orient(px, info["exif_orientation"])
    return fit_square(px, cfg), info


# ----------------------------------------------------------------------------------------- batches


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


def _plain_png(info: dict[str, Any], cfg: DecodeConfig) -> bool:
    return (info["format"] == "PNG" and info["source_mode"] in ("RGB", "L") and not info["has_alpha"]
            and not (info["icc_profile"] and cfg.icc == "convert"))


def _routable(info: dict[str, Any], data: bytes, cfg: DecodeConfig) -> bool:
    return (info["format"] == "JPEG" and info["source_mode"] in ("RGB", "L") and jpeg_complete(data)
            and not (info["icc_profile"] and cfg.icc == "convert"))


def _prepare(item: Any, cfg: DecodeConfig, use_dali: bool) -> tuple[str, Any, Any]:
    """Read + probe (+ CPU decode): ("dali", bytes, info) | ("ok", rgb, info) | ("skip"/"fail", code, detail)."""
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
        if use_dali and _routable(info, data, cfg):
            return "dali", data, info
        return ("ok", *decode_probed(im, info, data, cfg))
    except DecodeError as exc:
        return "skip", exc.code, exc.detail
    except Exception as exc:  # a decoder crash is our failure, recorded per sample
        return "fail", "error", f"{type(exc).__name__}: {exc}"


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
    for i, (kind, a, b) in enumerate(results):
        if kind == "ok":
            rgb[i] = a
        if kind in ("ok", "dali"):
            batch.meta[i].update(b)
        elif kind in ("skip", "fail"):
            batch.drop(i, f"decode:{a}", failed=kind == "fail", detail=b)
    if dali is not None and dali.device == "mixed":  # GPU decode: every batch lives on the GPU
        import torch

        out = torch.from_numpy(rgb).to(f"cuda:{dali.device_id}")
        if dali_out is not None:
            out[torch.as_tensor(dali_idx, device=out.device)] = dali_out
        batch["rgb_BHW3"] = out
        return batch
    if dali_out is not None:
        rgb[dali_idx] = dali_out
    batch["rgb_BHW3"] = rgb
    return batch


def decode_batches(items: Any, cfg: DecodeConfig, *, seed: int = 0, dali: Any = None, num_workers: int = 0,
                   prefetch: int = 2, groups: Any = None) -> Any:
    """Stream ``items`` as decoded :class:`SampleBatch` es of up to ``cfg.batch_size`` (see the module docstring).

    Args:
        items: Iterable of ``InputItem`` in plan order (consumed lazily); ignored when ``groups`` is given.
        cfg: Decode settings.
        seed: Global seed (for ``meta.sample_seed``).
        dali: A decoder from :func:`resolve_dali`, or ``None`` for the CPU path.
        num_workers: Threads for reading/probing/CPU decode (0: ``min(8, cpu_count)``).
        prefetch: Batches submitted ahead of the one being yielded.
        groups: Iterable of item sequences (e.g. work units); no batch crosses a group boundary, while one thread
            pool and prefetch window serve all groups.
    """
    import itertools
    import os
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def chunks():
        for g in (groups if groups is not None else [items]):
            it = iter(g)
            while chunk := list(itertools.islice(it, cfg.batch_size)):
                yield chunk

    workers = num_workers or max(1, min(8, os.cpu_count() or 1))
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
