"""The streaming loop over stages: batches in, stages, a sink out (ARCHITECTURE.md §3; STYLE.md 2.2 f).

Reads an iterator of :class:`~relight_stream.sample.SampleBatch` (normally
:func:`relight_stream.pipeline.decode.decode_batches`); runs each batch through the stages and hands it to a sink
(a callable; the shard writer of ``generate``, a scores table for ``filter``). Writes nothing itself; it returns
:class:`RunStats` (ok/skipped/failed counts, drops by reason, per-stage ms per batch, samples/s, wall time).

* :func:`~relight_stream.pipeline.stage.check_pipeline` runs once before anything is set up.
* The source iterator runs in a background thread behind a bounded queue (:func:`prefetch`), so decoding the next
  batches overlaps the stages' compute while memory stays bounded (``depth`` batches).
* A stage is skipped for a batch with no kept samples. Every dropped sample is counted once in a
  :class:`~relight_stream.log.DropCounter` (rate-limited warnings) before the sink sees the batch; the sink
  receives all samples (kept and dropped), so it can record every input.
* The one progress bar (:func:`relight_stream.log.progress`) advances at the sink, with kept/dropped and img/s.
* ``should_stop()`` (e.g. a SIGTERM flag) is checked between batches: the loop stops taking work and returns with
  ``RunStats.interrupted`` set. Stages are torn down on every exit path.
* With ``sink_depth`` > 0 the sink runs in its own thread (:class:`SinkThread`), one or more batches behind the
  stages; the counts and the bar then run that far ahead of what is written.

Example::

    batches = decode_batches(plan_items, cfg.decode, seed=seed, dali=resolve_dali(cfg.decode))
    stats = run_stages(batches, stages, sink, source_writes=("rgb_BHW3",))
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from relight_stream.log import DropCounter, progress
from relight_stream.pipeline.stage import Stage, check_pipeline
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

#: The fields the decode source writes (for :func:`check_pipeline`).
DECODE_WRITES: tuple[str, ...] = ("rgb_BHW3",)


@dataclass
class RunStats:
    """Counters of one ``run_stages`` call (JSON-able through :meth:`as_dict`)."""

    ok: int = 0
    skipped: int = 0
    failed: int = 0
    batches: int = 0
    wall_s: float = 0.0
    source_wait_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    sink_s: float = 0.0
    sink_wait_s: float = 0.0
    drops: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def inputs(self) -> int:
        return self.ok + self.skipped + self.failed

    def as_dict(self) -> dict[str, Any]:
        n = max(1, self.batches)
        return {
            "inputs": self.inputs, "ok": self.ok, "skipped": self.skipped, "failed": self.failed,
            "batches": self.batches, "wall_s": round(self.wall_s, 3),
            "samples_per_s": round(self.ok / self.wall_s, 2) if self.wall_s > 0 else 0.0,
            "inputs_per_s": round(self.inputs / self.wall_s, 2) if self.wall_s > 0 else 0.0,
            "source_wait_ms_per_batch": round(1e3 * self.source_wait_s / n, 2),
            "stage_ms_per_batch": {k: round(1e3 * v / n, 2) for k, v in self.stage_s.items()},
            "sink_ms_per_batch": round(1e3 * self.sink_s / n, 2),
            "sink_wait_ms_per_batch": round(1e3 * self.sink_wait_s / n, 2),
            "drops": dict(sorted(self.drops.items())), "interrupted": self.interrupted,
        }


_END = object()


class StageSetupError(RuntimeError):
    """A stage's ``setup()`` failed (a model that cannot load): the whole run stops, no batch is retried."""


def prefetch(source: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate ``source`` in a daemon thread behind a queue of at most ``depth`` items.

    Exceptions of the source are re-raised in the consumer. Closing the returned generator stops the producer at
    its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for x in source:
                while not stop.is_set():
                    try:
                        q.put(("item", x), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", _END))
        except BaseException as exc:  # handed to the consumer
            q.put(("error", exc))
        finally:
            close = getattr(source, "close", None)
            if stop.is_set() and close is not None:
                try:
                    close()
                except Exception:
                    pass

    t = threading.Thread(target=produce, name="prefetch", daemon=True)
    t.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)


class SinkThread:
    """Calls ``sink(batch)`` in order in a background thread, behind a queue of at most ``depth`` batches.

    ``put`` blocks while the queue is full (back-pressure) and re-raises the sink's first error; after an error
    the thread takes and discards further batches, so ``put`` never blocks for good. ``close`` lets the thread
    finish every batch handed over (the sink sees exactly what a synchronous call would have seen before the
    error or the end) and joins it.
    """

    def __init__(self, sink: Callable[[SampleBatch], None], depth: int = 1) -> None:
        self.sink = sink
        self.error: BaseException | None = None
        self.busy_s = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._t = threading.Thread(target=self._run, name="sink", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            batch = self._q.get()
            if batch is _END:
                return
            if self.error is not None:
                continue
            t0 = time.perf_counter()
            try:
                self.sink(batch)
            except BaseException as exc:  # handed to the producer at its next put / at close
                self.error = exc
            self.busy_s += time.perf_counter() - t0

    def put(self, batch: SampleBatch) -> None:
        self.raise_error()
        self._q.put(batch)

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if not self._t.is_alive():
            return
        self._q.put(_END)
        interrupted = False
        while self._t.is_alive():  # a Ctrl-C here must not leave the thread writing while the caller aborts
            try:
                self._t.join()
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt


def run_stages(
    batches: Iterable[SampleBatch],
    stages: list[Stage],
    sink: Callable[[SampleBatch], None],
    *,
    source_writes: tuple[str, ...] = DECODE_WRITES,
    total: int | None = None,
    drops: DropCounter | None = None,
    depth: int = 2,
    should_stop: Callable[[], bool] | None = None,
    desc: str = "",
    sink_depth: int = 0,
) -> RunStats:
    """Run every batch through ``stages`` and hand it to ``sink`` (see the module docstring).

    Args:
        batches: Source of batches (consumed in a background thread).
        stages: Stages in order; ``setup`` before the first batch, ``teardown`` always.
        sink: Receives every batch after the stages (kept and dropped samples).
        source_writes: Fields the source provides, for the pipeline check.
        total: Number of samples expected, for the progress bar.
        drops: Counter to record drops in (a fresh one by default).
        depth: Prefetch queue depth in batches.
        should_stop: Polled between batches; ``True`` stops the loop (batches already handed to the sink are
            still written).
        desc: Progress-bar label.
        sink_depth: 0 calls the sink in the loop; N > 0 runs it in a :class:`SinkThread` behind N batches, so
            encoding and writing batch i overlap the stages of batch i+1 (``generate``: the GPU keeps working
            while the CPU encodes). A stage error still reaches the caller after every earlier batch is written.

    Raises:
        ValueError: a stage reads a field nothing upstream writes (before any setup).
    """
    check_pipeline(source_writes, stages)
    drops = drops or DropCounter(logger=log)
    stats = RunStats(stage_s={st.name: 0.0 for st in stages})
    t0 = time.perf_counter()
    ready: list[Stage] = []
    bar = progress(total=total, desc=desc)
    src = prefetch(batches, depth)
    writer = SinkThread(sink, sink_depth) if sink_depth > 0 else None
    try:
        for st in stages:
            try:
                st.setup()
            except Exception as exc:
                raise StageSetupError(f"setup of stage {st.name!r} failed: {exc}") from exc
            ready.append(st)
        while True:
            if should_stop is not None and should_stop():
                stats.interrupted = True
                break
            tw = time.perf_counter()
            batch = next(src, None)
            stats.source_wait_s += time.perf_counter() - tw
            if batch is None:
                break
            for st in stages:
                if batch.num_kept == 0:
                    break
                ts = time.perf_counter()
                batch = st.process(batch)
                stats.stage_s[st.name] += time.perf_counter() - ts
            for i in range(len(batch)):
                if not batch.keep_B[i]:
                    drops.record(batch.drop_reason[i] or "unknown", batch.keys[i], batch.meta[i].get("drop_detail"))
            ts = time.perf_counter()
            if writer is None:
                sink(batch)
                stats.sink_s += time.perf_counter() - ts
            else:
                writer.put(batch)
                stats.sink_wait_s += time.perf_counter() - ts
            stats.batches += 1
            n_ok = batch.num_kept
            n_failed = int((~batch.keep_B & batch.failed_B).sum())
            stats.ok += n_ok
            stats.failed += n_failed
            stats.skipped += len(batch) - n_ok - n_failed
            bar.update(len(batch))
            el = time.perf_counter() - t0
            bar.set_postfix(kept=stats.ok, dropped=stats.skipped + stats.failed,
                            img_s=f"{stats.ok / el:.1f}" if el > 0 else "-", refresh=False)
        if writer is not None:
            writer.close()
            writer.raise_error()
    finally:
        src.close()
        if writer is not None:
            writer.close()  # on an error too: the batches before it are written, as without the thread
            stats.sink_s = writer.busy_s
        for st in reversed(ready):
            try:
                st.teardown()
            except Exception:
                log.exception("teardown of stage %s failed", st.name)
        bar.close()
        stats.wall_s = time.perf_counter() - t0
        stats.drops = drops.as_dict()
    return stats
