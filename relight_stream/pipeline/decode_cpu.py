"""Decode, pixel stage (per sample, on the CPU): pixels, alpha, orientation, resize, the constant-output check.

Reads raw file bytes (after :func:`~relight_stream.pipeline.decode_probe.probe`); writes an sRGB uint8 ``R×R×3``
array (``R`` = ``resolution``), optionally the ``R×R`` uint8 alpha, and fills the ``info`` dict, or raises
:class:`~relight_stream.pipeline.decode_probe.DecodeError`. Plain 8-bit RGB/gray JPEG and PNG go to OpenCV (the same
pixels as Pillow, faster), 16-bit PNG to OpenCV, everything else to Pillow. The policy is described in
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
from relight_stream.pipeline.decode_probe import DecodeError, _plain_png, _routable, check_png, png_depth, probe

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


def is_constant(a: Any) -> bool:
    """True when every pixel of an ``H×W[×C]`` array equals the first one (one solid colour; all-zero included)."""
    a = np.asarray(a)
    first = a[0, 0]
    if not (a[::7, ::7] == first).all():  # cheap early exit: real images differ within a 1/7 subsample
        return False
    return bool((a == first).all())


def _pil_pixels_plain(im: Image.Image, mode: str) -> np.ndarray:
    """Pillow pixels as uint8, ``I;16``/``I``/``F`` through :func:`_to_u8` (``convert`` clips them, Pillow #3011)."""
    if im.mode.startswith("I") or im.mode == "F":
        return _to_u8(np.asarray(im))
    return np.asarray(im.convert(mode))


def _colour_manage(a: np.ndarray, icc: bytes) -> np.ndarray:
    """``H×W×C`` (or ``H×W``) uint8 in the colour space of ``icc`` → sRGB, as :func:`_pixels_pil` converts it."""
    if a.ndim == 3 and a.shape[2] == 2:  # gray + alpha
        a = np.concatenate([np.repeat(a[..., :1], 3, axis=2), a[..., 1:]], axis=2)
    mode = "L" if a.ndim == 2 else {3: "RGB", 4: "RGBA"}[a.shape[2]]
    im = Image.fromarray(np.ascontiguousarray(a), mode)
    im.info["icc_profile"] = icc
    done: dict[str, Any] = {}
    out = _icc_to_srgb(im, done)
    if not done["icc_converted"]:
        raise ValueError("the profile does not apply to these pixels")
    return np.asarray(out)


def _opinion(data: bytes, decoder: str, fit: DecodeConfig | None, orientation: int,
             icc: bytes | None) -> tuple[Any, bool]:
    """:func:`second_opinion`, plus whether its colours are comparable (False when ``icc`` could not be applied)."""
    try:
        if decoder == "pil":
            import cv2

            a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if a is not None and a.ndim == 3 and a.shape[2] >= 3:
                a = np.concatenate([a[..., 2::-1], a[..., 3:]], axis=2)  # BGR(A) -> RGB(A)
        else:
            with Image.open(io.BytesIO(data)) as im:
                a = _pil_pixels_plain(im, "RGBA" if fit is None else "RGB")
    except Exception:
        return None, True
    if a is None or a.size == 0:
        return None, True
    a = _to_u8(a)
    comparable = True
    if icc:
        try:
            a = _colour_manage(a, icc)
        except Exception as exc:  # e.g. a CMYK profile on OpenCV's RGB: the colour cannot be checked
            log.debug("second opinion not colour-managed: %s", exc)
            comparable = False
    a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a
    return (fit_square(orient(a, orientation), fit) if fit is not None else a), comparable


def second_opinion(data: bytes, decoder: str, *, fit: DecodeConfig | None = None, orientation: int = 1,
                   icc: bytes | None = None) -> Any:
    """Pixels of ``data`` from a decoder independent of ``decoder`` (``pil`` → OpenCV, anything else → Pillow).

    Args:
        data: The file bytes.
        decoder: The decoder whose output is in doubt.
        fit: When given, the pixels are oriented and passed through :func:`fit_square` with these settings (to
            compare with an output that was already resized, e.g. DALI's).
        orientation: EXIF orientation to apply with ``fit``.
        icc: The embedded ICC profile, when the output in doubt was converted with it to sRGB: the second opinion
            is converted the same way (left unconverted when the profile does not apply to its pixels).

    Returns:
        An ``H×W×C`` uint8 array in RGB(A) order (16-bit and float data scaled as the primary path scales them), or
        ``None`` when the other decoder cannot decode the file.
    """
    return _opinion(data, decoder, fit, orientation, icc)[0]


def disagrees(px: Any, other: Any, tol: int = 8, *, colour: bool = True) -> bool:
    """True when ``other`` (from :func:`second_opinion`) contradicts the constant image ``px``: it has varying
    pixels, or (with ``colour``) it is one colour more than ``tol`` levels away from ``px``'s (the RGB channels are
    compared)."""
    if other is None:
        return False
    if not is_constant(other):
        return True
    c1, c2 = np.asarray(px)[0, 0, :3].astype(int), np.asarray(other)[0, 0, :3].astype(int)
    return colour and bool(np.abs(c1 - c2).max() > tol)


def check_suspicious(px: np.ndarray, data: bytes, decoder: str, *, icc: bytes | None = None, **kw: Any) -> None:
    """RELIABILITY.md A13: a constant (e.g. all-zero) output is cross-checked with an independent decoder.

    Args:
        px: The decoded ``H×W×C`` uint8 output.
        data: The file bytes.
        decoder: The decoder that produced ``px``.
        icc: The ICC profile ``px`` was converted with to sRGB (``None`` when it was not converted).
        **kw: ``fit`` and ``orientation`` for :func:`second_opinion`.

    Raises:
        DecodeError: ``suspicious_decode`` when ``px`` is one solid colour but the other decoder sees varying pixels
            or another colour (one of them is wrong, so the sample is not trusted). A file that really is one colour
            passes. When the second opinion cannot be colour-managed like ``px``, only varying pixels count.
    """
    if not is_constant(px):
        return
    other, comparable = _opinion(data, decoder, kw.get("fit"), kw.get("orientation", 1), icc)
    if disagrees(px, other, colour=comparable):
        raise DecodeError("suspicious_decode", f"{decoder} decoded one solid colour {np.asarray(px)[0, 0].tolist()} "
                          f"but {'opencv' if decoder == 'pil' else 'pil'} decodes something else")


def decode_image(data: bytes, cfg: DecodeConfig, *, ext: str = "") -> tuple[np.ndarray, dict[str, Any]]:
    """Decode one file on the CPU: checks, pixels, orientation, alpha, resize.

    Returns:
        (``resolution``² ×3 sRGB uint8, info dict; ``decoder`` is ``pil`` or ``cv2``).

    Raises:
        DecodeError: with a reason code from :data:`~relight_stream.pipeline.decode_probe.REASONS`.
    """
    im, info = probe(data, cfg, ext=ext)
    return decode_probed(im, info, data, cfg)


def decode_probed(im: Image.Image, info: dict[str, Any], data: bytes, cfg: DecodeConfig) -> tuple[np.ndarray, dict]:
    """:func:`decode_image` after :func:`probe` (the header is not parsed twice)."""
    rgb, _, info = decode_full(im, info, data, cfg)
    return rgb, info


def decode_full(im: Image.Image, info: dict[str, Any], data: bytes,
                cfg: DecodeConfig) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """:func:`decode_probed` that also returns the alpha plane when ``cfg.keep_alpha``.

    Returns:
        (``R×R×3`` sRGB uint8, ``R×R`` uint8 alpha (255 = opaque; 0 in a ``pad`` letterbox) or ``None`` when
        ``keep_alpha`` is off, info).
    """
    depth, cut = 8, False
    if info["format"] == "PNG":
        try:
            depth = check_png(data)
        except DecodeError as exc:
            if exc.code != "truncated" or not cfg.allow_truncated:
                raise  # a bad CRC stays ``corrupt`` even with allow_truncated
            depth, cut = png_depth(data), True
    px = None
    if cut:  # Pillow fills the missing part (_pixels_pil); OpenCV would reject it or fill it silently
        info["truncated_filled"] = True
    elif depth == 16 and not (im.info.get("icc_profile") and cfg.icc == "convert"):
        px, info["decoder"] = _pixels_cv2_16bit(data), "cv2"
    elif _routable(info, data, cfg) or _plain_png(info, cfg):
        px, info["decoder"] = _pixels_cv2_8bit(data), "cv2"
    if px is None:
        if info["n_frames"] > 1:
            im.seek(0)
        px, info["decoder"] = _pixels_pil(im, data, cfg, info), "pil"
    check_suspicious(px, data, info["decoder"], icc=im.info.get("icc_profile") if info["icc_converted"] else None)
    if depth == 16:
        info["bit_depth"] = 16
    alpha = None
    if px.shape[2] == 4:
        info["has_alpha"] = True
        alpha = px[..., 3]
        px = composite(px, cfg.background)
    if cfg.keep_alpha:
        alpha = np.full(px.shape[:2], 255, np.uint8) if alpha is None else alpha
        alpha = fit_square(orient(alpha, info["exif_orientation"]), cfg, fill=0)
    else:
        alpha = None
    px = orient(px, info["exif_orientation"])
    return fit_square(px, cfg), alpha, info
