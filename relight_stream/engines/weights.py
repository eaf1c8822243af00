"""Resolving and checking model weights: the one place that turns a weights reference into local files.

Reads: a local weights file/folder, or the Hugging Face hub cache (``HF_HUB_CACHE``, default ``$HF_HOME/hub``;
both read from the environment at call time, so a test or a CLI flag may set them after ``huggingface_hub`` was
imported). Downloads only when not offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``). Writes nothing.

Guarantees (RELIABILITY.md D1, D2):

* Offline, a hub id whose files are not in the cache fails at once with a ``ValueError`` naming ``org/name``, the
  revision, the pre-fetch command and ``HF_HOME`` — the cache lookup touches only the file system (no retries).
* A local path never touches the network.
* Every ``.safetensors`` file about to be loaded (local, cached or freshly downloaded) has its header checked:
  8-byte little-endian header length, a JSON header, and a data section exactly as long as the largest
  ``data_offsets`` end. A truncated file (an interrupted download or copy) is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relight_stream.engines.spec import offline

if TYPE_CHECKING:
    from relight_stream.engines.spec import WeightsRef

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 100_000_000
"""safetensors' own limit on the JSON header size."""


def hf_home() -> Path:
    """``HF_HOME`` as huggingface_hub resolves it (default ``$XDG_CACHE_HOME`` or ``~/.cache``, + ``huggingface``)."""
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.expanduser(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")))


def hub_cache() -> Path:
    """The hub cache folder: ``HF_HUB_CACHE`` (or the legacy ``HUGGINGFACE_HUB_CACHE``), else ``$HF_HOME/hub``."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    return Path(os.path.expanduser(env)) if env else hf_home() / "hub"


def prefetch_command(repo: str, revision: str | None, filename: str | None = None) -> str:
    """The shell command that downloads ``repo`` (or one file of it) at ``revision`` into the hub cache.

    ``hf download`` for huggingface_hub >= 1.0 (which dropped ``huggingface-cli``), else ``huggingface-cli download``.
    """
    try:
        major = int(metadata.version("huggingface_hub").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        major = 1
    tool = "hf" if major >= 1 else "huggingface-cli"
    file_part = f" {filename}" if filename else ""
    return f"{tool} download {repo}{file_part} --revision {revision or 'main'}"


def _not_cached(ref: WeightsRef, filename: str | None, detail: str = "") -> ValueError:
    what = f"{ref.repo}@{ref.revision}" + (f" (file {filename})" if filename else "")
    return ValueError(
        f"weights {what} are not in the local Hugging Face cache {hub_cache()} and offline mode is on "
        f"(HF_HUB_OFFLINE), so nothing is downloaded{detail}. Pre-fetch them on a connected machine with "
        f"`{prefetch_command(ref.repo or '', ref.revision, filename)}` (same HF_HOME={hf_home()}), "
        f"or pass a local path as weights"
    )


def resolve_weights(ref: WeightsRef, filename: str | None = None) -> Path:
    """Local path of checked weights: the local file/folder (``filename`` inside it when it is a folder holding
    one), or the hub cache's file/snapshot at the pinned revision (downloaded first unless offline).

    Raises:
        ValueError: random weights; offline and not cached (see the module docstring); a download that failed;
            a truncated or corrupt ``.safetensors`` file among the weights.
    """
    if ref.source == "local":
        path = Path(ref.path or "")
        if filename and path.is_dir() and (path / filename).is_file():  # a downloaded snapshot folder
            path = path / filename
        check_weights_path(path)
        return path
    if ref.source != "hf":
        raise ValueError("random weights have no file to fetch")
    hint = prefetch_command(ref.repo or "", ref.revision, filename)
    if offline():
        path = _from_cache(ref, filename)
        check_weights_path(path, hint=hint)
    else:
        path = _download(ref, filename)
        try:
            check_weights_path(path, hint=hint)
        except ValueError as exc:  # a cached file cut short (an interrupted earlier download): fetch it again (D2)
            log.warning("%s; downloading %s@%s again", exc, ref.repo, ref.revision)
            path = _download(ref, filename, force=True)
            check_weights_path(path, hint=hint)
    log.debug("weights %s@%s -> %s", ref.repo, ref.revision, path)
    return path


def _from_cache(ref: WeightsRef, filename: str | None) -> Path:
    """File-system-only lookup of hub weights in the cache (never contacts the network)."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    cache = str(hub_cache())
    if filename:
        hit = try_to_load_from_cache(ref.repo or "", filename, cache_dir=cache, revision=ref.revision)
        if not isinstance(hit, str):
            raise _not_cached(ref, filename)
        return Path(hit)
    try:
        return Path(snapshot_download(ref.repo or "", revision=ref.revision, cache_dir=cache, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, IncompleteSnapshotError (a partial snapshot), ...
        raise _not_cached(ref, None, f" ({type(exc).__name__}: {exc})") from exc


def _download(ref: WeightsRef, filename: str | None, *, force: bool = False) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    cache = str(hub_cache())
    try:
        if filename:
            return Path(hf_hub_download(ref.repo or "", filename, revision=ref.revision, cache_dir=cache,
                                        force_download=force))
        return Path(snapshot_download(ref.repo or "", revision=ref.revision, cache_dir=cache, force_download=force))
    except Exception as exc:  # hub errors vary by version; all mean "cannot get these weights"
        raise ValueError(f"cannot fetch weights {ref.repo}@{ref.revision}: {exc}. Pre-fetch them with "
                         f"`{prefetch_command(ref.repo or '', ref.revision, filename)}`") from exc


def check_weights(ref: WeightsRef, filename: str | None = None) -> None:
    """Fail-fast check before any model is built: local weights and offline hub weights are resolved and their
    ``.safetensors`` files checked now; online hub weights are left to the build (which downloads them)."""
    if ref.source == "local" or (ref.source == "hf" and offline()):
        resolve_weights(ref, filename)


def resolve_model_dir(src: str, revision: str | None, subfolders: tuple[str, ...] = ()) -> str:
    """Where a multi-part (diffusers) model loads from, checked: a local folder as is; offline, a hub id's cached
    snapshot folder (or the not-cached ``ValueError``); online, the hub id itself (the loader downloads per part).

    Args:
        src: a local folder, or a hub ``org/name``.
        revision: the hub revision (``None`` = ``main``; ignored for a local folder).
        subfolders: the parts that will be loaded; only their ``.safetensors`` files are checked.
    """
    if Path(src).expanduser().is_dir():
        folder, hint = Path(src).expanduser(), None
    elif offline():
        from relight_stream.engines.spec import WeightsRef

        folder = _from_cache(WeightsRef("hf", repo=src, revision=revision or "main"), None)
        hint = prefetch_command(src, revision)
    else:
        return src
    for sub in subfolders or ("",):
        if (folder / sub).is_dir():
            check_weights_path(folder / sub, hint=hint)
    return str(folder)


def check_weights_path(path: str | os.PathLike, *, hint: str | None = None) -> None:
    """Check ``path`` (a ``.safetensors`` file, or every ``.safetensors`` file under a folder); see
    :func:`check_safetensors`. Other files are not checked. ``hint``: the command that re-fetches them."""
    p = Path(path)
    files = sorted(p.rglob("*.safetensors")) if p.is_dir() else [p] if p.suffix == ".safetensors" else []
    for f in files:
        check_safetensors(f, hint=hint)


def check_safetensors(path: str | os.PathLike, *, hint: str | None = None) -> None:
    """Validate a ``.safetensors`` file's framing without reading its tensors (a few KiB of I/O).

    Raises:
        ValueError: the file is shorter than its header says (incomplete: an interrupted download or copy),
            longer, or has no valid header — naming the file and how to re-fetch it.
    """
    p = Path(path)
    size = p.stat().st_size
    fix = (f"delete it and re-download it (`{hint}`, with network access)" if hint
           else "delete it and re-download or re-save it")
    with open(p, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            raise ValueError(f"{p}: incomplete safetensors file ({size} bytes, shorter than its header); {fix}")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{p}: not a valid safetensors file (header length {n} bytes); {fix}")
        try:
            header: dict[str, Any] = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{p}: not a valid safetensors file (bad JSON header: {exc}); {fix}") from exc
    expected = 8 + n + end
    if size < expected:
        raise ValueError(f"{p}: incomplete safetensors file ({size} of {expected} bytes; a partial download?); {fix}")
    if size > expected:
        raise ValueError(f"{p}: corrupt safetensors file ({size} bytes, its header says {expected}); {fix}")


def load_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint file's state dict on the CPU: ``.safetensors`` (checked first) or a torch pickle
    (``weights_only=True``). A torch file that cannot be read (truncated zip) becomes a ``ValueError``."""
    import torch

    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors(p)
        return load_file(str(p), device="cpu")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as exc:
        raise ValueError(f"{p}: cannot read this torch checkpoint (incomplete or corrupt?): {exc}; "
                         f"delete it and re-download or re-save it") from exc
