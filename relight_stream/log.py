"""Logging, rate-limited drop reporting and the one progress bar (stdlib ``logging`` + tqdm)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections import Counter
from typing import Any, Callable

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


def rank_world() -> tuple[int, int]:
    """(rank, world size) from the variables ``torchrun`` and ``accelerate launch`` set; (0, 1) otherwise."""
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad RANK/WORLD_SIZE: rank={rank} world={world}")
    return rank, world


def cores_per_rank() -> int:
    """The CPU cores this process may use, shared evenly among the ranks of its node (``LOCAL_WORLD_SIZE``)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def pool_threads() -> int:
    """Default size of a decode or encode thread pool: this rank's cores (:func:`cores_per_rank`), at most 8."""
    return max(1, min(8, cores_per_rank()))


def rank_device(device: str) -> str:
    """``auto``/``cuda`` under a multi-process launch -> ``cuda:LOCAL_RANK`` (mod the GPU count), made current;
    anything else unchanged. Without it every rank of a node would land on GPU 0."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    dev = f"cuda:{int(local) % torch.cuda.device_count()}"
    torch.cuda.set_device(dev)
    return dev


def setup_logging(level: str = "INFO", *, log_file: str | None = None) -> None:
    """Configure the root logger once; records are prefixed with host and rank when running distributed."""
    rank, world = rank_world()
    prefix = f"[{socket.gethostname()}:r{rank}] " if world > 1 else ""
    fmt = f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    lvl = getattr(logging, str(level).upper(), None)
    if not isinstance(lvl, int):
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(level=lvl, format=fmt, datefmt="%H:%M:%S", handlers=handlers, force=True)


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log a warning the first time this exact message is seen in the process."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


class DropCounter:
    """Counts per-sample drops by reason and logs them rate-limited: the first of each reason, then every Nth."""

    def __init__(self, every: int = 100, logger: logging.Logger | None = None) -> None:
        self.every = max(1, every)
        self.counts: Counter[str] = Counter()
        self.log = logger or log

    def record(self, reason: str, key: str, detail: str | None = None) -> None:
        self.counts[reason] += 1
        n = self.counts[reason]
        if n == 1 or n % self.every == 0:
            extra = f" ({detail})" if detail else ""
            self.log.warning("dropped %s: %s%s [%d so far]", key, reason, extra, n)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


_PROGRESS_CHANNEL: Callable[[tuple[int, int | None, int | None]], None] | None = None


def set_progress_channel(send: Callable[[tuple[int, int | None, int | None]], None] | None) -> None:
    """Route this process's progress to ``send`` instead of a bar (a worker process of ``generate --workers``;
    its parent shows the one bar). ``send`` receives ``(n_done, kept, dropped)``; ``kept``/``dropped`` are
    ``None`` in an update and running totals in a ``set_postfix``."""
    global _PROGRESS_CHANNEL
    _PROGRESS_CHANNEL = send


class _ChannelBar:
    def __init__(self, send: Callable[[tuple[int, int | None, int | None]], None]) -> None:
        self.send = send

    def update(self, n: int = 1) -> None:
        self.send((int(n), None, None))

    def set_postfix(self, kept: int = 0, dropped: int = 0, **_: Any) -> None:
        self.send((0, int(kept), int(dropped)))

    def close(self) -> None:
        pass


def progress(total: int | None = None, *, desc: str = "", unit: str = "img", **kwargs: Any):
    """The one tqdm bar of a process: off on ranks other than 0 and when stderr is not a terminal; in a worker
    process (:func:`set_progress_channel`) the updates go to the parent's bar."""
    if _PROGRESS_CHANNEL is not None:
        return _ChannelBar(_PROGRESS_CHANNEL)
    from tqdm.auto import tqdm

    rank, _ = rank_world()
    disable = rank != 0 or not sys.stderr.isatty() or os.environ.get("RELIGHT_NO_PROGRESS") == "1"
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)
