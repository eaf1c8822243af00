"""``relight-stream bench example --example-script PATH``: ``relight-stream train`` against the diffusers example.

The baseline is diffusers' own ``examples/instruct_pix2pix/train_instruct_pix2pix.py`` (it is not in the pip wheel:
pass the path of a copy from the diffusers repository; its sha256 is recorded). Both trainers run as subprocesses
on the same machine with the same settings:

* data: synthetic triplet shards (``train/fixtures.py``) for ours, exported once to parquet with the script's
  default column names (``input_image``, ``edit_prompt``, ``edited_image``) for the script — the README's export —
  with its Arrow cache built before timing; at least ``batch x (N2 + 1)`` samples, so that neither trainer starts a
  new epoch (the script's loader restarts its workers every epoch) inside the timed steps;
* model: one 4-channel base SD folder that both widen to 8 input channels themselves — on the CPU the ``tiny`` model
  (random weights), on CUDA the full-size SD1.5 architecture (random weights; the FLOPs are those of real ones);
  given the SDXL script (``train_instruct_pix2pix_sdxl.py``, recognised by the pipeline it saves), the tiny SDXL
  model with its two text encoders (CPU only);
* resolution, per-device batch, mixed precision (``no`` on the CPU; on CUDA ``bf16`` for the default ``fp32``, else
  ``--precision``), seed, 2 data-loader workers, learning rate and constant schedule, AdamW settings, gradient
  clipping, centre crop, 5 % text / 5 % image conditioning dropout (the same masks), no EMA, no validation, no
  checkpoint before the end.

What still differs is each trainer's own design, and is part of what is measured: the script encodes the empty
prompt every step (ours once), casts the VAE and text encoder to the mixed-precision dtype (ours keeps the text
encoder in fp32), and uses plain AdamW; ours uses fused AdamW, channels-last and TF32 on CUDA, and persistent,
prefetching loader workers. The script logs to tensorboard where it is installed (``tensorboard`` in the summary).

Each trainer runs twice, for ``N1`` and ``N2`` optimizer steps; its step time is
``(wall(N2) - wall(N1)) / (N2 - N1)``, which cancels start-up, model loading, data set-up and the final save (each
run's output folder is deleted after it; a compiled row first runs once unmeasured to fill Inductor's cache).
Rows: the example script; ours from images and from cached latents (``--backend eager`` or ``auto``); ours compiled
from cached latents (``--backend compile``, or ``auto`` on CUDA). ``cache-latents`` is timed separately, start-up
included (a one-off cost, not in the rows). ``peak_rss_mb``: the peak RSS of the trainer process or of any of its
reaped children (loader workers). Each row is logged as JSON when measured. ``meets_speedup`` (issue 7: >= 2x with
cached latents) is given only on CUDA, where the target is defined.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from relight_stream.bench.timing import machine_info
from relight_stream.bench.train import TARGET_SPEEDUP
from relight_stream.config import BenchConfig, RunConfig

log = logging.getLogger(__name__)


def save_base_model(folder: Path, *, full_size: bool, sdxl: bool = False) -> Path:
    """Write a 4-channel base pipeline folder (what ``--pretrained_model_name_or_path`` expects): SD1.5 (full size
    with random weights, or tiny) or, with ``sdxl``, the tiny SDXL model (two text encoders)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from relight_stream.bench.train import sd15_random
    from relight_stream.train.model import build_tiny

    if sdxl and full_size:
        raise ValueError("bench example: the SDXL script is compared with the tiny SDXL model only (no full-size "
                         "random SDXL builder yet)")
    if sdxl:
        m = build_tiny("sdxl", widen=False)
        pipe = StableDiffusionXLPipeline(vae=m.vae, text_encoder=m.text_encoders[0], text_encoder_2=m.text_encoders[1],
                                         tokenizer=m.tokenizers[0], tokenizer_2=m.tokenizers[1], unet=m.unet,
                                         scheduler=m.scheduler)
    else:
        m = sd15_random("cpu", widen=False) if full_size else build_tiny("sd", widen=False)
        pipe = StableDiffusionPipeline(vae=m.vae, text_encoder=m.text_encoders[0], tokenizer=m.tokenizers[0],
                                       unet=m.unet, scheduler=m.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def is_sdxl_script(script: str) -> bool:
    """Whether ``script`` is the SDXL example (``train_instruct_pix2pix_sdxl.py``): it saves the SDXL IP2P pipeline."""
    return "StableDiffusionXLInstructPix2PixPipeline" in Path(script).read_text(errors="replace")


def export_parquet(shards: list[str], out: Path, cache: Path) -> Path:
    """The README's export: our shards as a parquet data set with the example script's default columns."""
    try:
        import datasets
    except ImportError as exc:
        raise ValueError("bench example needs the `datasets` package, as the example script does: "
                         "pip install datasets") from exc

    ds = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train", cache_dir=str(cache))
    ds = ds.select_columns(["input.jpg", "instruction.txt", "target.jpg"]).rename_columns(
        {"input.jpg": "input_image", "instruction.txt": "edit_prompt", "target.jpg": "edited_image"})
    out.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(out / "train.parquet"))
    datasets.load_dataset(str(out), cache_dir=str(cache))  # the Arrow cache the script's load_dataset will reuse
    return out


def timed(cmd: list[str], *, env: dict[str, str], log_file: Path, label: str,
          timeout_s: float = 3600.0) -> tuple[float, float]:
    """Run ``cmd`` to completion; returns (wall seconds, peak RSS in MiB of the process or any of its reaped
    children). Raises on failure or timeout with the tail of its output."""
    t0 = time.perf_counter()
    with open(log_file, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() - t0 > timeout_s:
                    raise TimeoutError(f"{label} ran past {timeout_s:.0f} s")
                time.sleep(0.02)
        except BaseException:  # a timeout or Ctrl-C: do not leave a trainer running
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{label} exited {proc.returncode}; last output:\n{tail}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def _example_cmd(script: str, base: Path, data: Path, out: Path, *, steps: int, res: int, bsz: int, mp: str,
                 workers: int) -> list[str]:
    return [sys.executable, script, "--pretrained_model_name_or_path", str(base), "--dataset_name", str(data),
            "--resolution", str(res), "--center_crop", "--train_batch_size", str(bsz), "--max_train_steps",
            str(steps), "--mixed_precision", mp, "--seed", "0", "--dataloader_num_workers", str(workers),
            "--checkpointing_steps", "1000000", "--output_dir", str(out), "--learning_rate", "5e-05",
            "--lr_warmup_steps", "0", "--conditioning_dropout_prob", "0.05"]


def _ours_cmd(shards: list[str], base: Path, out: Path, conf: Path, *, steps: int, res: int, bsz: int, mp: str,
              compile: bool, device: str = "cpu") -> list[str]:
    cmd = [sys.executable, "-m", "relight_stream", "--device", device, "--seed", "0", "train", *shards, "--out",
           str(out), "--model", str(base), "--resolution", str(res), "--max-steps", str(steps), "--batch-size",
           str(bsz), "--mixed-precision", mp, "--config", str(conf)]
    return cmd + (["--compile"] if compile else [])


def _steps_row(name: str, run_at: Any, steps: tuple[int, int], *, bsz: int, res: int, device: str,
               warm: bool = False, **extra: Any) -> dict[str, Any]:
    """Time ``run_at(N1)`` and ``run_at(N2)``; ``warm``: one unmeasured ``run_at(N1)`` first, so that a cache
    filled by the first run (Inductor's compiled kernels) does not make the two runs' fixed costs differ."""
    if warm:
        run_at(steps[0])
    (w1, m1), (w2, m2) = run_at(steps[0]), run_at(steps[1])
    if w2 <= w1:
        raise RuntimeError(f"{name}: {steps[1]} steps took {w2:.1f} s, {steps[0]} steps {w1:.1f} s: the fixed costs "
                           f"of the two runs differ by more than the steps; measure more steps")
    step_s = (w2 - w1) / (steps[1] - steps[0])
    row = {"name": name, "device": device, "resolution": res, "batch": bsz, "ms": round(step_s * 1e3, 1),
           "samples_per_s": round(bsz / step_s, 2), "wall_s": [round(w1, 1), round(w2, 1)],
           "steps": list(steps), "peak_rss_mb": round(max(m1, m2), 1), **extra}
    log.info("measured %s", json.dumps(row))  # in the log at once: a run cut short still shows its rows
    return row


def bench_example(cfg: BenchConfig, run: RunConfig) -> dict[str, Any]:
    """See the module docstring."""
    if not cfg.example_script:
        why = "no --example-script PATH (a copy of diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py)"
        if cfg.target == "example":  # asked for by name: an error; within `bench all`: skipped with a note
            raise ValueError(f"bench example: {why}")
        log.warning("bench example skipped: %s", why)
        return {"target": "example", "rows": [], "summary": {"skipped": why}}
    script = str(Path(cfg.example_script).expanduser().resolve())
    if not Path(script).is_file():
        raise ValueError(f"bench example: --example-script {cfg.example_script} is not a file")
    cuda = torch.cuda.is_available() and run.device != "cpu"
    device = "cuda" if cuda else "cpu"
    sdxl = is_sdxl_script(script)
    if sdxl and cuda:
        raise ValueError("bench example: the SDXL script is compared with the tiny SDXL model on the CPU only (no "
                         "full-size random SDXL builder yet): add --device cpu")
    res = 256 if cuda else (64 if cfg.tiny else 128)
    bsz = cfg.batch_sizes[0] if cfg.batch_sizes else (32 if cuda else 8)
    steps = (2, 6) if cfg.tiny else ((20, 150) if cuda else (5, 30))  # CUDA: an eager call fits a 10-minute slot
    mp = "no" if not cuda else {"fp32": "bf16"}.get(cfg.precision, cfg.precision)
    workers, per_shard = 2, 64
    num_samples = -(-bsz * (steps[1] + 1) // per_shard) * per_shard
    backend = cfg.backend if cfg.backend in ("eager", "compile") else ("all" if cuda else "eager")
    runs = {"eager": [("images", False), ("latents", False)], "compile": [("latents", True)],
            "all": [("images", False), ("latents", False), ("latents", True)]}[backend]
    from relight_stream.train.fixtures import write_synthetic_shards

    with tempfile.TemporaryDirectory(prefix="bench-example-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_DATASETS_CACHE": str(work / "hf-cache"), "HF_HOME": str(work / "hf-home")}
        if not cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the script has no --device: keep both trainers off a GPU
        shards = write_synthetic_shards(work / "shards", num_samples=num_samples, per_shard=per_shard,
                                        resolution=res)
        data = export_parquet(shards, work / "hf", work / "hf-cache")
        base = save_base_model(work / "base", full_size=cuda, sdxl=sdxl)
        conf = work / "ours.yaml"
        conf.write_text(yaml.safe_dump({"ema": False, "num_workers": workers, "checkpoint_every": 10**6,
                                        "validate_every": 0, "text_dropout": 0.05, "image_dropout": 0.05}))
        rows = []

        def trainer_run(cmd: list[str], out: Path, label: str) -> tuple[float, float]:
            try:
                return timed(cmd, env=env, log_file=work / f"{out.name}.log", label=label)
            finally:
                shutil.rmtree(out, ignore_errors=True)  # full size: GBs per run

        def example_at(k: int) -> tuple[float, float]:
            out = work / "example"
            cmd = _example_cmd(script, base, data, out, steps=k, res=res, bsz=bsz, mp=mp, workers=workers)
            return trainer_run(cmd, out, "the example script")

        rows.append(_steps_row(f"diffusers example script{' (SDXL)' if sdxl else ''} (images)", example_at, steps,
                               bsz=bsz, res=res, device=device, trainer="example", mode="images", compiled=False))
        cache_s, _ = timed([sys.executable, "-m", "relight_stream", "--device", device, "cache-latents", *shards,
                            "--out", str(work / "latents"), "--model", str(base), "--resolution", str(res)],
                           env=env, log_file=work / "cache.log", label="relight-stream cache-latents")
        inputs_of = {"images": shards, "latents": [str(p) for p in sorted((work / "latents").glob("shard-*.tar"))]}
        for mode, comp in runs:
            def ours_at(k: int, inputs: list[str] = inputs_of[mode], comp: bool = comp) -> tuple[float, float]:
                out = work / "ours"
                cmd = _ours_cmd(inputs, base, out, conf, steps=k, res=res, bsz=bsz, mp=mp, compile=comp,
                                device=device)
                return trainer_run(cmd, out, "relight-stream train")

            name = f"relight-stream train{' SDXL' if sdxl else ''} ({mode}{', compiled' if comp else ''})"
            try:
                rows.append(_steps_row(name, ours_at, steps, bsz=bsz, res=res, device=device, warm=comp,
                                       trainer="ours", mode=mode, compiled=comp))
            except (RuntimeError, TimeoutError) as exc:  # keep the rows measured so far; say which failed and why
                log.error("%s", exc)
                rows.append({"name": name, "device": device, "resolution": res, "batch": bsz, "error": str(exc)})
    base_sps = rows[0]["samples_per_s"]
    ours = [row for row in rows[1:] if "samples_per_s" in row]
    for row in ours:
        row["speedup_vs_example"] = round(row["samples_per_s"] / base_sps, 2)
    if not ours:
        raise RuntimeError(f"bench example: no row of ours was measured: {[r.get('error') for r in rows[1:]]}")
    best = max(ours, key=lambda r: r["samples_per_s"])
    summary = {"baseline_samples_per_s": base_sps, "best": best["name"],
               "speedup_vs_example": best["speedup_vs_example"],
               "meets_speedup": best["speedup_vs_example"] >= TARGET_SPEEDUP if cuda else None,
               "cache_latents_wall_s": round(cache_s, 1), "samples": num_samples,
               "model": "tiny-sdxl" if sdxl else ("sd15-random" if cuda else "tiny"), "precision": mp,
               "example_script": script,
               "example_script_sha256": hashlib.sha256(Path(script).read_bytes()).hexdigest(),
               "tensorboard": importlib.util.find_spec("tensorboard") is not None, "dataloader_workers": workers}
    return {"target": "example", "rows": rows, "summary": summary, "machine": machine_info(),
            "columns": ["name", "device", "resolution", "batch", "ms", "samples_per_s", "speedup_vs_example",
                        "peak_rss_mb"]}
