"""``relight-stream verify DIR``: re-read every shard against its record (ARCHITECTURE.md §5; RELIABILITY.md C10, C11).

Reads ``DIR/shard-*.tar`` and ``DIR/shard-*.json``; writes nothing. Checks, per shard:

* the record parses, ``ok + skipped + failed == num_inputs == len(rows)``, and the tar's size and sha256 match;
* the tar's members group into samples exactly as the ``ok`` rows say (same keys, same order, members adjacent),
  every member's sha256 matches its row, keys hold no dots, field names are lowercase and every sample of every
  shard has the identical field set;
* the shards load with ``webdataset.WebDataset`` (``handler=reraise_exception``) and yield the same keys.

Also reported as problems: an orphan tar without a record (a crashed run; the next ``generate`` regenerates it) and
leftover ``*.tmp-*`` files. Returns 0 when everything matches, 1 otherwise (each problem is logged).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import tarfile
from typing import Any

from relight_stream.config import RunConfig, VerifyConfig

log = logging.getLogger(__name__)


def _split(name: str) -> tuple[str, str]:
    head, _, base = name.rpartition("/")
    stem, _, field = base.partition(".")
    return (f"{head}/{stem}" if head else stem), field


def verify_shard(out: str, name: str, fields: list[list[str]]) -> list[str]:
    """Problems found in shard ``name`` (empty when it matches its record). ``fields`` collects field sets."""
    problems: list[str] = []
    rec_path, tar_path = os.path.join(out, f"{name}.json"), os.path.join(out, f"{name}.tar")
    try:
        with open(rec_path, "rb") as f:
            rec = json.loads(f.read())
    except (OSError, ValueError) as exc:
        return [f"{name}: unreadable record ({exc})"]
    if not os.path.isfile(tar_path):
        return [f"{name}: record without its tar"]
    rows = rec.get("rows", [])
    counts = rec.get("counts", {})
    n = rec.get("num_inputs")
    if sum(counts.get(s, 0) for s in ("ok", "skipped", "failed")) != n or len(rows) != n:
        problems.append(f"{name}: counts {counts} / {len(rows)} rows do not add up to num_inputs {n}")
    for s in ("ok", "skipped", "failed"):
        if sum(r.get("status") == s for r in rows) != counts.get(s, 0):
            problems.append(f"{name}: {s} count {counts.get(s)} does not match the rows")
    h = hashlib.sha256()
    with open(tar_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    tar_meta = rec.get("tar", {})
    if h.hexdigest() != tar_meta.get("sha256") or os.path.getsize(tar_path) != tar_meta.get("bytes"):
        problems.append(f"{name}: tar sha256/size differ from the record")
    from relight_stream.keys import KEY_RE

    problems += [f"{name}: record key {r.get('key')!r} is not a valid key (dots or other characters)"
                 for r in rows if not KEY_RE.match(str(r.get("key", "")))]
    expected = [r for r in rows if r.get("status") == "ok"]
    samples: list[tuple[str, dict[str, str]]] = []
    try:
        with tarfile.open(tar_path, "r:") as tf:
            for ti in tf:
                key, field = _split(ti.name)
                data = tf.extractfile(ti).read() if ti.isreg() else b""
                if samples and samples[-1][0] == key:
                    if field in samples[-1][1]:
                        problems.append(f"{name}: duplicate member {ti.name}")
                    samples[-1][1][field] = hashlib.sha256(data).hexdigest()
                else:
                    if any(k == key for k, _ in samples):
                        problems.append(f"{name}: members of {key!r} are not adjacent")
                    samples.append((key, {field: hashlib.sha256(data).hexdigest()}))
    except (tarfile.TarError, OSError) as exc:
        return problems + [f"{name}: unreadable tar ({exc})"]
    if [k for k, _ in samples] != [r["key"] for r in expected]:
        problems.append(f"{name}: tar keys differ from the record's ok rows ({len(samples)} vs {len(expected)})")
    for (key, members), row in zip(samples, expected):
        if "." in key:
            problems.append(f"{name}: key {key!r} contains a dot")
        if any(f != f.lower() for f in members):
            problems.append(f"{name}: {key}: field names are not lowercase: {sorted(members)}")
        if members != row.get("members"):
            problems.append(f"{name}: {key}: member hashes differ from the record")
        fset = sorted(members)
        if not fields:
            fields.append(fset)
        elif fset != fields[0]:
            problems.append(f"{name}: {key}: fields {fset} differ from {fields[0]}")
    return problems


def check_webdataset(urls: list[str], expected_keys: list[str]) -> list[str]:
    """Load the shards with ``webdataset.WebDataset`` and compare the keys it yields."""
    import webdataset as wds

    if not urls:
        return []
    try:
        ds = wds.WebDataset(urls, shardshuffle=False, handler=wds.reraise_exception, empty_check=False)
        keys = [s["__key__"] for s in ds]
    except Exception as exc:
        return [f"webdataset could not load the shards: {type(exc).__name__}: {exc}"]
    if keys != expected_keys:
        return [f"webdataset yields {len(keys)} samples, the records list {len(expected_keys)} ok rows"]
    return []


def verify_dir(out: str) -> tuple[list[str], dict[str, Any]]:
    """All problems in ``out`` and a summary (shards, ok/skipped/failed, fields)."""
    if not os.path.isdir(out):
        raise ValueError(f"verify: no such folder {out}")
    records = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(out, "shard-*.json")))
    tars = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(out, "shard-*.tar")))
    problems = [f"{t}: orphan tar without a record (an interrupted run; rerun generate)" for t in tars
                if t not in records]
    problems += [f"leftover temp file {os.path.basename(p)}" for p in glob.glob(os.path.join(out, "*.tmp-*"))]
    if not records:
        problems.append(f"no shard records in {out}")
    fields: list[list[str]] = []
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    ok_keys: list[str] = []
    for name in records:
        problems += verify_shard(out, name, fields)
        try:
            with open(os.path.join(out, f"{name}.json"), "rb") as f:
                rec = json.loads(f.read())
            for s in counts:
                counts[s] += rec.get("counts", {}).get(s, 0)
            ok_keys += [r["key"] for r in rec.get("rows", []) if r.get("status") == "ok"]
        except (OSError, ValueError, KeyError):
            pass
    urls = [os.path.join(out, f"{n}.tar") for n in records if os.path.isfile(os.path.join(out, f"{n}.tar"))]
    problems += check_webdataset(urls, ok_keys)
    summary = {"shards": len(records), **counts, "fields": fields[0] if fields else [], "problems": len(problems)}
    return problems, summary


def run_verify(cfg: VerifyConfig, run: RunConfig) -> int:
    """``relight-stream verify DIR``: 0 when every shard matches its record and loads, else 1."""
    if not cfg.out:
        raise ValueError("verify needs a DIR")
    if "://" in cfg.out:
        raise ValueError(f"verify {cfg.out!r}: fsspec/object-store outputs are not supported; verify a local or "
                         "mounted folder")
    problems, summary = verify_dir(cfg.out)
    for p in problems:
        log.error("verify: %s", p)
    print(json.dumps(summary, sort_keys=True))
    if problems:
        log.error("verify: %d problem(s) in %s", len(problems), cfg.out)
        return 1
    log.info("verify: %d shards OK (%d ok, %d skipped, %d failed samples)", summary["shards"], summary["ok"],
             summary["skipped"], summary["failed"])
    return 0
