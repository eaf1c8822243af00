"""Sample keys and per-sample seeds: the two conventions every stage and every rank must agree on.

Keys (ARCHITECTURE.md §4) use only ``[A-Za-z0-9_/-]`` and never contain dots, so WebDataset's
"key = everything before the first dot of the basename" rule round-trips them. A key is derived from the
relative path without its extension (``00000/00042.png`` -> ``00000/00042``). Any other character is replaced
by ``_`` and, because that replacement can collide, such keys get a short stable hash of the original name:
``my photo.v2.JPG`` -> ``my_photo_v2-3fa1c9``. The hash is over the UTF-8 NFC form, so keys are the same on
every platform.

Randomness: one global seed; each sample draws from ``numpy.random.Generator(PCG64(blake2b(seed, key)))``,
never Python's ``hash()`` (salted per process). A ``stream`` name separates independent draws for one sample
(``relight``, ``instruct``, ``split``), so adding a draw to one stage never shifts another's numbers.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_BAD = re.compile(r"[^A-Za-z0-9_/-]+")
KEY_RE = re.compile(r"^[A-Za-z0-9_/-]+$")


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()[:n]


def strip_extension(relpath: str) -> str:
    """Drop the final extension of the last path component (``a/b.c.png`` -> ``a/b.c``)."""
    head, sep, tail = relpath.rpartition("/")
    stem = tail.rsplit(".", 1)[0] if "." in tail.lstrip(".") else tail
    return f"{head}{sep}{stem}"


def sanitize_key(raw: str) -> str:
    """Turn any string (a relative path without extension, or a source key) into a valid key.

    Valid input is returned unchanged; anything else is escaped and suffixed with a stable hash.
    """
    raw = unicodedata.normalize("NFC", raw.replace("\\", "/")).strip("/")
    if raw and KEY_RE.match(raw):
        return raw
    cleaned = _BAD.sub("_", raw).strip("_") or "x"
    return f"{cleaned}-{_short_hash(raw)}"


def key_from_relpath(relpath: str) -> str:
    """Key for a file given by its path relative to the input root (extension removed)."""
    return sanitize_key(strip_extension(relpath.replace("\\", "/")))


def sample_seed(global_seed: int, key: str, stream: str = "") -> int:
    """A 64-bit seed for one sample, stable across processes, ranks and platforms."""
    payload = f"{int(global_seed)}\x00{key}\x00{stream}".encode("utf-8")
    return int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "little")


def sample_rng(global_seed: int, key: str, stream: str = "") -> np.random.Generator:
    """The per-sample random generator (PCG64 seeded with :func:`sample_seed`)."""
    return np.random.Generator(np.random.PCG64(sample_seed(global_seed, key, stream)))
