"""Engine registry: kind × flavor × backend.

Kinds register a function returning ``{flavor: EngineSpec}`` with ``@register_engine(kind)`` (timm's
``@register_model``); the built-in kinds (clip, segmenter, depth, vae) are imported lazily on first use, so
importing this module loads no model library. :func:`create_engine` validates every argument (kind, flavor,
backend, precision, weights) and raises ``ValueError`` before any model is built.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

from relight_stream.engines.backends import get_backend, resolve_backend
from relight_stream.engines.cache import EngineCacheMiss
from relight_stream.engines.spec import PRECISIONS, RANDOM_SEED, EngineSpec, parse_weights
from relight_stream.engines.weights import check_weights
from relight_stream.log import warn_once

log = logging.getLogger(__name__)

BUILTIN_KINDS = ("clip", "segmenter", "segmenter_sam3", "depth", "vae")
_FACTORIES: dict[str, Callable[[], dict[str, EngineSpec]]] = {}
_SPECS: dict[str, dict[str, EngineSpec]] = {}


def register_engine(kind: str) -> Callable[[Callable[[], dict[str, EngineSpec]]], Callable[[], dict[str, EngineSpec]]]:
    """Decorator: register ``fn() -> {flavor: EngineSpec}`` as the flavors of ``kind``.

    A flavor may map to the same spec as another one (an alias, e.g. ``base``); ``list_engines`` shows each
    spec under its own ``spec.flavor`` name only.
    """

    def deco(fn: Callable[[], dict[str, EngineSpec]]) -> Callable[[], dict[str, EngineSpec]]:
        _FACTORIES[kind] = fn
        _SPECS.pop(kind, None)
        return fn

    return deco


def _load_builtin(kind: str) -> None:
    if kind in BUILTIN_KINDS and kind not in _FACTORIES:
        importlib.import_module(f"relight_stream.engines.{kind}")


def _specs(kind: str) -> dict[str, EngineSpec]:
    _load_builtin(kind)
    if kind not in _FACTORIES:
        for k in BUILTIN_KINDS:
            _load_builtin(k)
        raise ValueError(f"unknown engine kind {kind!r}; valid kinds: {sorted(_FACTORIES)}")
    if kind not in _SPECS:
        _SPECS[kind] = dict(_FACTORIES[kind]())
    return _SPECS[kind]


def get_spec(kind: str, flavor: str) -> EngineSpec:
    """The spec of ``kind``/``flavor``; ``ValueError`` listing the valid names otherwise."""
    specs = _specs(kind)
    if flavor not in specs and kind == "clip" and flavor.startswith("open_clip:"):
        from relight_stream.engines.clip import open_clip_flavor  # any open_clip architecture, registered on demand

        open_clip_flavor(flavor)
        specs = _specs(kind)
    if flavor not in specs:
        raise ValueError(f"unknown {kind} flavor {flavor!r}; valid flavors: {sorted(specs)}")
    return specs[flavor]


def list_engines() -> dict[str, list[str]]:
    """Every registered kind and its flavors (aliases such as ``base`` included), sorted."""
    for k in BUILTIN_KINDS:
        _load_builtin(k)
    return {k: sorted(_specs(k)) for k in sorted(_FACTORIES)}


def resolve_device(device: Any = None) -> Any:
    """``None``/``"auto"`` -> CUDA when available else CPU; anything else through ``torch.device``."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available on this machine")
    return dev


def build_model(spec: EngineSpec, ref: Any) -> Any:
    """``spec.build(spec, ref)`` under a fixed seed, without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return spec.build(spec, ref)


def _runners(module: Any, spec: EngineSpec, built: Any, ref: Any, precision: str, dev: Any) -> dict[str, Any]:
    return {
        part: module.make_runner(part, built.parts[part], spec=spec, built=built, weights=ref, precision=precision,
                                 device=dev)
        for part in built.parts
    }


def create_engine(
    kind: str,
    flavor: str = "base",
    *,
    backend: str = "auto",
    device: Any = None,
    precision: str = "fp32",
    weights: str | os.PathLike | None = None,
) -> Any:
    """Build the engine ``kind``/``flavor`` on ``backend``.

    Args:
        kind: ``clip``, ``segmenter``, ``depth`` or ``vae`` (see ``list_engines()``).
        flavor: architecture; ``tiny`` for tests, ``base`` is each kind's default size.
        backend: ``auto`` (resolved once per process, see ``resolve_backend``), ``eager``, ``compile``,
            ``onnxruntime`` or ``tensorrt``. ``RELIGHT_BACKEND`` overrides ``auto``.
        device: ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (weights and activations; outputs are always fp32).
        weights: ``None`` (random init, seeded), ``"org/name@revision"`` or a local path.

    Raises:
        ValueError: unknown kind/flavor/backend/precision, a backend that is not installed (naming the pip
            extra), or weights that are not pinned / not found — all before any model is built.
    """
    spec = get_spec(kind, flavor)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {list(PRECISIONS)}")
    dev = resolve_device(device)
    ref = parse_weights(weights, spec)
    check_weights(ref, spec.hf_file)  # offline cache miss / truncated file: fail now, not mid-build
    name = resolve_backend(backend, dev)
    module = get_backend(name)
    module.check_precision(precision, dev)
    try:
        if hasattr(module, "precheck"):  # e.g. TensorRT: is there any plan for this engine, before building it
            module.precheck(spec, ref, precision, dev)
        built = build_model(spec, ref)
        runners = _runners(module, spec, built, ref, precision, dev)
    except EngineCacheMiss as exc:
        if name != "tensorrt" or backend != "auto" or os.environ.get("RELIGHT_BACKEND"):
            raise
        # auto chose TensorRT but no plan was built for this engine: a logged step down, not an error
        warn_once(log, f"auto: no TensorRT plan for {kind}/{spec.flavor} ({exc}); using torch.compile")
        name, module = "compile", get_backend("compile")
        built = build_model(spec, ref)
        runners = _runners(module, spec, built, ref, precision, dev)
    log.debug("engine %s/%s on %s (%s, %s, weights=%s)", kind, spec.flavor, name, dev, precision, ref.ident)
    engine = spec.engine(spec, runners, built, dev)
    engine.backend = name
    engine.precision = precision
    engine.weights = ref.ident
    return engine
