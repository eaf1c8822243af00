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


def _unit_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    return (x + 0.5) / n - 0.5, 0.5 - (y + 0.5) / n


def statue(n: int = 256, background: str = "sky", azimuth: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """A marble bust (head with brow, nose and eye sockets, neck, shoulders cut by the bottom edge) lit from
    ``azimuth`` in linear light, on ``background``: ``sky`` (blue gradient), ``dark`` (museum wall) or ``brick``
    (scikit-image's grey brick wall: stone on stone). Returns (sRGB uint8 ``n``×``n``×3, true mask bool)."""
    from relight_stream.kernels.color import linear_to_srgb_u8
    from relight_stream.kernels.lights import light_direction
    from relight_stream.kernels.normals import normals_from_height
    from relight_stream.kernels.shading import lambert

    x, y = _unit_grid(n)

    def bump(cx, cy, sx, sy):
        return np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))

    ell = 1 - (x / 0.16) ** 2 - ((y - 0.12) / 0.21) ** 2
    head = 0.16 * np.sqrt(np.maximum(ell, 0)) + 0.04 * bump(0, 0.09, 0.02, 0.05)
    head -= 0.02 * (bump(-0.06, 0.16, 0.035, 0.025) + bump(0.06, 0.16, 0.035, 0.025))
    neck = 0.1 * np.sqrt(np.maximum(1 - (x / 0.08) ** 2, 0)) * ((y < -0.02) & (y > -0.2))
    shoulders = 0.14 * np.sqrt(np.maximum(1 - (x / 0.36) ** 2 - ((y + 0.42) / 0.24) ** 2, 0))
    z = np.maximum(np.maximum(np.where(ell > 0, np.maximum(head, 1e-3), 0), neck), shoulders).astype(np.float32)
    mask = z > 0
    normals = normals_from_height(z, mask.astype(np.float32))
    shade = 0.15 + 0.9 * lambert(normals, light_direction(azimuth, 40.0))
    vein = 0.9 + 0.1 * np.sin(8 * x + 3 * np.sin(12 * y))
    fg = np.stack([0.78 * vein, 0.76 * vein, 0.72 * vein], -1) * shade[..., None]
    if background == "brick":
        import cv2
        from skimage import data

        bg = (cv2.resize(data.brick(), (n, n)).astype(np.float32) / 255.0) ** 2.2 * 0.7
        bg = np.repeat(bg[..., None], 3, axis=2)
    elif background == "dark":
        bg = np.zeros((n, n, 3), np.float32) + np.linspace(0.02, 0.08, n, dtype=np.float32)[:, None, None]
    elif background == "sky":
        bg = np.linspace(0.25, 0.55, n, dtype=np.float32)[:, None, None] * np.array([0.6, 0.75, 1.0], np.float32)
        bg = np.broadcast_to(bg, (n, n, 3))
    else:
        raise ValueError(f"unknown background {background!r}")
    img = np.where(mask[..., None], fg, bg).astype(np.float32)
    return linear_to_srgb_u8(img), mask


def illustration(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A flat-coloured cartoon character (hair, face, body) with dark outlines on a pastel background scattered
    with dots. Returns (sRGB uint8 ``n``×``n``×3, true mask bool)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full((n, n, 3), (236, 226, 200), np.uint8)
    for _ in range(12):
        cv2.circle(img, tuple(int(v) for v in rng.integers(0, n, 2)), max(1, n // 64), (200, 190, 230), -1)
    mask = np.zeros((n, n), np.uint8)
    s = n / 256
    line = max(1, int(3 * s))

    def part(draw, *geom, colour):
        draw(img, *geom, colour, -1, lineType=cv2.LINE_AA)
        draw(img, *geom, (30, 25, 20), line, lineType=cv2.LINE_AA)
        draw(mask, *geom, 1, -1)

    def p(v):
        return int(v * s)

    part(cv2.ellipse, (p(128), p(200)), (p(62), p(70)), 0, 0, 360, colour=(70, 130, 200))  # body
    part(cv2.circle, (p(128), p(100)), p(52), colour=(250, 215, 180))  # head
    part(cv2.ellipse, (p(128), p(62)), (p(56), p(22)), 0, 180, 360, colour=(120, 70, 40))  # hair
    for ex in (110, 146):
        cv2.circle(img, (p(ex), p(98)), p(6), (30, 25, 20), -1)
    cv2.ellipse(img, (p(128), p(120)), (p(16), p(8)), 0, 0, 180, (180, 60, 60), line)
    return img, mask.astype(bool)


def _icc_tag_xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + struct.pack(">3i", *(round(v * 65536) for v in (x, y, z)))  # s15Fixed16


def rgb_icc_profile(name: str = "Test Adobe RGB (1998)", *, gamma: float = 563 / 256,
                    red: tuple[float, float, float] = (0.60974, 0.31111, 0.01947),
                    green: tuple[float, float, float] = (0.20528, 0.62567, 0.06087),
                    blue: tuple[float, float, float] = (0.14919, 0.06322, 0.74457)) -> bytes:
    """An ICC v2 RGB display profile (matrix + one gamma curve), written byte by byte (nothing downloaded).

    The defaults are Adobe RGB (1998): its D50-adapted primaries (PCS XYZ) and gamma 2.2 (563/256). Converting it to
    sRGB changes saturated colours by tens of levels, so a decoder that ignores the profile is caught.
    """
    text = name.encode("ascii") + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 70  # + Unicode, ScriptCode
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"  # u8Fixed8 gamma
    tags = [(b"desc", desc), (b"cprt", b"text\0\0\0\0none\0"), (b"wtpt", _icc_tag_xyz(0.9642, 1.0, 0.82491)),
            (b"rXYZ", _icc_tag_xyz(*red)), (b"gXYZ", _icc_tag_xyz(*green)), (b"bXYZ", _icc_tag_xyz(*blue)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    table, body, offset = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, payload in tags:
        body += b"\0" * (-len(body) % 4)  # tags start on 4-byte boundaries
        table += sig + struct.pack(">II", offset + len(body), len(payload))
        body += payload
    body += b"\0" * (-len(body) % 4)
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"APPL" + b"\0" * 20 + b"\0" * 4 + _icc_tag_xyz(0.9642, 1.0, 0.82491)[8:] + b"lcms"
              + b"\0" * 44)  # ... flags, maker, model, attributes; intent; D50 illuminant; creator; ID + reserved
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def png16_bytes(a16: np.ndarray, *, icc: bytes | None = None) -> bytes:
    """A 16-bit PNG of ``a16`` (uint16 ``H×W`` gray or ``H×W×3`` RGB), optionally with an ``iCCP`` chunk."""
    import cv2

    bgr = a16[..., ::-1] if a16.ndim == 3 else a16
    data = cv2.imencode(".png", np.ascontiguousarray(bgr))[1].tobytes()
    if icc is None:
        return data
    payload = b"icc\0\0" + zlib.compress(icc)  # name, NUL, compression method 0
    chunk = struct.pack(">I", len(payload)) + b"iCCP" + payload + struct.pack(">I", zlib.crc32(b"iCCP" + payload))
    return data[:33] + chunk + data[33:]  # right after IHDR (8 + 25 bytes)
