"""Small array primitives shared by the kernels, tuned per backend.

Reads and writes float32 ``(H, W)`` maps and ``(H, W, 3)`` images. On NumPy these avoid BLAS: skinny products
such as ``(H*W, 3) @ (3,)`` go to OpenBLAS, whose worker threads spin and slow down 10-100x on a loaded machine
(measured here: 66 ms instead of 1 ms for a 512² shading sum at load 4 on 2 cores), and reductions over a last
axis of length 3 are slow in NumPy (``x.max(-1)``: 40 ms at 1024²). Explicit per-channel arithmetic is
single-threaded and predictable. On CuPy the same functions use ``matmul`` (one kernel launch).

``GENERIC = True`` makes NumPy inputs take the generic (CuPy) branches here and in ``filters`` — tests use it to
check on a CPU the code that runs on a GPU.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from relight_stream.kernels.xp import get_xp

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

GENERIC = False


def _numpy_fast(xp: Any) -> bool:
    return xp is np and not GENERIC


def _cv2_ok(a: Any) -> bool:
    return cv2 is not None and not GENERIC and isinstance(a, np.ndarray) and a.dtype == np.float32


def expand3(s: Any) -> Any:
    """``(H, W)`` -> contiguous ``(H, W, 3)`` with the map in every channel (OpenCV ``merge`` on NumPy)."""
    if _cv2_ok(s) and s.ndim == 2:
        return cv2.merge([s, s, s])
    xp = get_xp(s)
    return xp.repeat(s[..., None], 3, axis=-1)


def mul3(a: Any, s: Any) -> Any:
    """``a * s[..., None]`` for an ``(H, W, 3)`` image and an ``(H, W)`` map (contiguous product on NumPy)."""
    xp = get_xp(a)
    if _numpy_fast(xp):
        return a * expand3(s)
    return a * s[..., None]


def channel_max(x: Any) -> Any:
    """Per-pixel maximum over the last (colour) axis of ``(H, W, 3)``: ``(H, W)`` (``x.max(-1)`` is slow in NumPy)."""
    if _cv2_ok(x) and x.ndim == 3 and x.shape[2] == 3:
        c = cv2.split(x)
        return cv2.max(cv2.max(c[0], c[1]), c[2])
    xp = get_xp(x)
    return xp.maximum(xp.maximum(x[..., 0], x[..., 1]), x[..., 2])


def dot3(a: Any, v: Sequence[float]) -> Any:
    """``a @ v`` for ``a`` of shape ``(..., 3)`` and a 3-vector ``v``: ``(...)`` float32."""
    xp = get_xp(a)
    if not _numpy_fast(xp):
        return a @ xp.asarray(np.asarray(v, np.float32))
    if _cv2_ok(a) and a.ndim == 3 and a.shape[2] == 3 and a.flags.c_contiguous:
        return cv2.transform(a, np.asarray([v], np.float32))  # per-pixel 1x3 product, SIMD, one thread
    out = a[..., 0] * np.float32(v[0])
    out += a[..., 1] * np.float32(v[1])
    out += a[..., 2] * np.float32(v[2])
    return out


def combine_maps(maps: Sequence[Any], colours: Sequence[Sequence[float]]) -> Any:
    """``sum_k maps[k][..., None] * colours[k]``: scalar maps ``(H, W)`` times RGB colours -> ``(H, W, 3)`` float32."""
    xp = get_xp(maps[0])
    cols = np.asarray(colours, np.float32).reshape(len(maps), 3)
    h, w = maps[0].shape
    if not _numpy_fast(xp):
        return (xp.stack(maps, axis=-1).reshape(-1, len(maps)) @ xp.asarray(cols)).reshape(h, w, 3)
    chans = []
    for c in range(3):
        acc = (maps[0] * cols[0, c]).astype(np.float32, copy=False)
        for k in range(1, len(maps)):
            if cols[k, c] != 0:
                acc += maps[k] * cols[k, c]
        chans.append(acc)
    if cv2 is not None:
        return cv2.merge(chans)
    return np.stack(chans, axis=-1)
