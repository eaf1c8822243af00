"""Decode, header stage: magic-byte sniffing, PNG chunk walk and every check that needs no pixel decode.

Reads raw file bytes; returns a lazily opened PIL image and a JSON-able ``info`` dict, or raises
:class:`DecodeError` with a reason code from :data:`REASONS` (RELIABILITY.md A1, A2, A3, A9, A10, A11). The policy
these checks implement is described in :mod:`relight_stream.pipeline.decode`.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from typing import Any

from PIL import Image, UnidentifiedImageError

from relight_stream.config import DecodeConfig

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_FORMAT_EXTS = {"JPEG": ("jpg", "jpeg"), "PNG": ("png",), "WEBP": ("webp",), "GIF": ("gif",), "BMP": ("bmp",),
                "TIFF": ("tif", "tiff"), "MPO": ("jpg", "jpeg")}
#: Reason codes the decoder can emit, all ``skipped`` (bad input) records.
REASONS = ("empty_file", "unidentified", "truncated", "corrupt", "too_large", "too_small", "aspect_ratio",
           "animated", "missing_component", "missing_file", "suspicious_decode")


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


def png_depth(data: bytes) -> int:
    """The bit depth from the IHDR chunk (8 when there is none), without walking the rest of the file."""
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else 8


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
        # Pillow's PNG getexif() decodes every pixel to find an eXIf chunk after IDAT: only ask when there is one
        has_exif = fmt != "PNG" or "exif" in im.info or b"eXIf" in data
        orientation = int(im.getexif().get(0x0112, 1) or 1) if has_exif else 1
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


def _plain_png(info: dict[str, Any], cfg: DecodeConfig) -> bool:
    return (info["format"] == "PNG" and info["source_mode"] in ("RGB", "L") and not info["has_alpha"]
            and not (info["icc_profile"] and cfg.icc == "convert"))


def _routable(info: dict[str, Any], data: bytes, cfg: DecodeConfig) -> bool:
    return (info["format"] == "JPEG" and info["source_mode"] in ("RGB", "L") and jpeg_complete(data)
            and not (info["icc_profile"] and cfg.icc == "convert"))
