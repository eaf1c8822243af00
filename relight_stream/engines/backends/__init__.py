"""Engine backends: ``eager``, ``compile``, ``onnxruntime``, ``tensorrt`` — one ``Runner`` each, imported lazily.

Every backend module provides ``available(device) -> (ok, reason)``, ``check_precision(precision, device)`` and
``make_runner(part, module, *, spec, built, weights, precision, device) -> Runner``. ``auto`` is resolved once per
process and device type, in the order TensorRT -> torch.compile -> eager, and the choice and its reason are
logged once. On a machine without CUDA ``auto`` picks eager: compiling costs ~50 s per model on a CPU, more than
it saves on the small batches run there. ``RELIGHT_BACKEND`` overrides ``auto`` (and then counts as an explicit
request: an unavailable backend is an error, never a silent downgrade).
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

BACKENDS = ("eager", "compile", "onnxruntime", "tensorrt")
EXTRAS = {"onnxruntime": "onnx", "tensorrt": "tensorrt"}
"""pip extra of relight-stream that installs each optional backend."""
_AUTO: dict[str, tuple[str, str]] = {}


def get_backend(name: str) -> ModuleType:
    """The backend module ``name``; ``ValueError`` listing valid names otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: ['auto', {', '.join(map(repr, BACKENDS))}]")
    return importlib.import_module(f"relight_stream.engines.backends.{name}")


def require(name: str, device: Any) -> None:
    """Raise ``ValueError`` (naming the pip extra) when backend ``name`` cannot run on ``device``."""
    ok, reason = get_backend(name).available(device)
    if not ok:
        extra = EXTRAS.get(name)
        hint = f"; install it with: pip install 'relight-stream[{extra}]'" if extra else ""
        raise ValueError(f"backend {name!r} is not available: {reason}{hint}")


def resolve_backend(backend: str, device: Any) -> str:
    """Concrete backend for a request; ``auto`` is decided once per process and device type, and logged."""
    if backend == "auto" and os.environ.get("RELIGHT_BACKEND", "auto") not in ("", "auto"):
        backend = os.environ["RELIGHT_BACKEND"]
        log.debug("RELIGHT_BACKEND=%s overrides backend='auto'", backend)
    if backend != "auto":
        require(backend, device)
        return backend
    dev_type = getattr(device, "type", str(device))
    if dev_type not in _AUTO:
        _AUTO[dev_type] = _choose_auto(device)
        log.info("engine backend auto -> %s on %s: %s", _AUTO[dev_type][0], dev_type, _AUTO[dev_type][1])
    return _AUTO[dev_type][0]


def _choose_auto(device: Any) -> tuple[str, str]:
    if getattr(device, "type", str(device)) != "cuda":
        return "eager", (
            "no CUDA device; torch.compile would spend ~50 s per model compiling on a CPU for little gain "
            "(set RELIGHT_BACKEND=compile to force it)"
        )
    skipped = []
    for name in ("tensorrt", "compile"):
        ok, reason = get_backend(name).available(device)
        if ok:
            return name, f"{name} is available" + (f" ({'; '.join(skipped)})" if skipped else "")
        skipped.append(f"{name}: {reason}")
    return "eager", "; ".join(skipped)


def reset_auto() -> None:
    """Forget the per-process ``auto`` decision (tests)."""
    _AUTO.clear()
