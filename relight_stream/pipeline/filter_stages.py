"""The filter's scoring stages and the CPU threads they run with.

Reads a :class:`~relight_stream.config.FilterConfig`; produces the list of scoring stages for ``cfg.scorer``
(photometric :mod:`~relight_stream.pipeline.lighting_score` and/or CLIP :mod:`~relight_stream.pipeline.clip_filter`),
and sets torch's CPU intra-op thread count so that a CLIP model on a CPU leaves ``decode workers`` cores to decoding.
Used by :func:`relight_stream.pipeline.filter_run.run_filter` and the ``filter`` benchmark.
"""

from __future__ import annotations

import logging
import os

from relight_stream.config import FilterConfig, RunConfig
from relight_stream.log import cores_per_rank, pool_threads
from relight_stream.pipeline.stage import Stage

log = logging.getLogger(__name__)


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
