"""Decode, the constant-output check (RELIABILITY.md A13): a second opinion on one-colour decoder outputs.

Reads a decoded uint8 ``H×W×C`` output and the file bytes it came from; produces the verdict: a constant (e.g.
all-zero) output is decoded again by an independent decoder (Pillow, or OpenCV when Pillow produced it), scaled and
colour-managed as the primary path does, and :func:`check_suspicious` raises
:class:`~relight_stream.pipeline.decode_probe.DecodeError` ``suspicious_decode`` when that one sees varying pixels
or another colour. Used by :mod:`relight_stream.pipeline.decode_cpu` and, for DALI batches,
:mod:`relight_stream.pipeline.decode`.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
from PIL import Image

from relight_stream.config import DecodeConfig
from relight_stream.pipeline.decode_pixels import _icc_to_srgb, _to_u8, fit_square, orient
from relight_stream.pipeline.decode_probe import DecodeError

log = logging.getLogger(__name__)


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
    """``H×W×C`` (or ``H×W``) uint8 in the colour space of ``icc`` → sRGB, as ``decode_pixels._pixels_pil`` does."""
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
