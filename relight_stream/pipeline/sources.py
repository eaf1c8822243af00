"""Input discovery and the deterministic work plan (ARCHITECTURE.md §1, §4; RELIABILITY.md B1–B8).

Reads the user's INPUT arguments and returns a :class:`Plan`: every input image as an :class:`InputItem` (a
stable key plus where its bytes live), sorted by key and chunked into work units ``shard-NNNNNN`` of
``samples_per_shard`` items. Nothing is decoded here; only directory entries, list files and tar headers are read.

INPUT forms (any mix; brace patterns ``{000..009}`` and globs are expanded):

* a folder, walked recursively (FFHQ layout ``00000/00042.png``). Key = relative path without extension
  (:func:`relight_stream.keys.key_from_relpath`). Hidden/AppleDouble entries (``.x``, ``._x.png``) and symlinks
  are ignored and counted in ``Plan.ignored``; files without an image extension are counted as ``not_image``.
* a single image file (key = its file name without extension).
* a CSV or parquet list with an ``image_path`` column (the reference pipeline's ``image_path,lighting_score``
  split CSVs work as-is). Relative paths are resolved against the list's folder. Key = the ``key`` column when
  present, else the path relative to the list's folder when every path lies under it, else relative to the
  common folder of all listed paths (its parent when they all share one folder, so that a split of an FFHQ tree
  keeps ``00000/00042``). Other columns are carried in ``InputItem.extra`` (→ ``meta.source_row``).
  A listed file that does not exist becomes a ``decode:missing_file`` record, not an error.
* WebDataset tar shards (``.tar``; :mod:`~relight_stream.pipeline.sources_tar`), local paths or fsspec URLs
  (``s3://…``, ``https://…``). Keys are parsed exactly as webdataset does (the member path up to the first dot of
  its basename), then made valid with :func:`relight_stream.keys.sanitize_key`. The image member is the one whose (lowercased) extension is an image
  extension. A truncated tar keeps the samples before the cut and is listed in ``Plan.partial_inputs`` (B1);
  non-adjacent members of one key (B2) and a duplicate ``key.ext`` (B3) raise ``ValueError``; a sample with no
  image member becomes a ``decode:missing_component`` record (B4).

Errors: no inputs at all (empty folder, glob matching nothing, empty tar), a missing INPUT path, or the same key
from two sources raise ``ValueError`` before anything is decoded or written.

Plan → ranks: work unit ``k`` belongs to rank ``k mod world`` (:meth:`Plan.for_rank`), so the set of shards and
their contents do not depend on the number of processes.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from relight_stream.keys import key_from_relpath, sanitize_key, strip_extension

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
LIST_EXTS = ("csv", "tsv", "parquet")


@dataclass(slots=True)
class InputItem:
    """One input sample: its key and where its bytes are.

    Attributes:
        key: Stable sample key (``[A-Za-z0-9_/-]``).
        source: File path or URL (for tar members: the tar's path/URL).
        member: Tar member name, else ``None``.
        offset: Byte offset of the member data inside the tar (-1 for plain files).
        size: Size in bytes (-1 when unknown or missing).
        mtime_ns: Modification time of the file (or of the tar) in ns; 0 when unknown.
        ctime_ns: Status-change time in ns (0 when unknown): a file replaced by a copy that keeps its size and
            mtime (``cp -p``, ``rsync -t``) still gets a new ctime, so resume notices it (RELIABILITY B8). A
            ``chmod``/``chown`` of the inputs changes it too and then needs ``--new-run``.
        ext: Lowercased extension of the image (``png``), "" when none.
        missing: Reason code when the item cannot be read at all (``missing_component``, ``missing_file``).
        extra: Extra columns of a list row (JSON-able), or ``None``.
    """

    key: str
    source: str
    member: str | None = None
    offset: int = -1
    size: int = -1
    mtime_ns: int = 0
    ctime_ns: int = 0
    ext: str = ""
    missing: str | None = None
    extra: dict[str, Any] | None = None

    def read(self) -> bytes:
        """The raw file bytes (whole file, or the tar member's data)."""
        if self.member is None:
            if "://" in self.source:
                import fsspec

                with fsspec.open(self.source, "rb") as f:
                    return f.read()
            with open(self.source, "rb") as f:
                return f.read()
        with _open(self.source) as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise EOFError(f"{self.source}: member {self.member} is cut short ({len(data)} of {self.size} bytes)")
        return data

    def token(self) -> str:
        """What the input fingerprint hashes for this item (path, size, mtime, ctime: not the contents)."""
        return (f"{self.key}\t{self.source}\t{self.member}\t{self.offset}\t{self.size}\t{self.mtime_ns}\t"
                f"{self.ctime_ns}\t{self.missing}")

    def describe_source(self) -> str:
        return f"{self.source}::{self.member}" if self.member else self.source


def stat_times(st: os.stat_result) -> dict[str, int]:
    """``InputItem``'s ``mtime_ns`` and ``ctime_ns`` from a stat result."""
    return {"mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


@dataclass(slots=True)
class WorkUnit:
    """One output shard's worth of inputs (consecutive keys of the sorted plan)."""

    index: int
    items: list[InputItem]
    partial_inputs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"

    def fingerprint(self) -> str:
        """Hash of this unit's inputs (keys, paths, sizes, mtimes); a change means the shard is stale."""
        h = hashlib.blake2b(digest_size=16)
        for it in self.items:
            h.update(it.token().encode("utf-8", "surrogateescape") + b"\n")
        return h.hexdigest()


@dataclass(slots=True)
class Plan:
    """The deterministic work plan: sorted items chunked into units."""

    units: list[WorkUnit]
    num_inputs: int
    ignored: dict[str, int]
    partial_inputs: list[str]

    def for_rank(self, rank: int, world: int) -> list[WorkUnit]:
        """Units of one process: unit ``k`` goes to rank ``k mod world``."""
        return [u for u in self.units if u.index % world == rank]


# ------------------------------------------------------------------------------------------- helpers


def _open(path: str):
    if "://" in path:
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def _ext(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[-1].lower() if "." in base.lstrip(".") else ""


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Brace-expand every INPUT and glob local patterns; a pattern matching nothing raises ``ValueError``."""
    from braceexpand import braceexpand

    out: list[str] = []
    for raw in inputs:
        for spec in braceexpand(str(raw)):
            if "://" not in spec and any(c in spec for c in "*?[") and not os.path.exists(spec):
                hits = sorted(glob.glob(spec, recursive=True))
                if not hits:
                    raise ValueError(f"no inputs found: the pattern {spec!r} matches nothing")
                out.extend(hits)
            else:
                out.append(spec)
    return out


def _walk(root: str, ignored: Counter) -> Iterable[tuple[str, os.DirEntry]]:
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                if e.name.startswith("."):
                    ignored["hidden"] += 1
                elif e.is_symlink():
                    ignored["symlink"] += 1
                elif e.is_dir(follow_symlinks=False):
                    stack.append(f"{rel}/{e.name}" if rel else e.name)
                elif e.is_file(follow_symlinks=False):
                    yield (f"{rel}/{e.name}" if rel else e.name), e
                else:
                    ignored["not_regular"] += 1


def scan_folder(root: str, ignored: Counter) -> list[InputItem]:
    """All image files under ``root`` (recursive), keyed by relative path without extension."""
    items = []
    for rel, entry in _walk(root, ignored):
        ext = _ext(rel)
        if ext not in IMAGE_EXTS:
            ignored["not_image"] += 1
            continue
        st = entry.stat(follow_symlinks=False)
        items.append(InputItem(key_from_relpath(rel), entry.path, size=st.st_size, **stat_times(st), ext=ext))
    return items


def _read_table(path: str) -> list[dict[str, Any]]:
    ext = _ext(path)
    if ext == "parquet":
        import pyarrow.parquet as pq

        with _open(path) as f:
            return pq.read_table(f).to_pylist()
    import pyarrow.csv as pcsv

    opts = pcsv.ParseOptions(delimiter="\t" if ext == "tsv" else ",")
    with _open(path) as f:
        return pcsv.read_csv(f, parse_options=opts).to_pylist()


def scan_list(path: str) -> list[InputItem]:
    """Items of a CSV/TSV/parquet list with an ``image_path`` column (see the module docstring for keys)."""
    rows = _read_table(path)
    if rows and "image_path" not in rows[0]:
        raise ValueError(f"{path}: a list input needs an 'image_path' column (has {sorted(rows[0])})")
    base = os.path.dirname(os.path.abspath(path)) if "://" not in path else path.rsplit("/", 1)[0]
    paths = []
    for r in rows:
        p = str(r["image_path"])
        paths.append(p if ("://" in p or os.path.isabs(p)) else os.path.normpath(os.path.join(base, p)))
    local = [p for p in paths if "://" not in p]
    under = all(os.path.abspath(p).startswith(base + os.sep) for p in local)
    root = base
    if not under and local:
        dirs = {os.path.dirname(os.path.abspath(p)) for p in local}
        root = os.path.commonpath(list(dirs))
        if len(dirs) == 1:  # keep the files' folder in the key, as for a split of an FFHQ-like tree
            root = os.path.dirname(root)
    items = []
    for r, p in zip(rows, paths):
        extra = {k: v for k, v in r.items() if k not in ("image_path", "key")} or None
        if r.get("key"):
            key = sanitize_key(str(r["key"]))
        elif "://" in p:
            key = key_from_relpath(p.split("://", 1)[1].split("/", 1)[-1])
        else:
            key = key_from_relpath(os.path.relpath(os.path.abspath(p), root))
        if "://" in p:
            items.append(InputItem(key, p, ext=_ext(p), extra=extra))
            continue
        try:
            st = os.stat(p)
            items.append(InputItem(key, p, size=st.st_size, **stat_times(st), ext=_ext(p), extra=extra))
        except OSError:
            items.append(InputItem(key, p, ext=_ext(p), missing="missing_file", extra=extra))
    return items


# ---------------------------------------------------------------------------------------------- plan


def discover(inputs: Iterable[str]) -> tuple[list[InputItem], dict[str, int], list[str]]:
    """All input items, sorted by key.

    Returns:
        (items, ignored counts by reason, partial input tars).

    Raises:
        ValueError: a missing input, no inputs at all, or one key from two sources.
    """
    ignored: Counter = Counter()
    partial: list[str] = []
    items: list[InputItem] = []
    specs = expand_inputs(inputs)
    if not specs:
        raise ValueError("no inputs given")
    for spec in specs:
        ext = _ext(spec)
        if ext == "tar":
            if "://" not in spec and not os.path.isfile(spec):
                raise ValueError(f"input not found: {spec}")
            from relight_stream.pipeline.sources_tar import scan_tar

            items.extend(scan_tar(spec, ignored, partial))
        elif ext in LIST_EXTS:
            if "://" not in spec and not os.path.isfile(spec):
                raise ValueError(f"input not found: {spec}")
            items.extend(scan_list(spec))
        elif "://" in spec:
            raise ValueError(f"unsupported URL input {spec!r}: give .tar shards or a .csv/.parquet list")
        elif os.path.isdir(spec):
            items.extend(scan_folder(spec, ignored))
        elif os.path.isfile(spec):
            if ext not in IMAGE_EXTS:
                raise ValueError(f"unsupported input file {spec!r} (not an image, .tar, .csv or .parquet)")
            st = os.stat(spec)
            key = key_from_relpath(os.path.basename(spec))
            items.append(InputItem(key, spec, size=st.st_size, **stat_times(st), ext=ext))
        else:
            raise ValueError(f"input not found: {spec}")
    if not items:
        raise ValueError(f"no inputs found under {', '.join(specs)} (ignored: {dict(ignored) or 'nothing'})")
    items.sort(key=lambda it: it.key)
    for a, b in zip(items, items[1:]):
        if a.key == b.key:
            raise ValueError(f"duplicate key {a.key!r}: {a.describe_source()} and {b.describe_source()}")
    return items, dict(sorted(ignored.items())), partial


def make_plan(inputs: Iterable[str], *, samples_per_shard: int) -> Plan:
    """Discover the inputs and chunk the sorted items into work units of ``samples_per_shard``."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    items, ignored, partial = discover(inputs)
    units = []
    for k, start in enumerate(range(0, len(items), samples_per_shard)):
        chunk = items[start : start + samples_per_shard]
        bad = sorted({it.source for it in chunk if it.source in partial})
        units.append(WorkUnit(k, chunk, bad))
    if ignored:
        log.info("ignored input entries: %s", ignored)
    return Plan(units, len(items), ignored, partial)


__all__ = ["IMAGE_EXTS", "InputItem", "WorkUnit", "Plan", "discover", "make_plan", "expand_inputs", "strip_extension"]
