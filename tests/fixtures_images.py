"""Image and container fixtures made in the tests (RELIABILITY.md A, B): good photos and every kind of bad file.

Every factory returns bytes (or writes files) and is deterministic. Other engineers' tests may import them::

    from fixtures_images import jpeg_bytes, truncated, write_tree  # tests/ is on sys.path (its conftest.py)
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

QUADRANTS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))  # TL, TR, BL, BR


def noise(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random RGB (compresses like a photo, not like white noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def quadrants(h: int = 64, w: int = 96) -> np.ndarray:
    """Four solid colour quadrants (:data:`QUADRANTS`), to see orientation."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2], a[: h // 2, w // 2 :] = QUADRANTS[0], QUADRANTS[1]
    a[h // 2 :, : w // 2], a[h // 2 :, w // 2 :] = QUADRANTS[2], QUADRANTS[3]
    return a


def encode(img: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def jpeg_bytes(a: np.ndarray | None = None, *, quality: int = 92, orientation: int | None = None,
               icc: bytes | None = None) -> bytes:
    """A JPEG of ``a`` (default :func:`noise`), optionally with an EXIF orientation tag or an ICC profile."""
    img = Image.fromarray(noise() if a is None else a)
    kw: dict = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    if icc is not None:
        kw["icc_profile"] = icc
    return encode(img, "JPEG", **kw)


def png_bytes(a: np.ndarray | None = None) -> bytes:
    return encode(noise() if a is None else a, "PNG")


def truncated(data: bytes, frac: float = 0.5) -> bytes:
    """The first ``frac`` of ``data``."""
    return data[: int(len(data) * frac)]


def png_without_iend(data: bytes | None = None) -> bytes:
    data = data or png_bytes()
    assert data.endswith(b"IEND\xaeB`\x82")
    return data[:-12]


def png_bad_crc(data: bytes | None = None) -> bytes:
    """A PNG whose first IDAT chunk has a wrong CRC."""
    x = bytearray(data or png_bytes())
    i = x.index(b"IDAT")
    length = struct.unpack(">I", x[i - 4 : i])[0]
    x[i + 4 + length] ^= 0xFF
    return bytes(x)


def jpeg_corrupt_tables(data: bytes | None = None) -> bytes:
    """A JPEG with a destroyed Huffman table: the header opens, every decoder fails (DALI and PIL)."""
    x = bytearray(data or jpeg_bytes())
    dht = x.index(b"\xff\xc4")
    x[dht + 5 : dht + 21] = b"\xff" * 16
    return bytes(x)


def jpeg_bad_huffman(data: bytes | None = None, seed: int = 0) -> bytes:
    """Random bytes in the entropy-coded data (libjpeg warns "Corrupt JPEG data" and still decodes)."""
    x = bytearray(data or jpeg_bytes(quality=90))
    sos = x.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(x[sos + 2 : sos + 4], "big") + 10
    junk = np.random.default_rng(seed).integers(0, 255, 190, dtype=np.uint8).tobytes().replace(b"\xff", b"\xfe")
    x[start : start + len(junk)] = junk
    return bytes(x)


def cmyk_jpeg(adobe: bool = True) -> bytes:
    """A CMYK JPEG (Pillow writes the Adobe APP14 marker; ``adobe=False`` strips it)."""
    data = encode(Image.fromarray(noise()).convert("CMYK"), "JPEG", quality=95)
    if adobe:
        return data
    i = data.index(b"\xff\xee")
    length = int.from_bytes(data[i + 2 : i + 4], "big")
    return data[:i] + data[i + 2 + length :]


def png16_rgb_ramp() -> bytes:
    """256×256 16-bit RGB PNG: column ``c`` has value ``c·257`` (exactly level ``c`` in 8 bits)."""
    import cv2

    ramp = np.tile((np.arange(256, dtype=np.uint16) * 257)[None, :], (256, 1))
    return cv2.imencode(".png", np.stack([ramp, ramp, ramp], -1))[1].tobytes()


def png16_gray_ramp() -> bytes:
    """256×256 ``I;16`` gray PNG with the same ramp."""
    import cv2

    ramp = np.tile((np.arange(256, dtype=np.uint16) * 257)[None, :], (256, 1))
    return cv2.imencode(".png", ramp)[1].tobytes()


def palette_trns_png() -> bytes:
    """64×64 palette PNG: left half transparent (index 0), right half opaque red."""
    p = np.zeros((64, 64), np.uint8)
    p[:, 32:] = 1
    img = Image.fromarray(p, "P")
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encode(img, "PNG", transparency=0)


def rgba_png(alpha: int = 0) -> bytes:
    a = np.zeros((64, 64, 4), np.uint8)
    a[..., 0], a[..., 3] = 255, alpha
    return encode(Image.fromarray(a, "RGBA"), "PNG")


def la_png(alpha: int = 0) -> bytes:
    a = np.full((64, 64, 2), 200, np.uint8)
    a[..., 1] = alpha
    return encode(Image.fromarray(a, "LA"), "PNG")


def gray(fmt: str = "PNG") -> bytes:
    return encode(Image.fromarray(np.full((64, 64), 77, np.uint8), "L"), fmt)


def bomb_png(w: int = 40_000, h: int = 40_000) -> bytes:
    """A PNG whose header claims ``w×h`` (the pixel data is a few bytes: never decode it)."""

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated(fmt: str = "GIF", n: int = 3) -> bytes:
    """An ``n``-frame animation; frame ``k`` is solid ``QUADRANTS[k % 4]``."""
    frames = [Image.new("RGB", (64, 64), QUADRANTS[k % 4]) for k in range(n)]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)


def write_tree(root: str | os.PathLike, files: dict[str, bytes]) -> str:
    """Write ``{relpath: bytes}`` under ``root``; returns ``root``."""
    for rel, data in files.items():
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return str(root)


def ffhq_tree(root: str | os.PathLike, n: int = 8, *, size: int = 64, per_folder: int = 1000,
              fmt: str = "png") -> str:
    """FFHQ-like layout ``00000/00042.png`` with ``n`` images of ``size``²."""
    files = {}
    for i in range(n):
        a = noise(size, size, seed=i)
        files[f"{(i // per_folder) * 1000:05d}/{i:05d}.{fmt}"] = png_bytes(a) if fmt == "png" else jpeg_bytes(a)
    return write_tree(root, files)


def write_tar(path: str | os.PathLike, members: list[tuple[str, bytes]]) -> str:
    """A tar with ``members`` in the given order (mtime 0)."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return str(path)


def shard_outputs(d: Path) -> dict[str, bytes]:
    """name -> bytes of every shard tar and record in ``d`` (for byte-identity checks between runs)."""
    return {p.name: p.read_bytes() for p in sorted(Path(d).glob("shard-*")) if p.suffix in (".tar", ".json")}
