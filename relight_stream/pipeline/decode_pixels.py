"""Decode, pixel decoders (per sample, on the CPU): uint8 pixels from file bytes, orientation, alpha, square fit.

Reads raw file bytes (after :func:`~relight_stream.pipeline.decode_probe.probe`); produces uint8 ``H×W×3`` or
``H×W×4`` arrays in RGB(A) order — plain 8-bit RGB/gray JPEG and PNG via OpenCV (the same pixels as Pillow, faster),
16-bit PNG via OpenCV scaled with rounding ``(v + 128) // 257``, everything else via Pillow (ICC profiles converted to
sRGB when ``icc="convert"``) — and the helpers that turn them into the decoded sample: EXIF orientation
(:func:`orient`), alpha compositing onto the background (:func:`composite`) and the ``resolution``² crop or
letterbox (:func:`fit_square`). Failures raise :class:`~relight_stream.pipeline.decode_probe.DecodeError`.
:mod:`relight_stream.pipeline.decode_cpu` chooses the decoder; the policy is described in
:mod:`relight_stream.pipeline.decode`.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

import numpy as np
from PIL import Image, ImageFile

from relight_stream.config import DecodeConfig
from relight_stream.pipeline.decode_probe import DecodeError

log = logging.getLogger(__name__)
_TRUNCATED_LOCK = threading.Lock()


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


def fit_square(img: np.ndarray, cfg: DecodeConfig, *, fill: Any = None) -> np.ndarray:
    """Centre-crop (``crop``) or letterbox (``pad``) ``H×W×3`` (or ``H×W``) uint8 to ``resolution``².

    Args:
        img: The oriented image.
        cfg: ``resolution``, ``resize`` and ``background`` (the letterbox colour unless ``fill`` is given).
        fill: Letterbox value (e.g. 0 for an alpha plane).
    """
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
    out = np.empty((res, res, *img.shape[2:]), np.uint8)
    out[:] = np.asarray(cfg.background if fill is None else fill, np.uint8)
    y0, x0 = (res - nh) // 2, (res - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = small
    return out
