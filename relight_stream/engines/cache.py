"""Engine cache: exported ONNX graphs and TensorRT plans, keyed, each with a JSON sidecar.

Layout: ``<root>/<kind>/<flavor>/<part>.<precision>.<digest>.<onnx|plan>`` plus ``<same>.json``. The digest is
a hash of the :class:`EngineKey` (kind, flavor, part, precision, input shapes and batch range, weights identity,
format, runtime version — ONNX opset or TensorRT version — and target device, i.e. GPU compute capability for
plans). The sidecar repeats the key and adds build facts (parity errors, versions, time). Loading checks the
sidecar against the key the running process expects and refuses a stale or foreign artefact with a message that
says which fields differ and which ``relight-stream build-engines`` command rebuilds it.

The root is ``$RELIGHT_ENGINE_CACHE`` or ``~/.cache/relight_stream/engines``; ``build-engines --out DIR`` writes
into ``DIR`` (point ``RELIGHT_ENGINE_CACHE`` at it to use those engines).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relight_stream.fileio import atomic_write

CACHE_ENV = "RELIGHT_ENGINE_CACHE"
EXTENSIONS = {"onnx": ".onnx", "tensorrt": ".plan"}


class EngineCacheMiss(ValueError):
    """No usable artefact for a key (missing, stale or foreign); the message says how to build one."""


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``root`` if given, else ``$RELIGHT_ENGINE_CACHE``, else ``~/.cache/relight_stream/engines``."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "relight_stream" / "engines"


@dataclass(frozen=True)
class EngineKey:
    """Everything an exported graph or plan depends on.

    Attributes:
        input_shapes: per input, its shape with ``-1`` on dynamic axes (axis 0 = batch).
        batch: ``"1-64"`` for a dynamic batch range, ``"8"`` for a fixed batch.
        weights: ``WeightsRef.ident`` (random seed, hub id@revision, or local path+size+mtime).
        fmt: ``onnx`` or ``tensorrt``.
        runtime: ``opset18`` for ONNX; ``trt10.3.0`` for TensorRT.
        device: ``any`` for ONNX; ``sm_90`` (compute capability) for TensorRT plans.
    """

    kind: str
    flavor: str
    part: str
    precision: str
    input_shapes: tuple[tuple[int, ...], ...]
    batch: str
    weights: str
    fmt: str
    runtime: str
    device: str = "any"

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_shapes"] = [list(s) for s in self.input_shapes]
        return d

    def digest(self) -> str:
        return hashlib.blake2b(json.dumps(self.as_dict(), sort_keys=True).encode(), digest_size=8).hexdigest()

    def path(self, root: str | os.PathLike | None = None) -> Path:
        name = f"{self.part}.{self.precision}.{self.digest()}{EXTENSIONS[self.fmt]}"
        return cache_root(root) / self.kind / self.flavor / name

    def build_command(self) -> str:
        backend = "tensorrt" if self.fmt == "tensorrt" else "onnxruntime"
        return (
            f"relight-stream build-engines --kind {self.kind} --flavor {self.flavor} --backend {backend} "
            f"--precision {self.precision}"
        )


def sidecar_path(artefact: Path) -> Path:
    return artefact.with_suffix(".json")


def write_sidecar(artefact: Path, key: EngineKey, extra: dict[str, Any] | None = None) -> Path:
    """Write ``artefact``'s JSON sidecar (key + ``extra``) atomically; returns its path."""
    data = {"key": key.as_dict(), "digest": key.digest(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data.update(extra or {})
    side = sidecar_path(artefact)
    atomic_write(str(side), json.dumps(data, indent=2, sort_keys=True, default=str).encode("utf-8"))
    return side


def _differences(found: dict[str, Any], want: dict[str, Any]) -> list[str]:
    return [f"{k}: built for {found.get(k)!r}, this process needs {v!r}" for k, v in want.items() if found.get(k) != v]


def check_artefact(path: Path, key: EngineKey) -> dict[str, Any]:
    """Validate ``path`` against ``key`` through its sidecar; returns the sidecar.

    Raises:
        EngineCacheMiss: the artefact or its sidecar is missing, or the sidecar's key differs (stale: other
            weights/shapes/precision; foreign: another TensorRT version or GPU).
    """
    side = sidecar_path(path)
    if not path.is_file():
        raise EngineCacheMiss(f"no {key.fmt} engine at {path}; build it with `{key.build_command()}`")
    if not side.is_file():
        raise EngineCacheMiss(
            f"{path} has no JSON sidecar, so it cannot be checked against this model; rebuild it with "
            f"`{key.build_command()}`"
        )
    meta = json.loads(side.read_text())
    diffs = _differences(meta.get("key", {}), key.as_dict())
    if diffs:
        raise EngineCacheMiss(
            f"refusing stale or foreign engine {path}: " + "; ".join(diffs) + f". Rebuild with `{key.build_command()}`"
        )
    return meta


def lookup(key: EngineKey, root: str | os.PathLike | None = None, *, ignore: tuple[str, ...] = ()) -> Path:
    """Path of a valid artefact for ``key`` (fields in ``ignore`` may differ, e.g. a plan's batch range).

    Raises:
        EngineCacheMiss: nothing matches; the message lists what exists instead, field by field, and the
            ``build-engines`` command that builds the right artefact.
    """
    path = key.path(root)
    if path.is_file() and not ignore:
        check_artefact(path, key)
        return path
    want = {k: v for k, v in key.as_dict().items() if k not in ignore}
    folder = path.parent
    others = sorted(folder.glob(f"{key.part}.*{EXTENSIONS[key.fmt]}")) if folder.is_dir() else []
    notes = []
    for other in others:
        side = sidecar_path(other)
        if not side.is_file():
            notes.append(f"{other.name} has no sidecar")
            continue
        diffs = _differences(json.loads(side.read_text()).get("key", {}), want)
        if not diffs:
            return other
        notes.append(f"{other.name}: " + "; ".join(diffs))
    seen = (" Refused stale or foreign engines: " + " | ".join(notes) + ".") if notes else ""
    raise EngineCacheMiss(
        f"no {key.fmt} engine for {key.kind}/{key.flavor}/{key.part} ({key.precision}, {key.device}) in "
        f"{folder}.{seen} Build it with `{key.build_command()}` (and set {CACHE_ENV} to the folder given to --out)"
    )
