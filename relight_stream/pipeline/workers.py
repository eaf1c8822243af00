"""Worker processes for ``generate``: N local ranks instead of one process with threads (issue 5).

The CPU stages (GrabCut, normals, Retinex, shading, PNG/JPEG encoding) are NumPy/OpenCV calls that release the
GIL, but the Python between them does not, so threads in one process stop scaling as cores are added.
``generate --workers N`` runs N spawned processes, each a rank of its own (:func:`relight_stream.log.rank_world`):
with an outer launch of ``WORLD_SIZE`` W and ``RANK`` r, worker i is rank ``r*N + i`` of ``W*N``. Work unit k goes
to rank ``k mod world`` as always, so the shards are byte-identical to a one-process run, resume works with any
other worker count, and each worker's decode, compute and encode overlap the others'.

Auto (``--workers 0``) gives one worker per two cores: each keeps two threads, for its sink thread and its
per-sample pool, and no more than the available memory holds (:func:`worker_memory_mb`). On the 2-core VM that
is one process, and rightly so: with the sink thread overlapping encode and compute, one process ran 128 photos
at 1024² in 14.7 s (median of 3, start-up included) and two workers in 13.9 s, and in both ``bench generate``
runs since (96 photos, 1024²) one process was ahead: 5.91 against 5.22 and 6.74 against 5.10 img/s. More cores
are where processes should pay: that has not been measured here.

The parent process plans nothing itself beyond the checks of ``run_generate``: it moves the old outputs aside
(``--new-run``), spawns the workers, forwards SIGINT/SIGTERM to them once (they run in their own process group,
so a terminal's Ctrl-C reaches them only through the parent), shows the one progress bar fed by the workers,
and returns the worst exit code. A worker notices a dead parent (SIGKILL) and stops at the next batch as if
it had received SIGTERM. ``stats.json`` is merged from the workers' ``stats-rankNNN.json`` by the last one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from relight_stream.config import GenerateConfig, RunConfig
from relight_stream.log import cores_per_rank, rank_world

log = logging.getLogger(__name__)

MIN_INPUTS_PER_WORKER = 48
"""``--workers 0`` (auto) starts another process only for this many inputs to do per process: a worker costs
about a second to start (imports), the time of ~5 triplets at 1024² on two cores."""
_WORKER_ENV = "RELIGHT_GENERATE_WORKER"


def worker_memory_mb(cfg: GenerateConfig) -> float:
    """Peak host memory of one classical CPU worker (MB), for the auto count: ≈ 0.95 GB of libraries plus ≈ 1.85 GB
    per megapixel of a 16-image batch (measured peak RSS: 1.41 GB at 512², 2.85 GB at 1024², batches of 16)."""
    batch = min(cfg.decode.batch_size, cfg.shard.samples_per_shard)  # a batch never crosses a shard
    return 950.0 + 1850.0 * (cfg.decode.resolution**2 / 2**20) * (batch / 16)


def in_worker() -> bool:
    """True inside a process started by :func:`run_workers` (it never starts workers of its own)."""
    return os.environ.get(_WORKER_ENV) == "1"


def resolve_workers(asked: int, *, gpu: bool, inputs_todo: int, units_todo: int, world: int = 1,
                    mb_per_worker: float = 2048.0) -> int:
    """The number of worker processes for a run.

    Args:
        asked: ``GenerateConfig.workers``: N > 0 as given (at most one per work unit), 0 for auto.
        gpu: The run puts models or kernels on a GPU: auto keeps one process (launch one rank per GPU with
            ``torchrun``/``accelerate launch`` instead).
        inputs_todo: Inputs in the shards this process still has to write.
        units_todo: Those shards (a shard is never split between workers).
        mb_per_worker: Host memory one worker needs (:func:`worker_memory_mb`).
        world: Ranks of an outer launch (``torchrun``). Every rank must then start the same number of workers, or
            the ranks r*N+i of W*N would not tile the plan: auto is 1 and an explicit N is taken as is.

    Returns:
        1 for an in-process run; auto gives one worker per two usable cores, no more than the available host
        memory allows (``mb_per_worker`` each) and no fewer than :data:`MIN_INPUTS_PER_WORKER` inputs each.
    """
    if asked < 0:
        raise ValueError(f"generate: workers must be >= 0 (0: auto), got {asked}")
    if in_worker():
        return 1
    if world > 1:  # no per-rank caps: they could differ between ranks
        return asked if asked > 0 else 1
    if units_todo <= 1:
        return 1
    if asked > 0:
        return max(1, min(asked, units_todo))
    if gpu:
        return 1
    n = min(cores_per_rank() // 2, units_todo, max(1, inputs_todo // MIN_INPUTS_PER_WORKER),
            _memory_cap(mb_per_worker))
    return max(1, n)


def _memory_cap(mb_per_worker: float) -> int:
    avail = available_memory_bytes()
    if avail is None:
        return 1 << 10
    return max(1, int(avail // (mb_per_worker * 2**20)))


def available_memory_bytes() -> int | None:
    """Host memory a new process can use (bytes), or None where it cannot be read.

    ``MemAvailable`` of ``/proc/meminfo`` counts reclaimable page cache, which ``sysconf(SC_AVPHYS_PAGES)``
    (``MemFree``) does not: on a machine that has read a dataset, free memory is a small part of what workers
    can have. A cgroup v2 ``memory.max`` (a container's limit) lowers it further, less the container's working
    set (``memory.current`` minus its reclaimable ``inactive_file`` pages).
    """
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            # memory.current counts the page cache too: the inactive file pages are reclaimable (kubelet's
            # working set), or a container that has just read its dataset would look full
            try:
                with open("/sys/fs/cgroup/memory.stat") as f:
                    stat = dict(line.split() for line in f if line.strip())
                used -= int(stat.get("inactive_file", 0))
            except (OSError, ValueError):
                pass
            avail = min(avail, max(0, int(limit) - max(0, used)))
    except (OSError, ValueError):
        pass
    return avail


def uses_gpu(cfg: GenerateConfig, run: RunConfig) -> bool:
    """Whether the run's stages would use a GPU (decides the auto worker count).

    A model backend (SAM2, depth) uses CUDA whenever the device allows it. The classical stages' kernels follow
    the batch: they see CuPy arrays only when DALI decodes on the GPU and CuPy can run; otherwise the whole run
    is CPU work, whatever GPU the machine has.
    """
    if run.device == "cpu":
        return False
    classical = cfg.segment.backend == "classical" and cfg.geometry.backend == "classical"
    if classical:
        from relight_stream.kernels.xp import has_cupy
        from relight_stream.pipeline.decode_dali import dali_available

        if cfg.decode.backend == "pil" or not dali_available()[0] or not has_cupy():
            return False
    if run.device.startswith("cuda"):
        return True
    import torch

    return bool(torch.cuda.is_available())


def run_workers(cfg: GenerateConfig, run: RunConfig, n: int, *, total: int | None, stages: Any = None) -> int:
    """Run ``generate`` in ``n`` spawned worker processes and wait for them (see the module docstring).

    Args:
        cfg: The run's config; each worker gets it with ``shard.new_run`` cleared (the parent has moved the old
            outputs aside already) and never starts workers of its own (:func:`in_worker`).
        run: Global options, passed on unchanged.
        n: Worker processes (> 1).
        total: Inputs still to do over all workers, for the progress bar.
        stages: A stage list for every worker (must pickle); ``None`` builds the triplet stages in each.

    Returns:
        The exit code: the largest of the workers' (128 + signal for a stop), 1 for a worker that died.
    """
    import dataclasses
    import multiprocessing as mp

    rank, world = rank_world()
    local = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    wcfg = dataclasses.replace(cfg, shard=dataclasses.replace(cfg.shard, new_run=False))
    started = time.time()
    ctx = mp.get_context("spawn")
    channel = ctx.Queue()
    procs = []
    for i in range(n):
        env = {"RANK": str(rank * n + i), "WORLD_SIZE": str(world * n), "LOCAL_RANK": str(local * n + i),
               "LOCAL_WORLD_SIZE": str(local_world * n), _WORKER_ENV: "1"}
        p = ctx.Process(target=_worker_main, args=(wcfg, run, env, stages, channel, os.getpid()),
                        name=f"generate-worker-{i}", daemon=False)
        p.start()
        procs.append(p)
    log.info("generate: %d worker processes (ranks %d..%d of %d)", n, rank * n, rank * n + n - 1, world * n)

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.is_alive() and p.pid:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = _ProgressRelay(channel, total)
    try:
        for p in procs:
            while p.is_alive():
                p.join(timeout=0.2)
                bar.drain()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        bar.close()
    codes, died = [], False
    for i, p in enumerate(procs):
        code = p.exitcode if p.exitcode is not None else 1
        if code < 0:  # killed by a signal it could not handle (SIGKILL: the OOM killer?)
            log.error("worker %d died of %s; its open shard is left for the next run", i, signal.Signals(-code).name)
            code, died = 1, True
        elif code > 128:
            log.info("worker %d stopped on %s", i, signal.Signals(code - 128).name)
        elif code:
            log.error("worker %d exited with %d", i, code)
        codes.append(code)
    stops = [c for c in codes if c > 128]
    code = max(stops) if stops else max(codes)
    if world == 1 and died:
        # a worker killed before it wrote its stats (a stop during its start-up, the OOM killer): the parent
        # merges what the others wrote, so stats.json still ends the run
        from relight_stream.pipeline.recipes_report import merge_rank_stats

        merge_rank_stats(cfg.out, n, since=started, exit_code=code)
    return code


def _worker_main(cfg: GenerateConfig, run: RunConfig, env: dict[str, str], stages: Any, channel: Any,
                 parent: int) -> None:
    """Body of one worker process: set the rank, log like a rank, run ``generate``, exit with its code."""
    import sys

    # A stop forwarded while this process still imports and plans must not kill it before it can write its
    # stats: SIGINT/SIGTERM stay pending until generate's stop handler is installed (StopFlag unblocks them).
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
    os.environ.update(env)
    os.setpgrp()  # the terminal's Ctrl-C goes to the parent, which forwards it once
    from relight_stream.log import set_progress_channel, setup_logging

    setup_logging(run.log_level)
    set_progress_channel(lambda msg: channel.put((int(env["RANK"]), *msg)))
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
    from relight_stream.pipeline.recipes import run_generate
    from relight_stream.pipeline.runner import StageSetupError

    try:
        code = run_generate(cfg, run, stages=stages)
    except (ValueError, StageSetupError) as exc:  # a bad run: the message and exit code of the one-process CLI
        logging.getLogger("relight_stream").error("%s", exc)
        code = 2
    except OSError as exc:  # a full disk: the one-process CLI's message and exit code, not a traceback (C4)
        from relight_stream.fileio import disk_full

        if (message := disk_full(exc)) is None:
            raise
        logging.getLogger("relight_stream").error("%s", message)
        code = 1
    channel.close()
    channel.join_thread()
    sys.exit(int(code or 0))


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    log.warning("the parent process %d is gone: stopping after this batch", parent)
    os.kill(os.getpid(), signal.SIGTERM)


class _ProgressRelay:
    """The parent's one progress bar, fed by the workers' ``(rank, n, kept, dropped)`` messages."""

    def __init__(self, channel: Any, total: int | None) -> None:
        from relight_stream.log import progress

        self.channel, self.t0 = channel, time.perf_counter()
        self.bar = progress(total=total, desc="generate")
        self.kept: dict[int, int] = {}
        self.dropped: dict[int, int] = {}

    def drain(self) -> None:
        import queue

        n = 0
        while True:
            try:
                rank, k, kept, dropped = self.channel.get_nowait()
            except (queue.Empty, OSError, EOFError, ValueError):
                break
            n += k
            if kept is not None:
                self.kept[rank], self.dropped[rank] = kept, dropped
        if n:
            kept = sum(self.kept.values())
            el = time.perf_counter() - self.t0
            self.bar.update(n)
            self.bar.set_postfix(kept=kept, dropped=sum(self.dropped.values()), img_s=f"{kept / el:.1f}",
                                 refresh=False)

    def close(self) -> None:
        self.drain()
        self.bar.close()
