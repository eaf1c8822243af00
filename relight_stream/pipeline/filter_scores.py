"""The filter's scores table: one row per input (ok, skipped, failed or never reached) and its embeddings.

Reads the :class:`~relight_stream.sample.SampleBatch` es the runner hands to the sink (``meta[i]["scores"]``,
``keep_B``, ``drop_reason``, ``clip_embed_BD``) and the planned :class:`~relight_stream.pipeline.sources.InputItem` s;
produces the ``scores.parquet`` table (:func:`normalize_table`: key order, fixed columns and dtypes, shared by the
one-process run and the merge of several ranks' parts) and ``embeddings.npy`` (float16 ``[N, D]``, row ``i`` for
row ``i`` of the table). Used by :func:`relight_stream.pipeline.filter_run.run_filter`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relight_stream.pipeline.selection import BASE_COLUMNS, top_negative
from relight_stream.pipeline.shard import atomic_write
from relight_stream.sample import SampleBatch

ITEM_COLUMNS = ("offset", "size", "width", "height", "format")


class ScoresSink:
    """Collects one row per sample (and its embedding) from every batch the runner hands over."""

    def __init__(self, items: dict[str, Any], save_embeddings: bool, columns: tuple[str, ...] = ()) -> None:
        self.items = items
        self.columns = columns
        self.rows: dict[str, dict[str, Any]] = {}
        self.embeddings: dict[str, np.ndarray] = {}
        self.save_embeddings = save_embeddings

    def __call__(self, batch: SampleBatch) -> None:
        emb = batch.arrays.get("clip_embed_BD") if self.save_embeddings else None
        for i, key in enumerate(batch.keys):
            row = self._base(key)
            meta = batch.meta[i]
            row.update(status=batch.status(i), reason=batch.drop_reason[i], detail=meta.get("drop_detail"),
                       format=meta.get("format"))
            if meta.get("orig_size"):
                row.update(width=meta["orig_size"][0], height=meta["orig_size"][1])
            row.update(meta.get("scores", {}) if batch.keep_B[i] else {})
            self.rows[key] = row
            if emb is not None and batch.keep_B[i] and emb.shape[1]:
                self.embeddings[key] = np.asarray(emb[i], np.float32)

    def write_embeddings(self, path: Path, keys: list[str]) -> None:
        """float16 ``[len(keys), D]``, row ``i`` for ``keys[i]`` (NaN where there is none); atomic."""
        dim = len(next(iter(self.embeddings.values())))
        emb = np.full((len(keys), dim), np.nan, np.float16)
        for r, key in enumerate(keys):
            if key in self.embeddings:
                emb[r] = self.embeddings[key]
        buf = io.BytesIO()
        np.save(buf, emb)
        atomic_write(str(path), buf.getvalue())

    def _base(self, key: str) -> dict[str, Any]:
        it = self.items.get(key)
        if it is None:
            return {"key": key, "path": None, "member": None, "offset": -1, "size": -1}
        return {"key": key, "path": it.source, "member": it.member, "offset": it.offset, "size": it.size}

    def table(self) -> pd.DataFrame:
        """Every input once, in key order; inputs the run never reached are ``failed``/``filter:not_processed``."""
        for key in self.items:
            if key not in self.rows:
                self.rows[key] = {**self._base(key), "status": "failed", "reason": "filter:not_processed",
                                  "detail": None}
        df = pd.DataFrame([self.rows[k] for k in sorted(self.rows)], columns=None if self.rows else [
            *BASE_COLUMNS, *ITEM_COLUMNS])  # a rank with no work units still writes a (typed, empty) part
        return normalize_table(df, self.columns)


def normalize_table(df: pd.DataFrame, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Key order, fixed column order and dtypes (scores float, sizes Int64), ``clip_top_negative`` recomputed.

    The one-process table and the merge of several ranks' parts both go through here, so they are identical.
    """
    df = df.drop(columns=["clip_top_negative"], errors="ignore").sort_values("key", kind="stable", ignore_index=True)
    scores = sorted({*columns, *(c for c in df.columns if c not in BASE_COLUMNS and c not in ITEM_COLUMNS)})
    df = df.reindex(columns=[*BASE_COLUMNS, *ITEM_COLUMNS, *scores])  # a column nobody reached stays NaN
    for c in scores:
        df[c] = df[c].astype(float)
    df[["width", "height"]] = df[["width", "height"]].astype("Int64")
    neg = top_negative(df)
    if neg is not None:
        df["clip_top_negative"] = neg
    return df
