"""``generate`` as one flow: plan → decode → stages → shard (ARCHITECTURE.md §1, §5).

Reads the INPUTs (:mod:`~relight_stream.pipeline.sources`); writes ``OUT/shard-NNNNNN.tar`` + ``.json`` records
(:mod:`~relight_stream.pipeline.shard`), ``OUT/config.yaml`` and ``OUT/stats.json`` (:mod:`.recipes_report`; per rank
``stats-rankNNN.json`` when distributed; the last rank to finish merges them into ``stats.json``). The counts in
``stats.json`` (ok/skipped/failed, ``drops`` by reason) are those of the shards this run committed.

The stages come from ``relight_stream.pipeline.triplet:build_triplet_stages``; ``run_generate(..., stages=[])``
runs the spine alone (decode → shard: ``target.jpg`` + ``meta.json`` per sample). Work unit ``k`` goes to rank
``k mod WORLD_SIZE``, so any number of processes (``torchrun``/``accelerate launch``) writes the same bytes.

Exit codes: 0 done; 1 a shard failed or an input tar was truncated (unless ``skip_bad_input_shards``);
130/143 after SIGINT/SIGTERM (the current shard is discarded, ``stats.json`` is still written). A bad run
(missing inputs, changed config without ``--overwrite``, a held ``run.lock``) raises ``ValueError`` before any
model loads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections import Counter
from typing import Any, Iterator

from relight_stream.config import GenerateConfig, RunConfig, config_to_dict, dump_config
from relight_stream.log import DropCounter, rank_device, rank_world
from relight_stream.pipeline import shard as S
from relight_stream.pipeline.decode import decode_batches, decode_writes, resolve_dali
from relight_stream.pipeline.recipes_report import dry_run_report, write_stats
from relight_stream.pipeline.runner import StageSetupError, run_stages
from relight_stream.pipeline.sources import Plan, WorkUnit, make_plan
from relight_stream.pipeline.stage import Stage, check_pipeline, describe_pipeline
from relight_stream.pipeline.workers import in_worker, resolve_workers, run_workers, uses_gpu, worker_memory_mb
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)
__all__ = ["ShardSink", "StopFlag", "build_generate_stages", "check_local_out", "dry_run_report", "run_generate",
           "unit_batches", "write_shards", "write_stats"]


def run_generate(cfg: GenerateConfig, run: RunConfig, *, stages: list[Stage] | None = None) -> int:
    """``relight-stream generate``: see the module docstring. Returns the exit code.

    Args:
        cfg: The generate config.
        run: Global options (seed: 0 when unset; device).
        stages: Override the stage list (``[]`` runs the decode → shard spine alone); default
            :func:`build_generate_stages`.
    """
    seed = 0 if run.seed is None else int(run.seed)
    rank, world = rank_world()
    run = dataclasses.replace(run, device=rank_device(run.device))  # rank r of a node on cuda:LOCAL_RANK
    if not cfg.out:
        raise ValueError("generate needs --out DIR")
    check_local_out(cfg.out)
    if cfg.shard.new_run and cfg.shard.overwrite:
        raise ValueError("--new-run (move the previous outputs aside) and --overwrite (replace them) exclude "
                         "each other")
    if cfg.shard.new_run and world > 1:
        raise ValueError(f"--new-run needs a single process (got WORLD_SIZE={world}): ranks cannot move {cfg.out} "
                         "aside in step; move it yourself or start the new run with one process")
    if not cfg.inputs:
        raise ValueError("generate needs at least one INPUT (folder, CSV/parquet list or .tar shards)")

    plan = make_plan(cfg.inputs, samples_per_shard=cfg.shard.samples_per_shard)
    default_stages = stages is None
    stages = build_generate_stages(cfg, run) if stages is None else stages
    source = decode_writes(cfg.decode)
    check_pipeline(source, stages)
    fields = S.output_fields(_produced(source, stages), write_artifacts=cfg.shard.write_artifacts)
    chash = S.config_hash(config_to_dict(cfg), seed)
    mine = plan.for_rank(rank, world)
    if cfg.fast_dev_run:
        mine = [WorkUnit(u.index, u.items[: cfg.decode.batch_size], u.partial_inputs) for u in mine[:1]]

    if cfg.dry_run:
        print(dry_run_report(cfg, plan, mine, stages, fields, chash))
        return 0

    os.makedirs(cfg.out, exist_ok=True)
    if cfg.workers != 1 and not cfg.fast_dev_run and not in_worker():
        code = _maybe_workers(cfg, run, plan, mine, chash, stages=None if default_stages else stages)
        if code is not None:
            return code
    with S.RunLock(cfg.out, rank):
        if cfg.shard.new_run:
            S.move_aside(cfg.out)
        S.clean_stale_temps(cfg.out, {u.name for u in mine})
        names = {u.name for u in plan.units}
        todo, done = S.classify_shards(cfg.out, mine, names, chash=chash, overwrite=cfg.shard.overwrite,
                                       delete_extra=rank == 0)
        if rank == 0:
            dump_config(cfg, os.path.join(cfg.out, "config.yaml"), run=run)
        log.info("%d inputs in %d shards; rank %d/%d: %d to do, %d already done", plan.num_inputs, len(plan.units),
                 rank, world, len(todo), len(done))
        log.info("pipeline:\n%s", describe_pipeline("decode", source, stages))
        result = write_shards(cfg, run, todo, stages, fields, seed=seed, chash=chash)
    result.update(planned_shards=len(plan.units), rank_shards=len(mine), done_before=len(done),
                  ignored=plan.ignored, partial_inputs=plan.partial_inputs)
    code = _exit_code(result, plan, cfg)
    write_stats(cfg.out, {**result, "exit_code": code, "rank": rank, "world": world, "config_hash": chash})
    s = result
    log.info("done: %d ok, %d skipped, %d failed of %d inputs; %.1f samples/s; %d shards written, %d failed; exit %d",
             s["ok"], s["skipped"], s["failed"], s["inputs"], s["samples_per_s"], s["shards_written"],
             s["shards_failed"], code)
    return code


def _maybe_workers(cfg: GenerateConfig, run: RunConfig, plan: Plan, mine: list[WorkUnit], chash: str, *,
                   stages: list[Stage] | None) -> int | None:
    """Run in worker processes (:mod:`.workers`) when ``cfg.workers`` resolves to more than one; ``None`` else.

    Stale outputs fail here, before any worker starts; ``--new-run`` moves the old outputs aside here once.
    """
    rank, world = rank_world()
    if cfg.shard.new_run:
        todo = mine
    elif cfg.shard.overwrite:  # stale shards are replaced by the workers; count what is left without deleting
        todo = [u for u in mine if not S.is_done(cfg.out, u, chash)]
    else:
        todo, _ = S.classify_shards(cfg.out, mine, {u.name for u in plan.units}, chash=chash, overwrite=False,
                                    delete_extra=False)
    gpu = cfg.workers == 0 and uses_gpu(cfg, run)
    inputs_todo = sum(len(u.items) for u in todo)
    n = resolve_workers(cfg.workers, gpu=gpu, inputs_todo=inputs_todo, units_todo=len(todo), world=world,
                        mb_per_worker=worker_memory_mb(cfg))
    if n <= 1:
        return None
    if cfg.shard.new_run:
        with S.RunLock(cfg.out, rank):
            S.move_aside(cfg.out)
    return run_workers(cfg, run, n, total=inputs_todo, stages=stages)


def build_generate_stages(cfg: GenerateConfig, run: RunConfig) -> list[Stage]:
    """The triplet stages (segment → geometry → albedo → relight → instruct), plus the preview when asked."""
    from relight_stream.pipeline.triplet import build_triplet_stages

    stages = list(build_triplet_stages(cfg, run))
    if cfg.preview > 0:
        from relight_stream.pipeline.preview import PreviewStage

        stages.append(PreviewStage(cfg.preview, cfg.out))
    return stages


def check_local_out(out: str) -> None:
    """Outputs go to a local or shared (mounted) filesystem: fsspec URLs are refused before anything runs.

    Raises:
        ValueError: ``out`` is a URL (``s3://``, ``gs://``, ``file://``, ...).
    """
    if "://" in out:
        raise ValueError(f"--out {out!r}: fsspec/object-store outputs are not supported (atomic rename, fsync and "
                         "run.lock need a local or shared filesystem); write to a local or mounted folder and copy "
                         "the finished shards")


def _produced(source: tuple[str, ...], stages: list[Stage]) -> set[str]:
    have = set(source)
    for st in stages:
        have |= set(st.writes)
    return have


# --------------------------------------------------------------------------------------- machinery


class ShardSink:
    """Routes batches (aligned to work units) into one :class:`~relight_stream.pipeline.shard.ShardWriter` per unit.

    A unit's writer commits once it has a row for each of the unit's inputs; :meth:`abort` discards the open one.
    """

    def __init__(self, cfg: GenerateConfig, units: list[WorkUnit], fields: list[str], *, seed: int, chash: str):
        self.cfg, self.units, self.fields, self.seed, self.chash = cfg, list(units), fields, seed, chash
        self.pos = 0
        self.writer: S.ShardWriter | None = None
        self.written: list[str] = []
        self.counts: Counter[str] = Counter()  # ok/skipped/failed and reasons of committed rows only
        self.reasons: Counter[str] = Counter()

    @property
    def current(self) -> WorkUnit | None:
        return self.units[self.pos] if self.pos < len(self.units) else None

    def __call__(self, batch: SampleBatch) -> None:
        unit = self.current
        assert unit is not None, "more batches than planned units"
        if self.writer is None:
            header = {"config_hash": self.chash, "input_fingerprint": unit.fingerprint(), "seed": self.seed,
                      "partial_inputs": unit.partial_inputs}
            self.writer = S.ShardWriter(self.cfg.out, unit.name, header=header, fields=self.fields,
                                        jpeg_quality=self.cfg.shard.jpeg_quality, seed=self.seed).__enter__()
        start = len(self.writer.rows)
        expected = [it.key for it in unit.items[start : start + len(batch)]]
        assert batch.keys == expected, f"{unit.name}: batch keys {batch.keys[:2]}... do not follow the plan"
        self.writer.add_batch(batch)
        if len(self.writer.rows) == len(unit.items):
            rec = self.writer.commit()
            self.counts.update(rec["counts"])
            self.reasons.update(r["reason"] for r in rec["rows"] if r["reason"])
            self.written.append(unit.name)
            self.writer = None
            self.pos += 1

    def abort(self) -> WorkUnit | None:
        """Discard the open shard (if any) and return its unit."""
        unit = self.current if self.writer is not None else None
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
        return unit


def unit_batches(units: list[WorkUnit], cfg: GenerateConfig, *, seed: int, dali: Any) -> Iterator[SampleBatch]:
    """Decoded batches that never cross a unit boundary (one thread pool and prefetch window for all units)."""
    return decode_batches(None, cfg.decode, seed=seed, dali=dali, num_workers=cfg.decode.num_workers,
                          groups=(u.items for u in units))


class StopFlag:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop between batches; a second one aborts."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
            # a worker process blocks both until here (workers.py): a signal that came during start-up lands now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: finishing the current batch, discarding the open shard", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __call__(self) -> bool:
        return bool(self.signum)


def write_shards(cfg: GenerateConfig, run: RunConfig, todo: list[WorkUnit], stages: list[Stage], fields: list[str],
                 *, seed: int, chash: str) -> dict[str, Any]:
    """Decode, run the stages and write every unit of ``todo``; a unit whose batch raises is discarded and counted."""
    t0 = time.perf_counter()
    drops = DropCounter(logger=log)
    totals: dict[str, Any] = {"batches": 0, "stage_s": {}, "source_wait_s": 0.0, "sink_s": 0.0, "sink_wait_s": 0.0}
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failed_units: list[str] = []
    written: list[str] = []
    signum = 0
    dali = resolve_dali(cfg.decode, run.device) if todo else None
    remaining = list(todo)
    with StopFlag() as stop:
        while remaining and not stop():
            sink = ShardSink(cfg, remaining, fields, seed=seed, chash=chash)
            try:
                st = run_stages(unit_batches(remaining, cfg, seed=seed, dali=dali), stages, sink, drops=drops,
                                source_writes=decode_writes(cfg.decode), total=sum(len(u.items) for u in remaining),
                                should_stop=stop, desc="generate", sink_depth=1)
            except (OSError, KeyboardInterrupt, StageSetupError) as exc:  # disk full, 2nd signal, no model: abort
                sink.abort()
                written += sink.written
                counts.update(sink.counts)
                reasons.update(sink.reasons)
                if isinstance(exc, KeyboardInterrupt):
                    signum = stop.signum or signal.SIGINT
                    break
                raise
            except Exception:
                bad = sink.abort() or sink.current
                log.exception("shard %s failed; it is discarded and will be retried by the next run",
                              bad.name if bad else "?")
                written += sink.written
                counts.update(sink.counts)
                reasons.update(sink.reasons)
                if bad is not None:
                    failed_units.append(bad.name)
                done_names = set(sink.written) | ({bad.name} if bad else set())
                remaining = [u for u in remaining if u.name not in done_names]
                continue
            _accumulate(totals, st)
            if sink.writer is not None:  # interrupted (or, never expected, a source that ended early)
                bad = sink.abort()
                if not st.interrupted and bad is not None:
                    log.error("shard %s got fewer batches than planned; discarded", bad.name)
                    failed_units.append(bad.name)
            written += sink.written
            counts.update(sink.counts)
            reasons.update(sink.reasons)
            break
        signum = signum or stop.signum
    wall = time.perf_counter() - t0
    ok = counts["ok"]
    return {"inputs": sum(counts[k] for k in ("ok", "skipped", "failed")), "ok": ok, "skipped": counts["skipped"],
            "failed": counts["failed"], "drops": dict(sorted(reasons.items())),
            "shards_written": len(written), "shards_failed": len(failed_units), "failed_shards": failed_units,
            "interrupted_by": signal.Signals(signum).name if signum else None, "wall_s": round(wall, 3),
            "samples_per_s": round(ok / wall, 2) if wall > 0 else 0.0,
            "stage_ms_per_batch": {k: round(1e3 * v / max(1, totals["batches"]), 2)
                                   for k, v in totals["stage_s"].items()},
            "source_wait_ms_per_batch": round(1e3 * totals["source_wait_s"] / max(1, totals["batches"]), 2),
            "shard_write_ms_per_batch": round(1e3 * totals["sink_s"] / max(1, totals["batches"]), 2),
            "shard_write_wait_ms_per_batch": round(1e3 * totals["sink_wait_s"] / max(1, totals["batches"]), 2),
            "_signum": signum}


def _accumulate(totals: dict[str, Any], st: Any) -> None:
    totals["batches"] += st.batches
    totals["source_wait_s"] += st.source_wait_s
    totals["sink_s"] += st.sink_s
    totals["sink_wait_s"] += st.sink_wait_s
    for k, v in st.stage_s.items():
        totals["stage_s"][k] = totals["stage_s"].get(k, 0.0) + v


def _exit_code(result: dict[str, Any], plan: Plan, cfg: GenerateConfig) -> int:
    signum = result.pop("_signum", 0)
    if signum:
        return 128 + int(signum)
    if result["shards_failed"]:
        return 1
    if plan.partial_inputs and not cfg.shard.skip_bad_input_shards:
        log.error("input tar(s) truncated: %s (samples before the cut were written; pass skip_bad_input_shards "
                  "to accept)", ", ".join(plan.partial_inputs))
        return 1
    return 0
