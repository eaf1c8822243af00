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
* ``score_histogram.png`` — the ranking score of the ``ok`` inputs, selected vs rejected, the cut-off marked
  (:mod:`relight_stream.pipeline.filter_report`; with the ``verification`` block of ``stats.json`` it replaces the
  reference's ``verify_filtering.py``);
* ``embeddings.npy`` with ``--save-embeddings`` — float16 ``[N, D]``, row ``i`` belongs to row ``i`` of
  ``scores.parquet`` (NaN rows for samples without an embedding); ``config.yaml``.

Every file is written atomically (temporary name, fsync, rename), so an interrupted run never leaves a half file.
Flow: plan → decode batches → photometric and/or CLIP stage → a sink that records every sample → select.

Several ranks (``torchrun``/``accelerate launch`` set ``RANK``/``WORLD_SIZE``; ``--out`` on a shared file system):
rank ``r`` scores the work units ``k`` (``samples_per_unit`` inputs each) with ``k mod WORLD_SIZE == r`` and
writes ``scores-rankNNN.parquet`` (+ ``embeddings-rankNNN.npy``) stamped with the run's fingerprint; rank 0 waits
for every part of *this* run, merges them through the same table normalisation as one process, writes the outputs
above (the same bytes as a one-process run: the table, selection and splits depend only on keys and scores) and
removes the parts. No process group is needed. With ``--device auto``/``cuda``, rank ``r`` uses ``cuda:LOCAL_RANK``.

CPU threads: with a CLIP stage on a CPU, torch (and onnxruntime sessions built after it) gets ``cores − decode
workers`` threads (:func:`configure_threads`) unless ``OMP_NUM_THREADS`` or ``torch_threads`` says otherwise.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relight_stream.config import FilterConfig, RunConfig, config_to_dict, dump_config
from relight_stream.log import cores_per_rank, pool_threads, rank_device, rank_world
from relight_stream.pipeline.filter_ranks import (
    merge_embeddings,
    merge_stats,
    part_path,
    run_fingerprint,
    wait_and_merge,
)
from relight_stream.pipeline.filter_report import score_label, write_histogram
from relight_stream.pipeline.selection import (  # noqa: F401 (read_scores/write_scores: public here too)
    BASE_COLUMNS,
    contact_sheet,
    ranking_score,
    read_scores,
    select,
    sheet_rows,
    top_negative,
    write_scores,
    write_selection,
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
    write_histogram(out, df["key"], df["status"], ranking_score(df, cfg.scorer), set(sel["key"]), stats["cutoff"],
                    score_label(df, cfg.scorer))
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


def configure_threads(device: str, decode_workers: int, asked: int = 0) -> int | None:
    """Set torch's CPU intra-op threads so that the model does not fight the decode threads for cores.

    On a CPU device: ``asked`` when > 0; else nothing when ``OMP_NUM_THREADS`` is set (the user's choice); else
    ``max(1, cores − decode_workers)``, where cores are this process's usable cores shared among the node's
    ranks (``LOCAL_WORLD_SIZE``). On 2 cores, torch's default of 2 threads next to 2 decode threads cut tiny-CLIP
    ``filter`` throughput by an order of magnitude. onnxruntime sessions built afterwards take the same count.

    Returns:
        The thread count set, or None when nothing was changed (CUDA device, or ``OMP_NUM_THREADS`` set).
    """
    import torch

    from relight_stream.engines.registry import resolve_device

    if resolve_device(device).type != "cpu":
        return None
    if asked <= 0 and os.environ.get("OMP_NUM_THREADS"):
        log.info("torch CPU threads: %d (OMP_NUM_THREADS is set)", torch.get_num_threads())
        return None
    cores = cores_per_rank()
    n = asked if asked > 0 else max(1, cores - decode_workers)
    torch.set_num_threads(n)
    log.info("torch CPU threads: %d (%s; %d cores, %d decode workers)", n, "filter.torch_threads" if asked > 0
             else "auto", cores, decode_workers)
    return n


def decode_workers(cfg: FilterConfig) -> int:
    """Threads ``decode_batches`` uses for ``cfg`` (``decode.num_workers``, 0 meaning ``log.pool_threads()``)."""
    return cfg.decode.num_workers or pool_threads()


def run_filter(cfg: FilterConfig, run: RunConfig) -> int:
    """Entry point of ``relight-stream filter`` (see the module docstring). Returns the exit code.

    Several ranks (``torchrun``/``accelerate launch``: ``RANK``/``WORLD_SIZE``): rank ``r`` scores the inputs of
    work units ``k`` with ``k mod WORLD_SIZE == r`` (:meth:`Plan.for_rank`) and writes ``scores-rankNNN.parquet``
    (+ ``embeddings-rankNNN.npy``) to the shared ``--out``; rank 0 then waits for every part of this run,
    merges them and writes the same outputs as one process would, and removes the parts.

    Raises:
        ValueError: no ``--out``; neither INPUTs nor ``--from-scores`` (or both); no inputs found; a missing
            scores file, head or prompts file; a scorer the scores table cannot serve — all before any model
            loads or any output is written.
        TimeoutError: rank 0 waited ``merge_timeout_s`` for another rank's part.
    """
    if not cfg.out:
        raise ValueError("filter: --out is required")
    if not cfg.inputs and not cfg.from_scores:
        raise ValueError("filter: give INPUT paths to score (or --from-scores FILE to re-select)")
    if cfg.inputs and cfg.from_scores:
        raise ValueError("filter: give INPUT paths to score or --from-scores FILE to re-select, not both")
    rank, world = rank_world()
    if world > 1:
        run = dataclasses.replace(run, device=rank_device(run.device))
    seed = 0 if run.seed is None else int(run.seed)
    out = Path(cfg.out)
    rule = f"top {cfg.top}" if cfg.top is not None else f"score >= {cfg.threshold}" if cfg.threshold is not None \
        else "every ok input"
    if cfg.from_scores:
        df = read_scores(cfg.from_scores)
        ranking_score(df, cfg.scorer)  # the table must carry this scorer's columns
        if rank != 0:
            return 0  # re-selection is cheap: rank 0 does it alone
        if cfg.dry_run:
            print(f"filter (dry run): re-select {len(df)} scored inputs from {cfg.from_scores} by {cfg.scorer}, "
                  f"{rule}, splits {cfg.splits}, seed {seed} -> {out} (nothing written)")
            return 0
        _finish(cfg, out, df, seed, None, {"from_scores": str(cfg.from_scores)})
        return 0

    from relight_stream.pipeline.decode import decode_batches, resolve_dali
    from relight_stream.pipeline.runner import DECODE_WRITES, run_stages
    from relight_stream.pipeline.sources import make_plan

    plan = make_plan(cfg.inputs, samples_per_shard=cfg.samples_per_unit)
    items_list = [it for u in plan.units for it in u.items]
    items = {it.key: it for it in items_list}
    mine = [it for u in plan.for_rank(rank, world) for it in u.items]
    stages = build_stages(cfg, run)
    if cfg.dry_run:
        if rank == 0:
            print(f"filter (dry run): {len(items)} inputs in {len(plan.units)} units over {world} rank(s) (ignored "
                  f"{plan.ignored or 'none'}), scorer {cfg.scorer}, {rule}, splits {cfg.splits}, seed {seed} -> "
                  f"{out} (nothing written)")
            print(describe_pipeline("decode", DECODE_WRITES, stages))
        return 0
    dali = resolve_dali(cfg.decode, run.device)  # an explicit, unavailable --decode.backend dali fails here
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        dump_config(cfg, out / "config.yaml", run=run)
    if world > 1:  # a part left by an interrupted earlier run must not be merged while this rank re-scores
        part_path(out, rank).unlink(missing_ok=True)
        part_path(out, rank, "embeddings").unlink(missing_ok=True)
    threads_before = None
    if any(st.name == "clip" for st in stages):
        import torch

        threads_before = torch.get_num_threads()
        configure_threads(run.device, decode_workers(cfg), cfg.torch_threads)
    columns = tuple(w[: -len("_B")] for st in stages for w in st.writes if w.endswith("_B"))
    sink = ScoresSink({it.key: it for it in mine}, cfg.save_embeddings, columns)
    stop, restore = _stop_flag()
    try:
        batches = decode_batches(mine, cfg.decode, seed=seed, dali=dali, num_workers=cfg.decode.num_workers)
        stats = run_stages(batches, stages, sink, source_writes=DECODE_WRITES, total=len(mine),
                           should_stop=stop.is_set, desc="filter" if world == 1 else f"filter r{rank}")
        meta = {"config": config_to_dict(cfg), "seed": seed, "pipeline": [s.describe() or s.name for s in stages]}
        clip = next((s for s in stages if s.name == "clip"), None)
        if clip is not None:
            meta["prompts"] = {g: list(t) for g, t in clip.prompts.items()}
        df = sink.table()
        run_stats = stats.as_dict()
        emb = None
        if world > 1:
            fp = run_fingerprint(items_list, cfg, seed, world)
            has_emb = bool(cfg.save_embeddings and sink.embeddings)
            if has_emb:
                sink.write_embeddings(part_path(out, rank, "embeddings"), list(df["key"]))
            part = {"rank": rank, "world": world, "fingerprint": fp, "run": run_stats, "embeddings": has_emb}
            write_scores(part_path(out, rank), df, {**meta, "part": part})
            if rank != 0:
                log.info("filter rank %d/%d: %d inputs scored -> %s; rank 0 merges", rank, world, len(mine),
                         part_path(out, rank))
                return 130 if stats.interrupted else 0
            try:
                tables, embs, metas = wait_and_merge(out, world, fp, cfg.merge_timeout_s, stop.is_set)
            except KeyboardInterrupt:
                log.warning("filter interrupted while waiting for the other ranks' parts; nothing merged")
                return 130
            df = normalize_table(pd.concat([t for t in tables if len(t)] or tables, ignore_index=True), columns)
            if len(df) != len(items) or set(df["key"]) != set(items):
                raise RuntimeError(f"filter: the {world} parts hold {len(df)} rows, not the plan's {len(items)} inputs")
            emb = merge_embeddings(tables, embs, list(df["key"]))
            run_stats = merge_stats(metas)
    finally:
        restore()
        if threads_before is not None:
            torch.set_num_threads(threads_before)  # a library caller's setting outlives this run
    write_scores(out / "scores.parquet", df, meta)
    (out / "embeddings.npy").unlink(missing_ok=True)  # rows of an earlier run's file would not match this table
    if world == 1 and cfg.save_embeddings and sink.embeddings:
        sink.write_embeddings(out / "embeddings.npy", list(df["key"]))
    elif emb is not None:
        buf = io.BytesIO()
        np.save(buf, emb)
        atomic_write(str(out / "embeddings.npy"), buf.getvalue())
    if plan.partial_inputs:
        log.warning("truncated input tars (samples after the cut are not in the plan): %s", plan.partial_inputs)
    extra = {"run": run_stats, "ignored": plan.ignored, "partial_inputs": plan.partial_inputs,
             "pipeline": meta["pipeline"]}
    _finish(cfg, out, df, seed, items, extra)
    for r in range(world if world > 1 else 0):
        part_path(out, r).unlink(missing_ok=True)
        part_path(out, r, "embeddings").unlink(missing_ok=True)
    if run_stats["interrupted"]:
        log.warning("filter interrupted: unprocessed inputs are recorded as filter:not_processed")
        return 130
    return 0
