"""Shard records on disk: the config hash, reading records, ``run.lock``, stale temp files, resume and ``new_run``.

Reads ``DIR/shard-NNNNNN.json`` records (written last by :class:`~relight_stream.pipeline.shard.ShardWriter`);
writes nothing but deletions (``--overwrite``, stale ``*.tmp-*`` files), moves (``new_run``: the previous outputs go
to ``DIR/previous-<UTC time>/``) and the ``run.lock`` file (ARCHITECTURE.md §5; RELIABILITY.md B8, C5, C10).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any

from relight_stream.fileio import _owner_alive, _unlink, json_bytes

log = logging.getLogger(__name__)
RECORD_VERSION = 1
#: Version of the member encoders (in the config hash: a resumed run must encode like the shards already written).
#: 2: PNG members at zlib level 1, RLE strategy, Paeth filter (was OpenCV's level 3 with every filter).
ENCODER_VERSION = 2


#: Config keys that do not change the outputs (left out of the config hash).
HASH_EXCLUDE = frozenset({"inputs", "out", "dry_run", "preview", "fast_dev_run", "shard.overwrite", "shard.new_run",
                          "shard.skip_bad_input_shards", "decode.num_workers", "workers"})


def config_hash(cfg_dict: dict[str, Any], seed: int) -> str:
    """Hash of everything that determines the output bytes (config minus :data:`HASH_EXCLUDE`, plus the seed)."""

    def strip(d: dict[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            name = f"{prefix}{k}"
            if name in HASH_EXCLUDE:
                continue
            out[k] = strip(v, f"{name}.") if isinstance(v, dict) else v
        return out

    payload = json_bytes({"config": strip(cfg_dict, ""), "seed": seed, "record_version": RECORD_VERSION,
                          "encoder_version": ENCODER_VERSION})
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def read_record(out_dir: str, name: str) -> dict[str, Any] | None:
    """The record of shard ``name`` when it and its tar exist and the record parses; else ``None``."""
    path = os.path.join(out_dir, f"{name}.json")
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(out_dir, f"{name}.tar")):
        return None
    try:
        with open(path, "rb") as f:
            rec = json.loads(f.read())
    except (OSError, ValueError):
        log.warning("unreadable record %s: the shard will be regenerated", path)
        return None
    return rec if isinstance(rec, dict) and rec.get("shard") == name else None


def is_done(out_dir: str, unit: Any, chash: str) -> bool:
    """Whether ``unit``'s shard is written with this config hash and input fingerprint (reads only)."""
    rec = read_record(out_dir, unit.name) if os.path.isdir(out_dir) else None
    return rec is not None and rec.get("config_hash") == chash and rec.get("input_fingerprint") == unit.fingerprint()


class RunLock:
    """``DIR/run.lock``: an exclusive byte-range lock per rank, so a second run on the same folder fails fast.

    Ranks of one launch lock different bytes of the same file; a second ``generate`` on the folder hits the lock of
    a rank it shares and raises ``ValueError`` naming the folder.
    """

    def __init__(self, out_dir: str, rank: int) -> None:
        self.path, self.rank, self._fd = os.path.join(out_dir, "run.lock"), rank, -1

    def __enter__(self) -> RunLock:
        import fcntl

        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.rank)
        except OSError:
            os.close(self._fd)
            self._fd = -1
            raise ValueError(f"another run is writing to {os.path.dirname(self.path)} (run.lock is held for rank "
                             f"{self.rank}); wait for it or use another --out") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        if self._fd >= 0:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, self.rank)
            os.close(self._fd)
            self._fd = -1


def clean_stale_temps(out_dir: str, names: set[str]) -> list[str]:
    """Remove ``<name>.tar.tmp-*`` / ``<name>.json.tmp-*`` left by a crashed run, for the shards in ``names``.

    A temp file whose writer is still alive (same host, live pid) or on another host is left alone and logged.
    """
    removed = []
    for entry in os.scandir(out_dir):
        base, sep, suffix = entry.name.partition(".tmp-")
        if sep and base.rsplit(".", 1)[0] in names:
            if _owner_alive(suffix):
                log.warning("%s belongs to a process that may still be running; left alone", entry.name)
                continue
            _unlink(entry.path)
            removed.append(entry.name)
    if removed:
        log.warning("removed %d stale temp file(s) in %s: %s", len(removed), out_dir, ", ".join(sorted(removed)[:5]))
    return removed


def classify_shards(out_dir: str, units: list[Any], all_names: set[str], *, chash: str, overwrite: bool,
                    delete_extra: bool) -> tuple[list[Any], list[Any]]:
    """Split ``units`` into (todo, done) against the records in ``out_dir``.

    A unit is done when its record exists with the same config hash and input fingerprint. An orphan tar (no
    record) is regenerated. Records of shards outside the plan (``all_names``) are stale.

    Raises:
        ValueError: a changed config or input fingerprint, or a stale shard, unless ``overwrite``.
    """
    todo, done = [], []
    if os.path.isdir(out_dir):
        extra = sorted(e.name[:-5] for e in os.scandir(out_dir)
                       if e.name.startswith("shard-") and e.name.endswith(".json") and e.name[:-5] not in all_names)
        if extra and not overwrite:
            raise ValueError(f"{out_dir} holds {len(extra)} shard(s) not in this run's plan ({extra[0]}, ...): the "
                             "inputs changed; rerun with --overwrite (replace) or --new-run (keep the old outputs in "
                             "previous-<time>/), or use another --out")
        if extra and delete_extra:
            for name in extra:
                _unlink(os.path.join(out_dir, f"{name}.json"))
                _unlink(os.path.join(out_dir, f"{name}.tar"))
            log.warning("--overwrite: removed %d shard(s) outside the plan", len(extra))
    for u in units:
        rec = read_record(out_dir, u.name)
        if rec is None:
            todo.append(u)
            continue
        why = None
        if rec.get("config_hash") != chash:
            why = "the config (or seed) changed"
        elif rec.get("input_fingerprint") != u.fingerprint():
            why = "its input files changed"
        if why is None:
            done.append(u)
        elif overwrite:
            log.warning("--overwrite: regenerating %s (%s)", u.name, why)
            _unlink(os.path.join(out_dir, f"{u.name}.json"))
            todo.append(u)
        else:
            raise ValueError(f"{os.path.join(out_dir, u.name)}: {why} since it was written (config hash "
                             f"{rec.get('config_hash')} -> {chash}); rerun with --overwrite (replace) or --new-run "
                             "(keep the old outputs in previous-<time>/), or use another --out")
    return todo, done


#: Files of a run in its folder, moved aside by :func:`move_aside` (anything else in the folder stays).
RUN_OUTPUTS = ("shard-*", "stats.json", "stats-rank*.json", "config.yaml", "preview.png", "*.tmp-*")


def move_aside(out_dir: str, *, now: float | None = None) -> str | None:
    """``new_run``: move the previous run's outputs (:data:`RUN_OUTPUTS`) to ``out_dir/previous-<UTC time>/``.

    The folder is ``previous-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... when taken). Run it under :class:`RunLock`, in a
    single process. A move cut short by a crash leaves files in both places; the next ``new_run`` moves the rest.

    Args:
        out_dir: The output folder.
        now: Time for the folder name (seconds since the epoch; default now).

    Returns:
        The folder the outputs were moved to, or ``None`` when there was nothing to move.
    """
    import fnmatch
    import time

    from relight_stream.fileio import fsync_dir

    if not os.path.isdir(out_dir):
        return None
    names = sorted(e.name for e in os.scandir(out_dir) if e.is_file(follow_symlinks=False)
                   and any(fnmatch.fnmatchcase(e.name, p) for p in RUN_OUTPUTS))
    if not names:
        return None
    base = os.path.join(out_dir, "previous-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)))
    dest, k = base, 1
    while os.path.exists(dest):
        k += 1
        dest = f"{base}-{k}"
    os.makedirs(dest)
    for name in names:
        os.replace(os.path.join(out_dir, name), os.path.join(dest, name))
    fsync_dir(dest)
    fsync_dir(out_dir)
    log.warning("new run: moved %d file(s) of the previous run to %s", len(names), dest)
    return dest
