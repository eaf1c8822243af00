"""Triplet shard writer: members, per-shard records, resume and locking (ARCHITECTURE.md §5; RELIABILITY.md C).

Writes ``DIR/shard-NNNNNN.tar`` (WebDataset: one sample per kept input, members ``<key>.<field>`` adjacent and
sorted) and then ``DIR/shard-NNNNNN.json``, its record, which marks the shard done. Both are written as
``<name>.tmp-<host>-<pid>``, fsynced and renamed; a writer left by an exception or a signal removes its temp file and
commits nothing. The record holds one row per input (``key``, ``status`` ok/skipped/failed, ``reason``, ``seed``,
``source``, ``members`` {member: sha256}) and ``ok + skipped + failed == num_inputs``. Nothing time- or
machine-dependent goes into a tar or a record, so identical inputs give byte-identical files: tar headers have
mtime 0, uid/gid 0, empty user names, mode 0644; JPEG (simplejpeg, 4:4:4) and PNG (OpenCV; zlib level 1, RLE,
Paeth: :data:`PNG_LEVEL`) encoding are deterministic; JSON is written with sorted keys.

Batch field → member, the one table (:data:`MEMBERS`): only the fields present in the pipeline are written, and the
member set must be identical for every sample of a run. sRGB fields are uint8 (or float 0–1); linear fields are
clipped to [0, 1] and converted to sRGB; normals are unit vectors stored as ``(n + 1) / 2 · 255``; depth is fp16;
masks (``mask_BHW``, and ``alpha_BHW`` from ``decode.keep_alpha``) are float 0–1 (or uint8) stored as 8-bit PNG.

The atomic-write helpers live in :mod:`~relight_stream.fileio` and resume/lock/``new_run`` in
:mod:`~relight_stream.pipeline.shard_records`; their public names are re-exported here.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from relight_stream.fileio import (  # noqa: F401  (re-exported)
    _disk_error,
    _tmp_suffix,
    _unlink,
    atomic_write,
    fsync_dir,
    json_bytes,
    sha256,
)
from relight_stream.kernels.xp import asnumpy, get_xp
from relight_stream.log import pool_threads
from relight_stream.pipeline.shard_records import (  # noqa: F401  (re-exported)
    ENCODER_VERSION,
    HASH_EXCLUDE,
    RECORD_VERSION,
    RUN_OUTPUTS,
    RunLock,
    classify_shards,
    clean_stale_temps,
    config_hash,
    is_done,
    move_aside,
    read_record,
)
from relight_stream.sample import SampleBatch

__all__ = ["ARTIFACTS", "ENCODER_VERSION", "HASH_EXCLUDE", "MEMBERS", "PNG_FILTER", "PNG_LEVEL", "PNG_STRATEGY",
           "RECORD_VERSION", "RUN_OUTPUTS", "RunLock", "ShardWriter", "atomic_write", "classify_shards",
           "clean_stale_temps", "config_hash", "fsync_dir", "json_bytes", "member_names", "move_aside",
           "is_done", "output_fields", "read_record", "sha256"]
log = logging.getLogger(__name__)
#: PNG members: zlib level 1, RLE strategy, Paeth row filter only. On 1024² photo-derived normals (2-core box) ~2.3x
#: faster than OpenCV's default (level 3, libpng trying every filter per row) and ~11% smaller: Paeth residuals of
#: smooth normals and masks are mostly short runs. Deterministic like any setting; a change here must bump
#: ``shard_records.ENCODER_VERSION``.
PNG_LEVEL = 1
PNG_STRATEGY = "rle"
PNG_FILTER = "paeth"


def quantise_u8(a: Any) -> Any:
    """Float 0–1 -> uint8, on the array's device; uint8 passes through."""
    if a.dtype == np.uint8:
        return a
    xp = get_xp(a)
    return xp.clip(xp.rint(a.astype(xp.float32) * 255.0), 0, 255).astype(xp.uint8)


def linear_to_srgb8(a: Any) -> Any:
    """Linear float -> sRGB uint8, on the array's device; uint8 is taken as already sRGB (see :func:`host_field`)."""
    if a.dtype == np.uint8:
        return a
    from relight_stream.kernels.color import linear_to_srgb_u8

    return linear_to_srgb_u8(get_xp(a).clip(a, 0.0, 1.0))


def normals_u8(a: Any) -> Any:
    """Unit normals -> (n+1)/2·255 uint8, on the array's device; uint8 is taken as already encoded."""
    from relight_stream.kernels.normals import normals_to_u8

    return a if a.dtype == np.uint8 else normals_to_u8(a)


def _host_u8(a: Any) -> np.ndarray:
    return np.ascontiguousarray(asnumpy(a))


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB", colorsubsampling="444")


def _png(a: np.ndarray) -> bytes:
    import cv2

    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    strategy = {"default": cv2.IMWRITE_PNG_STRATEGY_DEFAULT, "rle": cv2.IMWRITE_PNG_STRATEGY_RLE}[PNG_STRATEGY]
    params = [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL, cv2.IMWRITE_PNG_STRATEGY, strategy]
    if PNG_FILTER != "all" and hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.11
        params += [cv2.IMWRITE_PNG_FILTER, getattr(cv2, f"IMWRITE_PNG_FILTER_{PNG_FILTER.upper()}")]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a), params)
    if not ok:
        raise RuntimeError("PNG encode failed")
    return buf.tobytes()


def enc_srgb_jpg(a: Any, q: int) -> bytes:
    return _jpeg(_host_u8(quantise_u8(a)), q)


def enc_linear_jpg(a: Any, q: int) -> bytes:
    return _jpeg(_host_u8(linear_to_srgb8(a)), q)


def enc_text(s: Any, q: int) -> bytes:
    return str(s).encode("utf-8")


def enc_mask_png(a: Any, q: int) -> bytes:
    return _png(_host_u8(quantise_u8(a)))


def enc_normals_png(a: Any, q: int) -> bytes:
    return _png(_host_u8(normals_u8(a)))


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
    "alpha_BHW": ("alpha.png", enc_mask_png),
}
#: The 8-bit form of each 8-bit member, computed where the array lives (:func:`host_field`).
_TO_U8: dict[Callable[[Any, int], bytes], Callable[[Any], Any]] = {
    enc_srgb_jpg: quantise_u8, enc_mask_png: quantise_u8, enc_linear_jpg: linear_to_srgb8, enc_normals_png: normals_u8}


def member_u8(field: str, a: Any) -> Any:
    """``field`` in its member's 8-bit form, where it lives (unchanged for a member that is not 8-bit)."""
    to_u8 = _TO_U8.get(MEMBERS[field][1])
    return a if to_u8 is None else to_u8(a)


def host_field(field: str, a: Any) -> Any:
    """A whole batch field on the host, for its member's encoder. A GPU (CuPy) float field is first brought to
    its 8-bit member form on the device (:func:`member_u8`) — a quarter of the bytes over PCIe, and the sRGB curve
    on the GPU — and the encoders take a uint8 row as already in that form. NumPy and lists pass through."""
    if isinstance(a, (list, np.ndarray)):
        return a
    return asnumpy(member_u8(field, a) if get_xp(a) is not np else a)


#: Intermediate artefacts, left out when ``ShardConfig.write_artifacts`` is off.
ARTIFACTS = frozenset({"mask_BHW", "albedo_BHW3", "normals_BHW3", "depth_BHW", "shading_BHW3"})


def output_fields(available: set[str] | tuple[str, ...], *, write_artifacts: bool = True) -> list[str]:
    """The batch fields that become members, given the fields the pipeline produces (in table order)."""
    return [f for f in MEMBERS if f in available and (write_artifacts or f not in ARTIFACTS)]


def member_names(fields: list[str]) -> list[str]:
    """Sorted member names (``meta.json`` included) for ``fields``."""
    return sorted([MEMBERS[f][0] for f in fields] + ["meta.json"])

@functools.cache
def _encode_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(pool_threads(), thread_name_prefix="encode")


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
        host = {f: host_field(f, batch[f]) for f in self.fields} if kept else {}

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
