"""Triplet shard writer: members, per-shard records, resume and locking (ARCHITECTURE.md §5; RELIABILITY.md C).

Writes ``DIR/shard-NNNNNN.tar`` (WebDataset: one sample per kept input, members ``<key>.<field>`` adjacent and
sorted) and then ``DIR/shard-NNNNNN.json``, its record, which marks the shard done. Both are written as
``<name>.tmp-<host>-<pid>``, fsynced and renamed; a writer left by an exception or a signal removes its temp file and
commits nothing. The record holds one row per input (``key``, ``status`` ok/skipped/failed, ``reason``, ``seed``,
``source``, ``members`` {member: sha256}) and ``ok + skipped + failed == num_inputs``. Nothing time- or
machine-dependent goes into a tar or a record, so identical inputs give byte-identical files: tar headers have
mtime 0, uid/gid 0, empty user names, mode 0644; JPEG (simplejpeg, 4:4:4) and PNG (OpenCV, level 3) encoding are
deterministic; JSON is written with sorted keys.

Batch field → member, the one table (:data:`MEMBERS`): only the fields present in the pipeline are written, and the
member set must be identical for every sample of a run. sRGB fields are uint8 (or float 0–1); linear fields are
clipped to [0, 1] and converted to sRGB; normals are unit vectors stored as ``(n + 1) / 2 · 255``; depth is fp16.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import logging
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from relight_stream.kernels.xp import asnumpy
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)
RECORD_VERSION = 1


def _u8(a: Any) -> np.ndarray:
    a = asnumpy(a)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    return np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB", colorsubsampling="444")


def _png(a: np.ndarray) -> bytes:
    import cv2

    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encode failed")
    return buf.tobytes()


def _linear_to_srgb_u8(a: Any) -> np.ndarray:
    try:
        from relight_stream.kernels.color import linear_to_srgb_u8
    except ImportError:  # fallback while kernels/color.py is absent
        x = np.clip(asnumpy(a).astype(np.float32), 0.0, 1.0)
        s = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
        return np.clip(np.rint(s * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(asnumpy(linear_to_srgb_u8(np.clip(asnumpy(a), 0.0, 1.0))))


def enc_srgb_jpg(a: Any, q: int) -> bytes:
    return _jpeg(_u8(a), q)


def enc_linear_jpg(a: Any, q: int) -> bytes:
    return _jpeg(_linear_to_srgb_u8(a), q)


def enc_text(s: Any, q: int) -> bytes:
    return str(s).encode("utf-8")


def enc_mask_png(a: Any, q: int) -> bytes:
    return _png(_u8(a))


def enc_normals_png(a: Any, q: int) -> bytes:
    n = asnumpy(a).astype(np.float32)
    return _png(np.clip(np.rint((n + 1.0) * 0.5 * 255.0), 0, 255).astype(np.uint8))


def enc_depth_npy(a: Any, q: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, asnumpy(a).astype(np.float16), allow_pickle=False)
    return buf.getvalue()


#: Batch field -> (member name, encoder(row, jpeg_quality) -> bytes). ``meta`` -> ``meta.json`` is always written.
MEMBERS: dict[str, tuple[str, Callable[[Any, int], bytes]]] = {
    "rgb_BHW3": ("target.jpg", enc_srgb_jpg),
    "input_BHW3": ("input.jpg", enc_srgb_jpg),
    "instruction_B": ("instruction.txt", enc_text),
    "mask_BHW": ("mask.png", enc_mask_png),
    "albedo_BHW3": ("albedo.jpg", enc_linear_jpg),
    "normals_BHW3": ("normals.png", enc_normals_png),
    "depth_BHW": ("depth.npy", enc_depth_npy),
    "shading_BHW3": ("shading.jpg", enc_linear_jpg),
    "input_l1_BHW3": ("input_l1.jpg", enc_srgb_jpg),
    "input_l2_BHW3": ("input_l2.jpg", enc_srgb_jpg),
    "input_l12_BHW3": ("input_l12.jpg", enc_srgb_jpg),
}
#: Intermediate artefacts, left out when ``ShardConfig.write_artifacts`` is off.
ARTIFACTS = frozenset({"mask_BHW", "albedo_BHW3", "normals_BHW3", "depth_BHW", "shading_BHW3"})


def output_fields(available: set[str] | tuple[str, ...], *, write_artifacts: bool = True) -> list[str]:
    """The batch fields that become members, given the fields the pipeline produces (in table order)."""
    return [f for f in MEMBERS if f in available and (write_artifacts or f not in ARTIFACTS)]


def member_names(fields: list[str]) -> list[str]:
    """Sorted member names (``meta.json`` included) for ``fields``."""
    return sorted([MEMBERS[f][0] for f in fields] + ["meta.json"])


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


def _disk_error(exc: OSError, path: str) -> OSError:
    if exc.errno == errno.ENOSPC:
        return OSError(errno.ENOSPC, f"disk full at {path}")
    return exc


@functools.cache
def _encode_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="encode")


class ShardWriter:
    """Writes one shard atomically; use as a context manager (commit on success, discard on an exception).

    Args:
        out_dir: Output folder.
        name: ``shard-NNNNNN``.
        header: Record fields known up front (``config_hash``, ``input_fingerprint``, ``seed``, ``partial_inputs``).
        fields: Batch fields to write (from :func:`output_fields`).
        jpeg_quality: JPEG quality of every ``.jpg`` member.
        seed: Global seed (each row records ``sample_seed(seed, key)``).
    """

    def __init__(self, out_dir: str, name: str, *, header: dict[str, Any], fields: list[str], jpeg_quality: int = 95,
                 seed: int = 0) -> None:
        self.out_dir, self.name, self.header, self.fields = out_dir, name, header, fields
        self.quality, self.seed = jpeg_quality, seed
        self.tar_path = os.path.join(out_dir, f"{name}.tar")
        self.record_path = os.path.join(out_dir, f"{name}.json")
        self.tmp_path = f"{self.tar_path}{_tmp_suffix()}"
        self.rows: list[dict[str, Any]] = []
        self._f: Any = None
        self._tar: tarfile.TarFile | None = None
        self._members = member_names(fields)

    def __enter__(self) -> ShardWriter:
        self._f = open(self.tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._f, mode="w", format=tarfile.GNU_FORMAT)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _add_member(self, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        try:
            self._tar.addfile(ti, io.BytesIO(data))
        except OSError as exc:
            raise _disk_error(exc, self.tmp_path) from exc

    def add_sample(self, key: str, members: dict[str, bytes], *, seed: int, source: str = "") -> None:
        """Write one kept sample (``members``: member name -> bytes) and its ``ok`` row."""
        if sorted(members) != self._members:
            raise ValueError(f"{self.name}: sample {key!r} has members {sorted(members)}, expected {self._members}")
        if "." in key:
            raise ValueError(f"{self.name}: key {key!r} contains a dot")
        hashes = {}
        for m in self._members:
            self._add_member(f"{key}.{m}", members[m])
            hashes[m] = sha256(members[m])
        self.rows.append({"key": key, "status": "ok", "reason": None, "seed": seed, "source": source,
                          "members": hashes})

    def add_dropped(self, key: str, *, status: str, reason: str, seed: int, source: str = "",
                    detail: str | None = None) -> None:
        """Record a sample that is not written (``skipped`` bad input or ``failed`` processing)."""
        row = {"key": key, "status": status, "reason": reason, "seed": seed, "source": source, "members": {}}
        if detail:
            row["detail"] = detail
        self.rows.append(row)

    def add_batch(self, batch: SampleBatch) -> None:
        """Encode every kept sample of ``batch`` (in a thread pool: the encoders release the GIL) and write it in
        order; record every dropped one."""
        from relight_stream.keys import sample_seed

        kept = [i for i in range(len(batch)) if batch.keep_B[i]]
        # a batch whose samples were all dropped skipped the stages: its fields may not exist
        host = {f: batch[f] if isinstance(batch[f], list) else asnumpy(batch[f]) for f in self.fields} if kept else {}

        def encode(i: int) -> dict[str, bytes]:
            members = {MEMBERS[f][0]: MEMBERS[f][1](host[f][i], self.quality) for f in self.fields}
            members["meta.json"] = json_bytes(batch.meta[i])
            return members

        encoded = dict(zip(kept, _encode_pool().map(encode, kept)))
        for i, key in enumerate(batch.keys):
            seed = sample_seed(self.seed, key)
            source = batch.meta[i].get("source", "")
            if i in encoded:
                self.add_sample(key, encoded[i], seed=seed, source=source)
            else:
                self.add_dropped(key, status=batch.status(i), reason=batch.drop_reason[i] or "unknown", seed=seed,
                                 source=source, detail=batch.meta[i].get("drop_detail"))

    def record(self, tar_sha: str, tar_bytes: int) -> dict[str, Any]:
        counts = {s: sum(r["status"] == s for r in self.rows) for s in ("ok", "skipped", "failed")}
        return {"version": RECORD_VERSION, "shard": self.name, **self.header, "num_inputs": len(self.rows),
                "counts": counts, "fields": self._members, "tar": {"name": f"{self.name}.tar", "bytes": tar_bytes,
                "sha256": tar_sha}, "rows": self.rows}

    def commit(self) -> dict[str, Any]:
        """Close, fsync and rename the tar, then write the record last. Returns the record."""
        try:
            self._tar.close()
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as exc:
            self.abort()
            raise _disk_error(exc, self.tmp_path) from exc
        h, n = hashlib.sha256(), 0
        with open(self.tmp_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                n += len(block)
        os.replace(self.tmp_path, self.tar_path)
        fsync_dir(self.out_dir)
        rec = self.record(h.hexdigest(), n)
        atomic_write(self.record_path, json_bytes(rec, indent=1) + b"\n")
        return rec

    def abort(self) -> None:
        """Discard the temp file; nothing is committed."""
        try:
            if self._tar is not None and not self._f.closed:
                self._f.close()
        except OSError:
            pass
        _unlink(self.tmp_path)


# -------------------------------------------------------------------------------- resume, lock, hygiene

#: Config keys that do not change the outputs (left out of the config hash).
HASH_EXCLUDE = frozenset({"inputs", "out", "dry_run", "preview", "fast_dev_run", "shard.overwrite",
                          "shard.skip_bad_input_shards", "decode.num_workers"})


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

    payload = json_bytes({"config": strip(cfg_dict, ""), "seed": seed, "record_version": RECORD_VERSION})
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
                             "inputs changed; rerun with --overwrite or use another --out")
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
                             f"{rec.get('config_hash')} -> {chash}); rerun with --overwrite or use another --out")
    return todo, done
