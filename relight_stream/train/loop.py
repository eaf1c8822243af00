"""``relight-stream train``: InstructPix2Pix fine-tuning with accelerate, streaming the generated shards.

Reads triplet shards (or ``cache-latents`` shards) and a base model (``model.py``). Writes under ``OUT``:
``config.yaml`` (resolved config + seed), ``checkpoints/checkpoint-<step>/`` (``checkpoint.py``),
``validation/step-<step>.jpg`` grids, ``final/`` (a diffusers pipeline folder with a model card) and
``stats.json``. One metrics line every ``log_every`` steps: step, loss, lr, grad_norm, samples/s, memory.

Reliability (RELIABILITY.md E1–E8): atomic checkpoints with a ``COMPLETE`` marker, pruned after commit;
``--resume latest`` restores model, optimizer, scheduler, EMA, RNGs and data position; a step whose loss or
gradient norm is not finite is skipped and counted (no checkpoint while a streak lasts) and the run aborts after
``max_nonfinite_steps`` in a row; SIGTERM is all-reduced and every rank saves at the same step boundary, then
the process exits with 143 (requeue); a missing seed is generated, logged and stored.

Multi-process (one process per GPU, or N gloo processes on CPU; tested with 2 CPU processes for every form):

- GPUs: ``torchrun --nproc_per_node N -m relight_stream train SHARDS --out DIR``;
  ``accelerate launch --multi_gpu --num_processes N --no_python relight-stream train SHARDS --out DIR``;
  ``accelerate launch --multi_gpu --num_processes N -m relight_stream.cli train SHARDS --out DIR``.
- CPU: the same commands with ``--device cpu`` before ``train``, e.g. ``torchrun --nproc_per_node 2 -m
  relight_stream --device cpu train …`` or ``accelerate launch --multi_gpu --num_processes 2 --num_machines 1
  --mixed_precision no --dynamo_backend no --no_python relight-stream --device cpu train …``. Keep
  ``--multi_gpu``: it is what makes accelerate start N processes (via torch.distributed.run) — ``accelerate
  launch --cpu`` starts only one; ``--device cpu`` then makes each rank a gloo (MULTI_CPU) process.
- Precision comes from train's ``--mixed-precision`` (default bf16), not accelerate's ``--mixed_precision``. The
  accelerate flags may come from a ``--config_file`` instead (else ``~/.cache/huggingface/accelerate/
  default_config.yaml`` is read when it exists). ``--no_python`` needs ``relight-stream`` on ``PATH``.
- ``stats.json`` has ``world_size`` and a ``ranks`` list in which every rank reports its rank, pid, device,
  distributed type, launcher and the samples it trained on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from relight_stream.config import RunConfig, TrainConfig, config_to_dict, dump_config
from relight_stream.keys import sample_seed
from relight_stream.log import rank_world
from relight_stream.pipeline.engine_batch import is_oom
from relight_stream.train import checkpoint as ckpt
from relight_stream.train.data import (
    ShardStream,
    check_latent_size,
    make_loader,
    read_cache_info,
    resolve_shards,
    shard_format,
    warn_if_upscaled,
)
from relight_stream.train.model import ALIASES, TINY_FLAVORS, load_model, null_text, pick_resolution, resolve_source
from relight_stream.train.setup import (
    EXIT_NONFINITE,
    EXIT_SIGTERM,
    TrainOutOfMemory,
    build_setup,
    memory_mb,
    oom_advice,
)
from relight_stream.train.step import fp16_outcome

log = logging.getLogger(__name__)


class _Stop:
    """SIGTERM/SIGINT flag, acted on at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGTERM
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is not threading.main_thread():
            log.warning("train is not running in the main thread: SIGTERM will not checkpoint")
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        log.warning("received signal %d: will checkpoint at the next step boundary and exit", signum)
        self.requested, self.signum = True, signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _launcher() -> str:
    """Which launcher started this process, from the variables it sets (for stats.json)."""
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        return "accelerate"
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    return "none" if "WORLD_SIZE" not in os.environ else "other"


def _check(cfg: TrainConfig) -> tuple[TrainConfig, list[str], str, Path | None]:
    """Validate the run before any model loads (bad run -> ValueError); returns the config with its resolution
    resolved (given, else the resumed run's, else the model's: logged once), the shards, their format and the
    checkpoint to resume from."""
    if not cfg.out:
        raise ValueError("train: --out is required")
    for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"train: {name} must be >= 1")
    if cfg.model not in TINY_FLAVORS:
        resolve_source(cfg.model)  # an unknown model name fails here, before anything loads
    resume_path = ckpt.find_resume(cfg.resume, Path(cfg.out) / "checkpoints")
    resolution = cfg.resolution
    if resolution is None and resume_path is not None:  # a resumed run keeps its resolution
        resolution = json.loads((resume_path / "train_state.json").read_text()).get("resolution")
    cfg = dataclasses.replace(cfg, resolution=pick_resolution(resolution, cfg.model, what="train"))
    multiple = 64 if cfg.model in ALIASES else 8  # SD's latent side (res / 8) must survive 3 UNet downsamplings
    if cfg.resolution % multiple:
        raise ValueError(f"train: --resolution {cfg.resolution} must be a multiple of {multiple} for {cfg.model}")
    shards = resolve_shards(cfg.shards)
    fmt = shard_format(shards[0])
    info = read_cache_info(shards) if fmt == "latents" else None
    if info is not None:
        if info.get("model") != cfg.model:
            raise ValueError(f"latent cache was made with --model {info.get('model')!r}, not {cfg.model!r}")
        if info.get("resolution") != cfg.resolution:
            raise ValueError(f"the latent cache was made at {info.get('resolution')}², but this run trains at "
                             f"{cfg.resolution}²: pass --resolution {info.get('resolution')} or rerun cache-latents "
                             f"with --resolution {cfg.resolution}")
    if cfg.consistency and fmt == "latents":
        raise ValueError("--consistency needs image shards with input_l1/l2/l12 (latent caches do not keep them)")
    if fmt == "images" and rank_world()[0] == 0:
        warn_if_upscaled(shards, cfg.resolution, what="train")
    return cfg, shards, fmt, resume_path


def run_train(cfg: TrainConfig, run: RunConfig) -> int:
    """Train; returns 0, 128 + signal (143 for SIGTERM: checkpointed, requeue) or ``EXIT_NONFINITE`` (3).

    Runs as one process, or as one rank of a ``torchrun`` / ``accelerate launch`` job (the exact commands for CPU
    and GPUs are in the module docstring); rank and world size come from the launcher's environment.
    """
    cfg, shards, fmt, resume_path = _check(cfg)
    if cfg.fast_dev_run:  # a smoke test: two steps, every metrics line, no checkpoints or validation
        cfg = dataclasses.replace(cfg, max_steps=2, validate_every=0, log_every=1)
    from accelerate import Accelerator

    use_cpu = run.device == "cpu" or not torch.cuda.is_available()
    for kind in SHARDED_LAUNCHES:  # what `accelerate launch --use_<kind>` sets
        if os.environ.get(f"ACCELERATE_USE_{kind}", "false").lower() in ("true", "1"):
            refuse_sharding(kind)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=use_cpu)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        refuse_sharding(accelerator.distributed_type)
        return _train(cfg, run, accelerator, shards=shards, fmt=fmt, resume_path=resume_path, use_cpu=use_cpu)
    finally:
        accelerator.end_training()
        torch.use_deterministic_algorithms(was_deterministic)
        if accelerator.num_processes == 1:  # let a later run in this process choose other settings
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state()
            GradientState._reset_state()


SHARDED_LAUNCHES = ("FSDP", "DEEPSPEED", "MEGATRON_LM")
"""accelerate's ``DistributedType`` values (and ``ACCELERATE_USE_<value>`` variables) that :func:`refuse_sharding`
refuses."""


def refuse_sharding(distributed_type: Any) -> None:
    """Refuse FSDP, DeepSpeed and Megatron launches: data-parallel (DDP) only, for now.

    Their sharded checkpoints, EMA over sharded parameters and the SIGTERM save (RELIABILITY.md E7) have never run
    (accelerate builds FSDP only on GPUs); a clear refusal beats a run that may hang or save an unusable folder.
    ``run_train`` checks the launcher's environment before building the ``Accelerator`` (which, for DeepSpeed,
    would fail first on a missing package) and the built accelerator's type after.
    """
    kind = getattr(distributed_type, "value", str(distributed_type))
    if kind in SHARDED_LAUNCHES:
        raise ValueError(f"train: {kind} launches are not supported yet; use DDP (`accelerate launch` without an "
                         f"FSDP/DeepSpeed config, or `torchrun`): a rank holds the whole UNet with its AdamW and "
                         f"EMA state, about 17 GB for SD1.5 and 52 GB for SDXL before activations")


def _train(cfg: TrainConfig, run: RunConfig, accelerator: Any, *, shards: list[str], fmt: str,
           resume_path: Path | None, use_cpu: bool) -> int:
    from accelerate.utils import broadcast_object_list, gather_object, set_seed

    out = Path(cfg.out)
    rank, world = accelerator.process_index, accelerator.num_processes
    seed = [run.seed if run.seed is not None else secrets.randbelow(2**31)]
    if world > 1:
        broadcast_object_list(seed)
    seed = int(seed[0])
    if resume_path is not None:
        stored = json.loads((resume_path / "train_state.json").read_text())["seed"]
        if run.seed is not None and run.seed != stored:
            log.warning("--seed %d ignored: resuming a run seeded with %d", run.seed, stored)
        seed = stored
    log.info("seed %d%s", seed, " (generated)" if run.seed is None and resume_path is None else "")
    set_seed(seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if accelerator.is_main_process:
        ckpt.clean_stale(out / "checkpoints")
        dump_config(cfg, out / "config.yaml", run=RunConfig(seed=seed, device=run.device, log_level=run.log_level,
                                                             offline=run.offline))
    model = load_model(cfg.model, seed=seed)
    multiple = model.vae_scale * 2 ** (len(model.unet.config.block_out_channels) - 1)
    if cfg.resolution % multiple:
        raise ValueError(f"train: --resolution {cfg.resolution} must be a multiple of {multiple} for {cfg.model}")
    if fmt == "latents":
        check_latent_size(shards, cfg.resolution, model.vae_scale)
    s = build_setup(cfg, model, accelerator, seed=seed, fmt=fmt)

    gen = torch.Generator(device=accelerator.device).manual_seed(sample_seed(seed, f"rank{rank}", "train") >> 1)
    step, data_pos, batches_done, counters = 0, {}, 0, {"nonfinite_total": 0}
    if resume_path is not None:
        state, rank_state = ckpt.load_checkpoint(accelerator, resume_path, world=world, num_workers=cfg.num_workers,
                                                 strict=cfg.strict_resume)
        step, counters = int(state["step"]), dict(state.get("counters", counters))
        if "generator" in rank_state:
            gen.set_state(rank_state["generator"])
        data_pos = {int(k): int(v) for k, v in rank_state.get("data_pos", {}).items()}
        batches_done = int(rank_state.get("batches_done", 0)) if data_pos else 0
    s.null_embeds, s.null_pooled = null_text(model, accelerator.device)
    loss_fn = s.make_loss()
    stream = ShardStream(shards, batch_size=cfg.batch_size, resolution=cfg.resolution, seed=seed, rank=rank,
                         world=world, fmt=fmt, consistency=cfg.consistency, shuffle_buffer=cfg.shuffle_buffer,
                         start=data_pos, start_batch=batches_done)
    batches = iter(make_loader(stream, num_workers=cfg.num_workers, pin_memory=not use_cpu))

    def save(at: int) -> None:
        train_state = {"step": at, "seed": seed, "world_size": world, "num_workers": cfg.num_workers,
                       "counters": counters, "model": cfg.model, "resolution": cfg.resolution}
        ckpt.save_checkpoint(accelerator, out / "checkpoints", at, train_state=train_state,
                             rank_state={"generator": gen.get_state(), "data_pos": dict(data_pos),
                                         "batches_done": batches_done},
                             total_limit=cfg.checkpoints_total_limit)

    losses: list[float] = []
    streak, exit_code, last_saved = 0, 0, -1
    loss_acc = torch.zeros((), device=accelerator.device)
    n_acc, t_log, steps_log, t0, start_step = 0, time.perf_counter(), 0, time.perf_counter(), step
    samples_run, first_keys = 0, []
    with _Stop() as stop:
        while step < cfg.max_steps:
            bad = torch.zeros((), dtype=torch.bool, device=accelerator.device)
            for micro in range(cfg.grad_accum):
                batch = next(batches)
                data_pos[batch["worker"]] = batch["raw_pos"]
                batches_done += 1
                samples_run += len(batch["keys"])
                first_keys = first_keys or list(batch["keys"])
                sync = micro == cfg.grad_accum - 1
                try:
                    with contextlib.nullcontext() if sync else accelerator.no_sync(s.unet):
                        inp = loss_fn.prepare(batch, accelerator.device, gen)
                        with accelerator.autocast():
                            loss, diff = loss_fn(s.unet, inp)
                        bad |= ~torch.isfinite(loss.detach())
                        accelerator.backward(loss / cfg.grad_accum)
                except Exception as exc:  # noqa: BLE001 - out of memory: a clear way out instead of a traceback
                    if not is_oom(exc):
                        raise
                    raise TrainOutOfMemory(oom_advice(cfg, fmt=fmt, step=step + 1, world=world)) from exc
            grad_norm = accelerator.clip_grad_norm_(s.params, cfg.max_grad_norm)
            if cfg.mixed_precision != "fp16":  # under fp16 the grad scaler handles overflowing gradients itself
                bad |= ~torch.isfinite(grad_norm.to(bad.device))
            flags = torch.stack([bad.float(), torch.tensor(float(stop.requested), device=bad.device)])
            nonfinite, stop_now = (accelerator.reduce(flags, "max") if world > 1 else flags).tolist()
            step += 1
            if nonfinite:
                if accelerator.scaler is not None:  # fp16: clip_grad_norm_ unscaled; without update() the next
                    accelerator.scaler.update()     # step's unscale_ raises (and the scale never backs off)
                s.optimizer.zero_grad(set_to_none=True)
                streak += 1
                counters["nonfinite_total"] += 1
                log.warning("step %d: non-finite loss/grad (%d in a row, %d total): skipped; this rank's last "
                            "batch: %s", step, streak, counters["nonfinite_total"], ",".join(batch["keys"][:8]))
                if streak >= cfg.max_nonfinite_steps:
                    log.error("aborting: %d non-finite steps in a row (max_nonfinite_steps)", streak)
                    exit_code = EXIT_NONFINITE
                    break
            else:
                scale = float(accelerator.scaler.get_scale()) if accelerator.scaler is not None else None
                s.optimizer.step()
                s.lr_scheduler.step()  # accelerate's scheduler does not step after a skipped optimizer step
                s.optimizer.zero_grad(set_to_none=True)
                skipped, hopeless = fp16_outcome(accelerator.scaler, scale)
                counters["fp16_overflow_skipped"] = counters.get("fp16_overflow_skipped", 0) + skipped
                if hopeless:  # overflow even at a scale below 1: a real NaN/inf, counted as one
                    streak += 1
                    counters["nonfinite_total"] += 1
                    log.warning("step %d: fp16 gradients non-finite at grad scale %.3g (%d in a row): skipped",
                                step, accelerator.scaler.get_scale(), streak)
                    if streak >= cfg.max_nonfinite_steps:
                        log.error("aborting: %d non-finite steps in a row (max_nonfinite_steps)", streak)
                        exit_code = EXIT_NONFINITE
                        break
                elif not skipped:
                    streak = 0
                    if s.ema is not None:
                        s.ema.step(s.params)
                    loss_acc += diff.detach().float()
                    n_acc += 1
            steps_log += 1
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                mean_loss = (accelerator.reduce(loss_acc, "mean") / max(n_acc, 1)).item() if n_acc else float("nan")
                losses.append(mean_loss)
                dt = time.perf_counter() - t_log
                sps = steps_log * cfg.batch_size * cfg.grad_accum * world / max(dt, 1e-9)
                if accelerator.is_main_process:
                    log.info("step=%d loss=%.5f lr=%.3g grad_norm=%.4g samples/s=%.1f mem_mb=%.0f nonfinite=%d",
                             step, mean_loss, s.lr_scheduler.get_last_lr()[0], float(grad_norm), sps, memory_mb(),
                             counters["nonfinite_total"])
                loss_acc.zero_()
                n_acc, t_log, steps_log = 0, time.perf_counter(), 0
            can_save = streak == 0 and not cfg.fast_dev_run
            if stop_now:
                if can_save:
                    save(step)
                    last_saved = step
                else:
                    log.warning("stopping without a checkpoint (non-finite streak or --fast-dev-run)")
                exit_code = 128 + int(stop.signum) if stop.requested else EXIT_SIGTERM  # another rank's signal
                break
            if can_save and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
                save(step)
                last_saved = step
            if cfg.validate_every and step % cfg.validate_every == 0:
                s.validate(step, out)
    elapsed = time.perf_counter() - t0
    if exit_code == 0 and accelerator.is_main_process:
        s.save_final(out / "final", shards=shards, losses=losses, counters=counters, seed=seed, step=step)
    # Every rank reports what it did (a collective: all ranks leave the loop at the same step), so stats.json
    # shows the launcher really started `world` processes and each of them trained on its own data.
    me = {"rank": rank, "local_rank": accelerator.local_process_index, "world_size": world, "pid": os.getpid(),
          "device": str(accelerator.device), "distributed_type": accelerator.distributed_type.value,
          "launcher": _launcher(), "samples": samples_run, "first_keys": first_keys}
    ranks = gather_object([me]) if world > 1 else [me]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        done = step - start_step
        stats = {"exit_code": exit_code, "step": step, "steps_this_run": done, "seconds": round(elapsed, 3),
                 "samples_per_s": done * cfg.batch_size * cfg.grad_accum * world / max(elapsed, 1e-9),
                 "losses": losses, "seed": seed, "world_size": world, "format": fmt, "last_checkpoint": last_saved,
                 "ranks": ranks, **counters, "config": config_to_dict(cfg)}
        (out / "stats.json").write_text(json.dumps(stats, indent=1))
        log.info("train done: exit %d, step %d, %.1f samples/s, %d non-finite steps skipped", exit_code, step,
                 stats["samples_per_s"], counters["nonfinite_total"])
    return exit_code
