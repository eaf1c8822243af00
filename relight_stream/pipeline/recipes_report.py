"""``generate``'s run-level reports: ``stats.json`` (merged over ranks) and the ``--dry-run`` plan.

Reads the plan, the existing shard records and per-rank ``stats-rankNNN.json``; writes ``OUT/stats.json`` (or
``OUT/stats-rankNNN.json``) atomically. :func:`dry_run_report` writes nothing and loads no model.
"""

from __future__ import annotations

import os
from typing import Any

from relight_stream.config import GenerateConfig
from relight_stream.pipeline import shard as S
from relight_stream.pipeline.decode import decode_writes
from relight_stream.pipeline.sources import Plan, WorkUnit
from relight_stream.pipeline.stage import Stage, describe_pipeline

# bytes per pixel of each member (measured on photos at 256², q95), for the --dry-run disk estimate
_BYTES_PER_PX = {"target.jpg": 0.5, "albedo.jpg": 0.5, "input.jpg": 0.25, "shading.jpg": 0.2, "mask.png": 0.05,
                 "alpha.png": 0.05, "normals.png": 0.45, "depth.npy": 2.0, ".jpg": 0.3, ".png": 0.45, ".npy": 2.0}


def write_stats(out: str, stats: dict[str, Any]) -> None:
    """``stats.json`` (one process) or ``stats-rankNNN.json``, merged into ``stats.json`` once every rank wrote."""
    rank, world = stats["rank"], stats["world"]
    if world == 1:
        S.atomic_write(os.path.join(out, "stats.json"), S.json_bytes(stats, indent=1) + b"\n")
        return
    S.atomic_write(os.path.join(out, f"stats-rank{rank:03d}.json"), S.json_bytes(stats, indent=1) + b"\n")
    merge_rank_stats(out, world)


def merge_rank_stats(out: str, world: int, *, since: float | None = None, exit_code: int | None = None) -> bool:
    """Merge ``stats-rank000..`` into ``stats.json``; returns whether it was written.

    Args:
        out: The output folder.
        world: Ranks of the run.
        since: Only rank files written at or after this time (``time.time()``) count, and missing ranks are
            listed in ``missing_ranks`` instead of preventing the merge (the parent of ``--workers``, after a worker
            died before writing its stats). ``None``: merge only when every rank's file exists.
        exit_code: Overrides the merged exit code (the parent's verdict).
    """
    import json

    parts, missing = [], []
    for r in range(world):
        p = os.path.join(out, f"stats-rank{r:03d}.json")
        if not os.path.isfile(p) or (since is not None and os.path.getmtime(p) < since):
            missing.append(r)
            continue
        with open(p) as f:
            parts.append(json.load(f))
    if not parts or (missing and since is None):
        return False
    merged: dict[str, Any] = {"world": world, "ranks": parts, "drops": {}}
    for k in ("inputs", "ok", "skipped", "failed", "shards_written", "shards_failed"):
        merged[k] = sum(p.get(k, 0) for p in parts)
    for p in parts:
        for reason, n in p.get("drops", {}).items():
            merged["drops"][reason] = merged["drops"].get(reason, 0) + n
    merged["wall_s"] = max(p.get("wall_s", 0.0) for p in parts)
    merged["samples_per_s"] = round(merged["ok"] / merged["wall_s"], 2) if merged["wall_s"] else 0.0
    merged["exit_code"] = max(p.get("exit_code", 0) for p in parts) if exit_code is None else exit_code
    if missing:
        merged["missing_ranks"] = missing
    S.atomic_write(os.path.join(out, "stats.json"), S.json_bytes(merged, indent=1) + b"\n")
    return True


def dry_run_report(cfg: GenerateConfig, plan: Plan, mine: list[WorkUnit], stages: list[Stage], fields: list[str],
                   chash: str) -> str:
    """What ``generate`` would do; reads existing records but loads no model and writes nothing."""
    done, stale = [], []
    for u in mine:
        if S.is_done(cfg.out, u, chash):
            done.append(u.name)
        elif os.path.isdir(cfg.out) and S.read_record(cfg.out, u.name) is not None:
            stale.append(u.name)
    if cfg.shard.new_run:  # everything moves aside first: every shard is to do
        done, stale = [], []
    members = S.member_names(fields)
    px = cfg.decode.resolution**2
    per_sample = sum(_BYTES_PER_PX.get(m, _BYTES_PER_PX.get(os.path.splitext(m)[1], 0.0)) for m in members) * px
    per_sample += 3072  # meta.json, instruction.txt, tar headers
    n_todo = sum(len(u.items) for u in mine if u.name not in done)
    lines = [
        f"inputs:       {plan.num_inputs} (ignored: {plan.ignored or 'none'}; truncated tars: "
        f"{plan.partial_inputs or 'none'})",
        f"shards:       {len(plan.units)} of {cfg.shard.samples_per_shard}; this rank: {len(mine)}, "
        f"to do {len(mine) - len(done)}, to skip (done) {len(done)}, changed since written {len(stale)}",
        f"output:       {cfg.out}/shard-NNNNNN.tar + shard-NNNNNN.json, config.yaml, stats.json"
        + (f" (new run: previous outputs move to {cfg.out}/previous-<UTC time>/)" if cfg.shard.new_run else ""),
        f"members:      {', '.join(members)} at {cfg.decode.resolution}px",
        f"config hash:  {chash}",
        f"disk (est.):  {per_sample * n_todo / 2**20:.1f} MiB for {n_todo} samples",
        "pipeline:",
        describe_pipeline("decode", decode_writes(cfg.decode), stages),
    ]
    return "\n".join(lines)
