"""Engine calls over a batch's kept samples that survive running out of GPU memory (RELIABILITY.md C8).

The neural backends of the generate stages (the SAM2 segmenter in :mod:`segment`, the depth engine in
:mod:`geometry`) run their engine on every kept sample of a batch at once. :func:`call_in_chunks` does that
through two caller callbacks: ``call(chunk)`` runs the engine on the batch rows ``chunk`` (a list of batch
indices) and returns its result; ``on_result(chunk, result)`` stores that result (rows ``chunk`` of the stage's
arrays, ``meta``). It reads and writes nothing of the batch itself except the drops it records:

* an out-of-memory error (``torch.cuda.OutOfMemoryError``, or a ``RuntimeError`` whose message says
  "out of memory") empties the CUDA cache, halves the chunk and retries each half, down to a single sample; a
  single sample that still runs out of memory is dropped as ``<stage>:oom`` (failed) and every other sample is
  processed normally;
* any other exception drops that chunk's samples as ``<stage>:error`` (failed) and is logged — never raised, so
  the shard still commits. On the first call the chunk is the whole batch, as before this helper existed.

Each step-down is logged once per stage and chunk size (:func:`relight_stream.log.warn_once`).
"""

from __future__ import annotations

import logging
import sys
from collections import deque
from typing import Any, Callable

from relight_stream.log import warn_once
from relight_stream.pipeline.stage import Stage
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)


def is_oom(exc: BaseException) -> bool:
    """True for a GPU out-of-memory error: ``torch.cuda.OutOfMemoryError`` or a ``RuntimeError`` saying so."""
    torch = sys.modules.get("torch")
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_cuda_cache() -> None:
    """Return the CUDA caching allocator's free blocks to the driver (no-op without torch or CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def call_in_chunks(stage: Stage, batch: SampleBatch, indices: list[int], call: Callable[[list[int]], Any], *,
                   on_result: Callable[[list[int], Any], None]) -> list[int]:
    """Run ``call`` over ``indices`` (batch rows), halving the chunk on out-of-memory, and store each result.

    Args:
        stage: The calling stage; its name prefixes the drop reasons (``<stage>:oom``, ``<stage>:error``).
        batch: The batch; samples that cannot be processed are dropped in it (``failed=True``, with a detail).
        indices: Batch rows to process, in order (usually the kept ones).
        call: ``call(chunk) -> result`` runs the engine on rows ``chunk``; first called with all of ``indices``.
        on_result: ``on_result(chunk, result)`` stores the result of a successful ``call(chunk)``.

    Returns:
        The rows whose results were stored, in the order they were processed.
    """
    pending: deque[list[int]] = deque([list(indices)] if indices else [])
    done: list[int] = []
    while pending:
        chunk = pending.popleft()
        error: str | None = None
        oom = False
        try:
            on_result(chunk, call(chunk))
        except Exception as exc:  # per-chunk failures are recorded below, never raised out of the batch loop
            oom, error = is_oom(exc), f"{type(exc).__name__}: {exc}"
        if error is None:
            done += chunk
            continue
        # Retry outside the ``except`` block: its traceback (and the tensors its frames hold) is released by now.
        if not oom:
            log.warning("%s engine failed on %d sample(s): %s", stage.name, len(chunk), error)
            for i in chunk:
                batch.drop(i, f"{stage.name}:error", failed=True, detail=error)
            continue
        free_cuda_cache()
        if len(chunk) > 1:
            half = (len(chunk) + 1) // 2
            warn_once(log, f"{stage.name}: engine out of memory on {len(chunk)} samples; "
                           f"retrying in chunks of {half}")
            pending.extendleft([chunk[half:], chunk[:half]])  # extendleft reverses: first half runs first
        else:
            warn_once(log, f"{stage.name}: engine out of memory on a single sample; dropping it as {stage.name}:oom")
            batch.drop(chunk[0], f"{stage.name}:oom", failed=True, detail=error)
    return done
