"""``relight-stream bench train``: training throughput (samples/s) and peak memory of our InstructPix2Pix step.

Rows (each times whole optimizer steps of the real ``train/step.py`` loss after warm-up; GPU timings synchronised):

* CPU, tiny model: eager vs ``torch.compile`` (per UNet block) x images (VAE + text encoder every step) vs cached
  latents, plus ``example``: the diffusers example script's step (images, fp32 weights, plain AdamW, no
  compile/channels-last) as the baseline.
* CUDA (when present): the full-size SD1.5 IP2P UNet (8-channel ``conv_in``, random weights — the FLOPs are those
  of real weights) at 256² and 512², cached latents, bf16, fused AdamW, channels-last, compiled blocks; and the
  example-script baseline (full-size random VAE + CLIP-L text encoder, fp16 autocast + grad scaler) at the same
  resolution and batch. Targets (issue 7): >= 430 samples/s at 256², >= 115 at 512², >= 2x the baseline.

``peak_mem_mb`` is the peak allocated GPU memory of the row on CUDA; on the CPU the peak RSS of the row (from just
before its first step, so the model's weights count; ``peak_host_scope: "row"``), or, where the peak RSS cannot be
reset (no writable ``/proc/self/clear_refs``), the process's peak so far (``"process"``, monotonic over rows).
``first_step_s`` includes compilation (Inductor's cache makes reruns much faster).

``cfg.tiny``: CPU tiny model at 32², eager only, two repeats (seconds; used by the tests). ``cfg.backend``:
``eager`` or ``compile`` restricts the rows; ``auto`` runs both. ``cfg.batch_sizes`` overrides the batch.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from typing import Any, Callable

import torch

from relight_stream.bench.timing import machine_info, measure, peak_host_mb, peak_host_scope, reset_peak_host
from relight_stream.config import BenchConfig, RunConfig
from relight_stream.train.model import IP2PModel, build_tiny, null_text, widen_conv_in
from relight_stream.train.setup import prepare_unet
from relight_stream.train.step import LossFn

log = logging.getLogger(__name__)
TARGETS = {256: 430.0, 512: 115.0}
TARGET_SPEEDUP = 2.0


def sd15_random(device: Any, *, widen: bool = True) -> IP2PModel:
    """Full-size SD1.5 parts from their configs with random weights (UNet widened to 8 channels unless not
    ``widen``)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from relight_stream.train.model import clip_tokenizer

    text_cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                              num_hidden_layers=12, max_position_embeddings=77, bos_token_id=49406,
                              eos_token_id=49407, pad_token_id=49407)
    with torch.device(device):  # initialise on the device: random init of 1 B parameters is slow on the host
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        unet = widen_conv_in(unet) if widen else unet
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=512)
        text = CLIPTextModel(text_cfg)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    return IP2PModel(kind="sd", unet=unet, vae=vae, text_encoders=[text], tokenizers=[clip_tokenizer()],
                     scheduler=sched, source="sd15-random")


def _batch(model: IP2PModel, mode: str, bsz: int, res: int, device: Any) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    if mode == "images":
        img = lambda: torch.randint(0, 256, (bsz, 3, res, res), generator=g, dtype=torch.uint8)  # noqa: E731
        return {"input": img(), "target": img(), "instruction": ["warm light from the left"] * bsz}
    r = res // model.vae_scale
    dim = model.unet.config.cross_attention_dim
    return {"cond": torch.randn(bsz, 4, r, r, generator=g).to(device),
            "moments": torch.randn(bsz, 8, r, r, generator=g).to(device),
            "embeds": torch.randn(bsz, 77, dim, generator=g).to(device)}


def make_step(model: IP2PModel, *, mode: str, bsz: int, res: int, device: Any, precision: str, compile: bool,
              example: bool = False) -> Callable[[], None]:
    """One optimizer step as a closure. ``example``: the diffusers example script's choices instead of ours."""
    for part in (model.vae, *model.text_encoders):
        part.requires_grad_(False).eval()
    cuda = torch.device(device).type == "cuda"
    if example:  # the script casts the frozen parts to the mixed-precision dtype and keeps the UNet in fp32
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if dtype is not None:
            model.vae.to(dtype)
            model.text_encoders[0].to(dtype)
    else:
        prepare_unet(model.unet, device=device, gradient_checkpointing=False, compile=compile)
    unet = model.unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda and not example)
    null, _ = null_text(model, device)
    fn = LossFn(model, resolution=res, text_dropout=0.05, image_dropout=0.05, null_embeds=null, null_pooled=None,
                vae_autocast=precision == "bf16" and not example)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(enabled=amp is torch.float16 and cuda)
    gen = torch.Generator(device=device).manual_seed(0)
    batch = _batch(model, mode, bsz, res, device)

    def step() -> None:
        inp = fn.prepare(batch, device, gen)
        ctx = torch.autocast(torch.device(device).type, dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            loss, _ = fn(unet, inp)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def _row(name: str, step: Callable[[], None], *, bsz: int, res: int, device: Any, warmup: int, repeats: int,
         **extra: Any) -> dict[str, Any]:
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_host()
    t0 = time.perf_counter()
    step()  # first call: compile / allocator warm-up, timed separately
    if cuda:
        torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    t = measure(step, warmup=warmup, repeats=repeats)
    mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_host_mb()
    scope = {} if cuda else {"peak_host_scope": peak_host_scope("row")}
    return {"name": name, "device": "cuda" if cuda else "cpu", "resolution": res, "batch": bsz,
            "ms": round(t["median_ms"], 2), "samples_per_s": round(bsz / (t["median_ms"] / 1e3), 2),
            "first_step_s": round(first_s, 2), "peak_mem_mb": round(mem, 1), **scope, **extra}


def bench_train(cfg: BenchConfig, run: RunConfig) -> dict[str, Any]:
    """See the module docstring."""
    compiles = {"eager": [False], "compile": [True]}.get(cfg.backend, [False] if cfg.tiny else [False, True])
    repeats, warmup = (2, 1) if cfg.tiny else (cfg.repeats, cfg.warmup + 1)
    rows: list[dict[str, Any]] = []
    res = 32 if cfg.tiny else 64
    bsz = cfg.batch_sizes[0] if cfg.batch_sizes else (2 if cfg.tiny else 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        step: Callable[[], None] | None = None
        for mode in ("images", "latents"):
            for comp in compiles:
                step = None  # the previous row's model must not linger in the next row's peak RSS
                gc.collect()
                step = make_step(build_tiny("sd"), mode=mode, bsz=bsz, res=res, device="cpu", precision="fp32",
                                 compile=comp)
                rows.append(_row(f"tiny {mode} {'compiled' if comp else 'eager'}", step, bsz=bsz, res=res,
                                 device="cpu", warmup=warmup, repeats=repeats, model="tiny", mode=mode, compiled=comp))
        step = None
        gc.collect()
        step = make_step(build_tiny("sd"), mode="images", bsz=bsz, res=res, device="cpu", precision="fp32",
                         compile=False, example=True)
        rows.append(_row("tiny example-script baseline", step, bsz=bsz, res=res, device="cpu", warmup=warmup,
                         repeats=repeats, model="tiny", mode="images", compiled=False))
    finally:
        torch.set_num_threads(threads)
    summary: dict[str, Any] = {}
    if torch.cuda.is_available() and run.device != "cpu" and not cfg.tiny:  # pragma: no cover - GPU only
        summary = _bench_sd15_cuda(cfg, rows, compiles, warmup=warmup, repeats=repeats)
    else:
        summary["sd15_cuda"] = "skipped: no CUDA device" if not cfg.tiny else "skipped: --tiny"
    return {"target": "train", "rows": rows, "summary": summary, "machine": machine_info(),
            "columns": ["name", "device", "resolution", "batch", "ms", "samples_per_s", "first_step_s",
                        "peak_mem_mb"]}


def _bench_sd15_cuda(cfg: BenchConfig, rows: list[dict[str, Any]], compiles: list[bool], *, warmup: int,
                     repeats: int) -> dict[str, Any]:  # pragma: no cover - GPU only
    summary: dict[str, Any] = {}
    batches = {256: 64, 512: 32}
    for res, bsz in batches.items():
        bsz = cfg.batch_sizes[0] if cfg.batch_sizes else bsz
        best = 0.0
        for comp in compiles:
            step = make_step(sd15_random("cuda"), mode="latents", bsz=bsz, res=res,
                             device="cuda", precision="bf16", compile=comp)
            row = _row(f"sd15 latents bf16 {'compiled' if comp else 'eager'}", step, bsz=bsz, res=res,
                       device="cuda", warmup=warmup, repeats=repeats, model="sd15-random", mode="latents",
                       compiled=comp)
            rows.append(row)
            best = max(best, row["samples_per_s"])
            del step
            torch.cuda.empty_cache()
        step = make_step(sd15_random("cuda"), mode="images", bsz=bsz, res=res, device="cuda",
                         precision="fp16", compile=False, example=True)
        base = _row("sd15 example-script baseline (images, fp16)", step, bsz=bsz, res=res, device="cuda",
                    warmup=warmup, repeats=repeats, model="sd15-random", mode="images", compiled=False)
        rows.append(base)
        del step
        torch.cuda.empty_cache()
        speedup = best / base["samples_per_s"]
        summary[f"sd15_{res}"] = {"best_samples_per_s": best, "target_samples_per_s": TARGETS[res],
                                  "meets_target": best >= TARGETS[res], "baseline_samples_per_s": base["samples_per_s"],
                                  "speedup_vs_example": round(speedup, 2), "meets_speedup": speedup >= TARGET_SPEEDUP}
    return summary
