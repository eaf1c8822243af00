"""File primitives for every output: canonical JSON, sha256, atomic writes (temp file → fsync → rename) and
temp-file ownership.

Reads/writes whatever path it is given; used by :mod:`relight_stream.pipeline.shard` (the writer),
:mod:`relight_stream.pipeline.shard_records` (resume, lock), configs, previews, engine sidecars, bench results and
the other commands' outputs. Temp files are named
``<path>.tmp-<host>-<pid>`` so a later run can tell whether their writer may still be alive.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from typing import Any

import numpy as np

def json_bytes(obj: Any, *, indent: int | None = None) -> bytes:
    """Canonical JSON (sorted keys; NumPy scalars/arrays converted)."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        return str(o)

    sep = (",", ":") if indent is None else (",", ": ")
    return json.dumps(obj, sort_keys=True, default=default, separators=sep, indent=indent,
                      ensure_ascii=False).encode("utf-8")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename."""
    tmp = f"{path}{_tmp_suffix()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise _disk_error(exc, path) from exc
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def _tmp_suffix() -> str:
    import socket

    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"
    return f".tmp-{host}-{os.getpid()}"


def _owner_alive(suffix: str) -> bool:
    """True when the temp file's writer (``<host>-<pid>``) may still be running: this host and a live pid, or
    another host (which this process cannot check)."""
    import socket

    host, _, pid = suffix.rpartition("-")
    if not pid.isdigit() or not host:
        return False
    if host != "".join(c if c.isalnum() else "_" for c in socket.gethostname()):
        return True
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def disk_full(exc: BaseException) -> str | None:
    """The one-line message for a full disk or quota (``ENOSPC``/``EDQUOT``), or None for any other error."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{exc.strerror or exc}; nothing partial was committed, rerun to resume once there is space"
    return None


def _disk_error(exc: OSError, path: str) -> OSError:
    if exc.errno == errno.ENOSPC:
        return OSError(errno.ENOSPC, f"disk full at {path}")
    return exc
