"""``relight-stream filter``: score every input for lighting quality, then select, split and report.

Reads INPUTs (folders, CSV/parquet lists, WebDataset tars: :mod:`relight_stream.pipeline.sources`) or, with
``--from-scores``, an earlier ``scores.parquet``; writes into ``--out``:

* ``scores.parquet`` — one row per input, ok or not: ``key, path, member, status, reason, detail, offset,
  size, width, height, format`` and every score column (``photo_*``, ``clip_p_*``, ``clip_g_*``,
  ``clip_score``, ``head_score``, ``clip_top_negative``). Its schema metadata holds the prompts and the
  resolved config. Kept scores let ``--from-scores`` re-select with another ``--top``/``--threshold``/
  ``--splits`` without re-embedding (RELIABILITY.md C12).
* ``selected.csv`` (+ ``train/val/test.csv``), ``stats.json`` (:mod:`relight_stream.pipeline.selection`);
* ``contact_sheet.jpg`` — the top, the images around the cut-off and the bottom;
* ``embeddings.npy`` with ``--save-embeddings`` — float16 ``[N, D]``, row ``i`` belongs to row ``i`` of
  ``scores.parquet`` (NaN rows for samples without an embedding); ``config.yaml``.

Every file is written atomically (temporary name, fsync, rename), so an interrupted run never leaves a half file.
Flow: discover → decode batches → photometric and/or CLIP stage → a sink that records every sample → select.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relight_stream.config import FilterConfig, RunConfig, config_to_dict, dump_config
from relight_stream.log import rank_world
from relight_stream.pipeline.selection import (
    BASE_COLUMNS, contact_sheet, ranking_score, select, sheet_rows, top_negative, write_selection,
)
from relight_stream.pipeline.shard import atomic_write
from relight_stream.pipeline.stage import Stage, describe_pipeline
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("offset", "size", "width", "height", "format")


def build_stages(cfg: FilterConfig, run: RunConfig) -> list[Stage]:
    """The scoring stages for ``cfg.scorer``; config errors (head, prompts) raise here, before any model loads."""
    from relight_stream.pipeline.clip_filter import ClipScoreStage, engine_args
    from relight_stream.pipeline.lighting_score import PhotometricScoreStage

    stages: list[Stage] = []
    if cfg.scorer in ("photometric", "combined"):
        stages.append(PhotometricScoreStage(subject=cfg.subject))
    if cfg.scorer in ("clip", "combined"):
        engine_args(cfg.clip)  # validates model/pretrained now rather than after decoding has started
        stages.append(ClipScoreStage(cfg.clip, device=run.device, save_embeddings=cfg.save_embeddings))
    return stages


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
        df = pd.DataFrame([self.rows[k] for k in sorted(self.rows)])
        scores = sorted({*self.columns, *(c for c in df.columns if c not in BASE_COLUMNS and c not in ITEM_COLUMNS)})
        df = df.reindex(columns=[*BASE_COLUMNS, *ITEM_COLUMNS, *scores])  # a column nobody reached stays NaN
        for c in scores:
            df[c] = df[c].astype(float)
        df[["width", "height"]] = df[["width", "height"]].astype("Int64")
        neg = top_negative(df)
        if neg is not None:
            df["clip_top_negative"] = neg
        return df


def write_scores(path: Path, df: pd.DataFrame, meta: dict[str, Any]) -> None:
    """``scores.parquet`` with ``meta`` (JSON) in the schema metadata, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"relight_stream": json.dumps(meta, default=str).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(str(path), sink.getvalue().to_pybytes())


def read_scores(path: str) -> pd.DataFrame:
    """A ``scores.parquet`` (a file, or a folder holding one); ``ValueError`` when missing or not one of ours."""
    p = Path(path)
    p = p / "scores.parquet" if p.is_dir() else p
    if not p.is_file():
        raise ValueError(f"--from-scores: {p} not found")
    import pyarrow.parquet as pq

    df = pq.read_table(p).to_pandas()
    missing = [c for c in ("key", "path", "status") if c not in df.columns]
    if missing:
        raise ValueError(f"--from-scores: {p} is not a filter scores table (no {missing} columns)")
    return df


def _thumbnail_loader(items: dict[str, Any] | None, side: int = 128):
    """``load(row) -> uint8 image | None``: re-reads the input (file or tar member) and decodes it small."""
    from relight_stream.config import DecodeConfig
    from relight_stream.pipeline.decode import decode_image
    from relight_stream.pipeline.sources import InputItem

    dcfg = DecodeConfig(resolution=side, min_size=1, max_aspect_ratio=1e9)

    def load(row: Any) -> np.ndarray | None:
        try:
            it = (items or {}).get(row["key"])
            if it is None:
                member = row.get("member")
                it = InputItem(row["key"], row["path"], member=member if isinstance(member, str) else None,
                               offset=int(row.get("offset", -1)), size=int(row.get("size", -1)))
            return decode_image(it.read(), dcfg, ext=it.ext)[0]
        except Exception as exc:  # the sheet is a preview: an input gone since scoring leaves a grey tile
            log.debug("contact sheet: cannot reload %s: %s", row["key"], exc)
            return None

    return load


def _finish(cfg: FilterConfig, out: Path, df: pd.DataFrame, seed: int, items: dict[str, Any] | None,
            extra: dict[str, Any]) -> None:
    sel, stats = write_selection(out, df, scorer=cfg.scorer, top=cfg.top, threshold=cfg.threshold,
                                 splits=cfg.splits, seed=seed, extra_stats=extra)
    if cfg.contact_sheet > 0:
        ranked, _ = select(df, ranking_score(df, cfg.scorer))
        n = contact_sheet(out / "contact_sheet.jpg", sheet_rows(ranked, max(0, len(sel) - 1), cfg.contact_sheet),
                          _thumbnail_loader(items), selected=set(sel["key"]))
        log.info("contact sheet: %s (%d thumbnails)", out / "contact_sheet.jpg", n)
    else:
        (out / "contact_sheet.jpg").unlink(missing_ok=True)  # a stale sheet would show another selection
    log.info("filter done: %d inputs, %d ok, %d skipped, %d failed; %d selected -> %s", stats["inputs"], stats["ok"],
             stats["skipped"], stats["failed"], stats["selected"], out)


def _stop_flag() -> tuple[threading.Event, Any]:
    """An event set by SIGINT/SIGTERM (main thread only) and a function restoring the old handlers."""
    ev = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return ev, lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda *_: ev.set())
    return ev, lambda: [signal.signal(s, h) for s, h in old.items()]


def run_filter(cfg: FilterConfig, run: RunConfig) -> int:
    """Entry point of ``relight-stream filter`` (see the module docstring). Returns the exit code.

    Raises:
        ValueError: no ``--out``; neither INPUTs nor ``--from-scores`` (or both); no inputs found; a missing
            scores file, head or prompts file; a scorer the scores table cannot serve — all before any model
            loads or any output is written.
    """
    if not cfg.out:
        raise ValueError("filter: --out is required")
    if not cfg.inputs and not cfg.from_scores:
        raise ValueError("filter: give INPUT paths to score (or --from-scores FILE to re-select)")
    if cfg.inputs and cfg.from_scores:
        raise ValueError("filter: give INPUT paths to score or --from-scores FILE to re-select, not both")
    if rank_world()[1] > 1:
        raise NotImplementedError("filter on several ranks is not implemented yet: run it as one process")
    seed = 0 if run.seed is None else int(run.seed)
    out = Path(cfg.out)
    rule = f"top {cfg.top}" if cfg.top is not None else f"score >= {cfg.threshold}" if cfg.threshold is not None \
        else "every ok input"
    if cfg.from_scores:
        df = read_scores(cfg.from_scores)
        ranking_score(df, cfg.scorer)  # the table must carry this scorer's columns
        if cfg.dry_run:
            print(f"filter (dry run): re-select {len(df)} scored inputs from {cfg.from_scores} by {cfg.scorer}, "
                  f"{rule}, splits {cfg.splits}, seed {seed} -> {out} (nothing written)")
            return 0
        _finish(cfg, out, df, seed, None, {"from_scores": str(cfg.from_scores)})
        return 0

    from relight_stream.pipeline.decode import decode_batches, resolve_dali
    from relight_stream.pipeline.runner import DECODE_WRITES, run_stages
    from relight_stream.pipeline.sources import discover

    items_list, ignored, partial = discover(cfg.inputs)
    items = {it.key: it for it in items_list}
    stages = build_stages(cfg, run)
    if cfg.dry_run:
        print(f"filter (dry run): {len(items)} inputs (ignored {ignored or 'none'}), scorer {cfg.scorer}, {rule}, "
              f"splits {cfg.splits}, seed {seed} -> {out} (nothing written)")
        print(describe_pipeline("decode", DECODE_WRITES, stages))
        return 0
    dali = resolve_dali(cfg.decode, run.device)  # an explicit, unavailable --decode.backend dali fails here
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml", run=run)
    columns = tuple(w[: -len("_B")] for st in stages for w in st.writes if w.endswith("_B"))
    sink = ScoresSink(items, cfg.save_embeddings, columns)
    stop, restore = _stop_flag()
    try:
        batches = decode_batches(items_list, cfg.decode, seed=seed, dali=dali)
        stats = run_stages(batches, stages, sink, source_writes=DECODE_WRITES, total=len(items),
                           should_stop=stop.is_set, desc="filter")
    finally:
        restore()
    df = sink.table()
    meta = {"config": config_to_dict(cfg), "seed": seed, "pipeline": [s.describe() or s.name for s in stages]}
    clip = next((s for s in stages if s.name == "clip"), None)
    if clip is not None:
        meta["prompts"] = {g: list(t) for g, t in clip.prompts.items()}
    write_scores(out / "scores.parquet", df, meta)
    (out / "embeddings.npy").unlink(missing_ok=True)  # rows of an earlier run's file would not match this table
    if cfg.save_embeddings and sink.embeddings:
        sink.write_embeddings(out / "embeddings.npy", list(df["key"]))
    if partial:
        log.warning("truncated input tars (samples after the cut are not in the plan): %s", partial)
    extra = {"run": stats.as_dict(), "ignored": ignored, "partial_inputs": partial, "pipeline": meta["pipeline"]}
    _finish(cfg, out, df, seed, items, extra)
    if stats.interrupted:
        log.warning("filter interrupted: unprocessed inputs are recorded as filter:not_processed")
        return 130
    return 0


