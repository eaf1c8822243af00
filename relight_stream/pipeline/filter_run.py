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

The parts: :mod:`~relight_stream.pipeline.filter_stages` (scoring stages, CPU threads),
:mod:`~relight_stream.pipeline.filter_scores` (the scores table), :mod:`~relight_stream.pipeline.filter_ranks`
(rank parts and their merge), :mod:`~relight_stream.pipeline.filter_outputs` (selection, contact sheet, histogram);
their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relight_stream.config import FilterConfig, RunConfig, config_to_dict, dump_config
from relight_stream.log import rank_device, rank_world
from relight_stream.pipeline.filter_outputs import write_outputs
from relight_stream.pipeline.filter_ranks import (
    merge_embeddings,
    merge_stats,
    part_path,
    run_fingerprint,
    wait_and_merge,
)
from relight_stream.pipeline.filter_scores import ITEM_COLUMNS, ScoresSink, normalize_table  # noqa: F401
from relight_stream.pipeline.filter_stages import build_stages, configure_threads, decode_workers
from relight_stream.pipeline.selection import ranking_score, read_scores, write_scores  # public here too
from relight_stream.pipeline.shard import atomic_write
from relight_stream.pipeline.stage import describe_pipeline

log = logging.getLogger(__name__)


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
        write_outputs(cfg, out, df, seed, None, {"from_scores": str(cfg.from_scores)})
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
    write_outputs(cfg, out, df, seed, items, extra)
    for r in range(world if world > 1 else 0):
        part_path(out, r).unlink(missing_ok=True)
        part_path(out, r, "embeddings").unlink(missing_ok=True)
    if run_stats["interrupted"]:
        log.warning("filter interrupted: unprocessed inputs are recorded as filter:not_processed")
        return 130
    return 0
