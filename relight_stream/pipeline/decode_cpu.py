"""Decode, pixel stage (per sample, on the CPU): pixels, alpha, orientation, resize, the constant-output check.

Reads raw file bytes (after :func:`~relight_stream.pipeline.decode_probe.probe`); writes an sRGB uint8 ``R×R×3``
array (``R`` = ``resolution``), optionally the ``R×R`` uint8 alpha, and fills the ``info`` dict, or raises
:class:`~relight_stream.pipeline.decode_probe.DecodeError`. Plain 8-bit RGB/gray JPEG and PNG go to OpenCV (the same
pixels as Pillow, faster), 16-bit PNG to OpenCV, everything else to Pillow. The policy is described in
:mod:`relight_stream.pipeline.decode`.

The parts: :mod:`~relight_stream.pipeline.decode_pixels` (the decoders, orientation, compositing, square fit) and
:mod:`~relight_stream.pipeline.decode_suspicious` (the constant-output check); their public names are re-exported
here, and :func:`decode_full` looks the decoders up in this module (tests replace them here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from relight_stream.config import DecodeConfig
from relight_stream.pipeline.decode_pixels import (
    _pixels_cv2_8bit,
    _pixels_cv2_16bit,
    _pixels_pil,
    composite,
    fit_square,
    orient,
)
from relight_stream.pipeline.decode_probe import DecodeError, _plain_png, _routable, check_png, png_depth, probe
from relight_stream.pipeline.decode_suspicious import (  # noqa: F401  (re-exported)
    check_suspicious,
    disagrees,
    is_constant,
    second_opinion,
)


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
