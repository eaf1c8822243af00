"""The stage contract (ARCHITECTURE.md §3).

A stage declares the batch fields it ``reads`` and ``writes``; the runner checks them once when the pipeline
is built. ``process`` must not raise for a bad sample: it drops it with a reason code. :func:`per_sample`
runs a per-sample function under that rule, turning an exception into a ``failed`` record and a non-finite
result (or a :class:`NonFiniteOutput` raised by the function) into ``<stage>:nonfinite_output``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from relight_stream.log import cores_per_rank
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

NUM_THREADS = int(os.environ.get("RELIGHT_THREADS", 0)) or cores_per_rank()
"""Sample threads per process: ``RELIGHT_THREADS``, else the usable cores shared among the node's ranks."""

_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


class NonFiniteOutput(FloatingPointError):
    """A model or kernel produced NaN/inf for one sample; :func:`per_sample` records ``<stage>:nonfinite_output``.

    Raise it where a non-finite intermediate would otherwise fail later as a generic error (RELIABILITY C9).

    Attributes:
        field: The output that was not finite (a batch field name such as ``depth_BHW``), the record's detail.
    """

    def __init__(self, field: str, message: str = "") -> None:
        super().__init__(message or f"non-finite {field}")
        self.field = field


class Stage:
    """Base class of a pipeline stage.

    Attributes:
        name: Short name, also the prefix of this stage's drop reasons.
        reads: Batch fields (array names, or ``keys``/``meta``) the stage needs.
        writes: Batch fields the stage adds.
    """

    name: str = "stage"
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    def setup(self) -> None:
        """Load models and allocate buffers; called once before the first batch."""

    def process(self, batch: SampleBatch) -> SampleBatch:
        raise NotImplementedError

    def teardown(self) -> None:
        """Release resources; called once after the last batch, also on errors."""

    def describe(self) -> str:
        """One line for ``--dry-run`` and the start-up log: backend, model, revision."""
        return ""


def check_pipeline(source_writes: tuple[str, ...], stages: list[Stage]) -> None:
    """Check once that every stage's reads are produced upstream.

    Raises:
        ValueError: naming the stage and the missing field.
    """
    have = set(source_writes) | {"keys", "meta"}
    for st in stages:
        missing = [f for f in st.reads if f not in have]
        if missing:
            raise ValueError(f"stage {st.name!r} reads {missing} but nothing upstream writes them (have {sorted(have)})")
        have |= set(st.writes)


def describe_pipeline(source_name: str, source_writes: tuple[str, ...], stages: list[Stage]) -> str:
    """Human-readable pipeline: one line per stage with its reads, writes and backend."""
    lines = [f"  source  {source_name:<14} writes {', '.join(source_writes)}"]
    for st in stages:
        extra = st.describe()
        lines.append(
            f"  stage   {st.name:<14} reads {', '.join(st.reads) or '-'} -> writes {', '.join(st.writes) or '-'}"
            + (f"  [{extra}]" if extra else "")
        )
    return "\n".join(lines)


def is_finite(x: Any) -> bool:
    """True when every element of a NumPy/CuPy/torch array is finite."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        return bool(torch.isfinite(x).all())
    if mod.startswith("cupy"):
        import cupy

        return bool(cupy.isfinite(x).all())
    return bool(np.isfinite(np.asarray(x)).all())


def _pool() -> ThreadPoolExecutor:
    """The process's sample pool, created once: its threads (and their per-thread caches, e.g. the Haar
    cascades) live as long as the process. A forked child (whose copy has no threads) gets its own."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(NUM_THREADS, thread_name_prefix="relight-sample"))
        return _POOL[1]


def _caller_device() -> Callable[[], Any] | None:
    """A context factory that puts a pool thread on the calling thread's CUDA device, or None without CuPy.

    The current CUDA device is per thread: ``rank_device`` sets it in the main thread only, so without this the
    sample threads of rank r would put their CuPy arrays on GPU 0 beside rank r's batch on GPU r.
    """
    if "cupy" not in sys.modules:  # no kernel has run on a GPU in this process
        return None
    from relight_stream.kernels.xp import has_cupy

    if not has_cupy():
        return None
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    return lambda: cupy.cuda.Device(dev)


def per_sample(stage: Stage, batch: SampleBatch, fn: Callable[[int], None], *, check: tuple[str, ...] = (),
               parallel: bool = False) -> None:
    """Run ``fn(i)`` for every kept sample; an exception drops that sample as ``<stage>:error``, a
    :class:`NonFiniteOutput` as ``<stage>:nonfinite_output`` (detail: its field).

    Args:
        stage: The calling stage (its name prefixes the reasons).
        batch: The batch; ``fn`` writes its results into it.
        fn: Work for one sample index. With ``parallel`` it must write only row ``i`` of preallocated arrays
            and ``meta[i]``.
        check: Array names whose row ``i`` must be finite after ``fn``; otherwise ``<stage>:nonfinite_output``.
        parallel: Spread the samples over the process's thread pool (:data:`NUM_THREADS` threads). The heavy work
            (OpenCV, NumPy on whole images) releases the GIL, so a batch uses every core. Drops are applied
            afterwards in index order, so the outcome does not depend on scheduling.
    """
    idx = list(batch.kept())
    errors: dict[int, BaseException] = {}
    on_device = _caller_device() if parallel else None

    def run(i: int) -> None:
        try:
            if on_device is None:
                fn(i)
            else:
                with on_device():
                    fn(i)
        except Exception as exc:  # per-sample errors are recorded below, never raised out of the hot loop
            errors[i] = exc

    if parallel and min(len(idx), NUM_THREADS) > 1:
        list(_pool().map(run, idx))
    else:
        for i in idx:
            run(i)
    for i in idx:
        if i in errors:
            exc = errors[i]
            log.debug("stage %s failed on %s: %r", stage.name, batch.keys[i], exc)
            if isinstance(exc, NonFiniteOutput):
                batch.drop(i, f"{stage.name}:nonfinite_output", failed=True, detail=exc.field)
            else:
                batch.drop(i, f"{stage.name}:error", failed=True, detail=f"{type(exc).__name__}: {exc}")
            continue
        for name in check:
            if name in batch and not is_finite(batch[name][i]):
                batch.drop(i, f"{stage.name}:nonfinite_output", failed=True, detail=name)
                break
