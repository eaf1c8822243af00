"""Array-module selection: kernels are written once against ``xp`` (NumPy on CPU, CuPy on a GPU).

CuPy is imported lazily and only counted as usable when a CUDA device answers: ``import cupy`` succeeds on
machines without a GPU, but any allocation then raises. ``get_xp(x)`` follows the array it is given, so a
kernel called with a CuPy array stays on the device and one called with a NumPy array stays on the host.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@functools.cache
def cupy_status() -> tuple[bool, str]:
    """Whether CuPy can run here, and why (checked once per process)."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return False, f"cupy not importable ({type(exc).__name__}: {exc}); install relight-stream[gpu]"
    try:
        if not cupy.is_available():
            return False, "cupy imported but no CUDA device is available"
    except Exception as exc:
        return False, f"cupy cannot reach a CUDA device ({exc})"
    return True, "cupy with a CUDA device"


def has_cupy() -> bool:
    """True when CuPy arrays can be allocated on a GPU."""
    return cupy_status()[0]


def get_xp(*arrays: Any):
    """Return the array module (``numpy`` or ``cupy``) of the given arrays; NumPy when none is CuPy."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


def resolve_xp(name: str = "auto"):
    """Pick an array module by name: ``auto`` (CuPy when usable, else NumPy), ``numpy`` or ``cupy``.

    Raises:
        ValueError: ``cupy`` was asked for explicitly and cannot run here.
    """
    if name not in ("auto", "numpy", "cupy"):
        raise ValueError(f"unknown array backend {name!r}; choose auto, numpy or cupy")
    if name == "numpy":
        return np
    ok, why = cupy_status()
    if name == "cupy" and not ok:
        raise ValueError(f"array backend 'cupy' requested but unavailable: {why}")
    if ok:
        import cupy

        return cupy
    return np


def to_device(x: Any, xp) -> Any:
    """Move an array to the module ``xp`` (host <-> device); a no-op when it is already there."""
    if xp is np:
        return asnumpy(x)
    return xp.asarray(x)


def asnumpy(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array, copying from the GPU when needed (torch tensors included)."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return x.get()
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
