"""Several ranks for ``filter``: each rank writes ``scores-rankNNN.parquet`` stamped with this run's fingerprint;
rank 0 waits for every part of *this* run and merges them (see :mod:`relight_stream.pipeline.filter_run`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relight_stream.config import FilterConfig, config_to_dict


def part_path(out: Path, rank: int, what: str = "scores") -> Path:
    return out / (f"scores-rank{rank:03d}.parquet" if what == "scores" else f"embeddings-rank{rank:03d}.npy")


def run_fingerprint(items: list[Any], cfg: FilterConfig, seed: int, world: int) -> str:
    """Identity of a multi-rank run (inputs, config, seed, world size and, under torchrun, the launch's run id and
    rendezvous address): a part of another run never merges."""
    launch = [os.environ.get(v) for v in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")]
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([config_to_dict(cfg), seed, world, launch], sort_keys=True, default=str).encode())
    for it in items:
        h.update(it.token().encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _part_meta(path: Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"relight_stream")
        return json.loads(raw).get("part") if raw else None
    except Exception:  # not there yet, or being replaced: look again later
        return None


def wait_and_merge(out: Path, world: int, fingerprint: str, timeout_s: float,
                   should_stop: Any = lambda: False) -> tuple[list[pd.DataFrame], list[np.ndarray | None], list[dict]]:
    """Rank 0: wait until every rank's part of this run exists, then concatenate them.

    Returns:
        (each rank's table, its embeddings or None, its part meta with its run stats), by rank.

    Raises:
        TimeoutError: a part still missing ``timeout_s`` after the call (its rank died or is far behind).
        KeyboardInterrupt: stopped by SIGINT/SIGTERM while waiting.
    """
    deadline, delay = time.monotonic() + timeout_s, 0.05
    metas: dict[int, dict] = {}
    while len(metas) < world:
        for r in range(world):
            if r not in metas:
                m = _part_meta(part_path(out, r))
                if m is not None and m.get("fingerprint") == fingerprint:
                    metas[r] = m
        if len(metas) == world:
            break
        if should_stop():
            raise KeyboardInterrupt("filter: interrupted while waiting for the other ranks")
        if time.monotonic() > deadline:
            missing = [str(part_path(out, r)) for r in range(world) if r not in metas]
            raise TimeoutError(f"filter: parts of this run still missing after {timeout_s:.0f} s: {missing}")
        time.sleep(delay)
        delay = min(2.0, delay * 1.5)
    import pyarrow.parquet as pq

    tables, embs = [], []
    for r in range(world):
        tables.append(pq.read_table(part_path(out, r)).to_pandas())
        e = part_path(out, r, "embeddings")
        embs.append(np.load(e) if metas[r].get("embeddings") and e.is_file() else None)
    return tables, embs, [metas[r] for r in range(world)]


def merge_embeddings(tables: list[pd.DataFrame], embs: list[np.ndarray | None], keys: list[str]) -> np.ndarray | None:
    """The parts' embedding rows re-ordered to ``keys`` (float16; NaN rows where a part had none)."""
    found = {k: e[j] for t, e in zip(tables, embs) if e is not None for j, k in enumerate(t["key"])}
    if not found:
        return None
    out = np.full((len(keys), len(next(iter(found.values())))), np.nan, np.float16)
    for i, k in enumerate(keys):
        if k in found:
            out[i] = found[k]
    return out


def merge_stats(metas: list[dict]) -> dict[str, Any]:
    runs = [m["run"] for m in metas]
    merged: dict[str, Any] = {k: sum(r[k] for r in runs) for k in ("inputs", "ok", "skipped", "failed")}
    merged.update(world=len(runs), interrupted=any(r["interrupted"] for r in runs), ranks=runs)
    return merged
