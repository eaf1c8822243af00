"""Training setup around the model: frozen parts, UNet speed options, optimizer, EMA, validation, final save.

Reads a loaded :class:`~relight_stream.train.model.IP2PModel`; writes ``validation/step-<step>.jpg`` and the
``final/`` pipeline folder (with the model card from ``card.py``).

Speed options: SDPA attention (``AttnProcessor2_0``), channels-last, TF32 on CUDA, fused AdamW on CUDA,
gradient checkpointing, and ``torch.compile`` applied per UNet block (down, mid and up blocks; torchtitan's
``apply_compile``), which keeps compile time and graph breaks local and leaves state-dict keys unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relight_stream.config import TrainConfig
from relight_stream.train.model import IP2PModel
from relight_stream.train.step import LossFn

log = logging.getLogger(__name__)
EXIT_SIGTERM = 143
EXIT_NONFINITE = 3


def memory_mb() -> float:
    """Peak GPU memory allocated (CUDA) or peak host RSS, in MiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    from relight_stream.bench.timing import peak_host_mb

    return peak_host_mb()


class TrainOutOfMemory(RuntimeError):
    """The GPU ran out of memory in a training step; the message says what to change (the CLI exits 1)."""


def oom_advice(cfg: Any, *, fmt: str, step: int, world: int) -> str:
    """What to change after a CUDA out-of-memory error in training step ``step`` (1-based), cheapest first."""
    total = torch.cuda.get_device_properties(0).total_memory / 2**20 if torch.cuda.is_available() else float("nan")
    tips = []
    if cfg.batch_size > 1:
        tips.append(f"--batch-size {cfg.batch_size // 2} with `grad_accum: {cfg.grad_accum * 2}` (the same effective "
                    f"batch of {cfg.batch_size * cfg.grad_accum * world})")
    if not cfg.gradient_checkpointing:
        tips.append("`gradient_checkpointing: true` (about 30 % slower, much less activation memory)")
    if fmt == "images":
        tips.append("`relight-stream cache-latents` first, then train on the latent shards (no VAE or text encoder "
                    "work during training)")
    if cfg.mixed_precision == "no":
        tips.append("--mixed-precision bf16")
    if cfg.ema:
        tips.append("`ema: false` (the EMA copy holds 4 bytes a parameter)")
    return (f"train: out of GPU memory in step {step} (batch {cfg.batch_size} per GPU at {cfg.resolution}², "
            f"{fmt}; peak {memory_mb():.0f} MiB of {total:.0f} MiB). Checkpoints already written are intact: resume "
            f"with --resume latest after one of: " + "; ".join(tips or ["a smaller --resolution"]))


def compile_blocks(unet: Any) -> int:
    """``torch.compile`` each down/mid/up block of a diffusers UNet in place; returns how many."""
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for block in blocks:
        if block is not None:
            block.compile()
    return len([b for b in blocks if b is not None])


def prepare_unet(unet: Any, *, device: Any, gradient_checkpointing: bool, compile: bool) -> Any:
    """Apply the speed options (see the module docstring) to a UNet in place."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unet.to(memory_format=torch.channels_last)  # cuDNN and oneDNN convolutions (CPU: 6-16 % per tiny step)
    if compile:
        log.info("torch.compile: %d UNet blocks", compile_blocks(unet))
    return unet


@dataclass
class TrainSetup:
    """The prepared training objects (``unet`` may be DDP-wrapped; ``params`` are its trainable parameters)."""

    cfg: TrainConfig
    model: IP2PModel
    accelerator: Any
    unet: Any
    params: list[torch.Tensor]
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    seed: int
    null_embeds: Any = None
    null_pooled: Any = None
    val_samples: list[dict[str, Any]] = field(default_factory=list)

    def make_loss(self) -> LossFn:
        cfg = self.cfg
        # The VAE runs under autocast only for bf16: an fp16 VAE produces NaN latents (SDXL; diffusers #7188).
        return LossFn(self.model, resolution=cfg.resolution, text_dropout=cfg.text_dropout,
                      image_dropout=cfg.image_dropout, null_embeds=self.null_embeds, null_pooled=self.null_pooled,
                      consistency_weight=cfg.consistency_weight if cfg.consistency else 0.0,
                      vae_autocast=cfg.mixed_precision == "bf16")

    def validate(self, step: int, out: Path) -> None:
        """Write a grid (input | output | target) for a few fixed samples, on rank 0, with the EMA weights."""
        if self.accelerator.is_main_process and self.val_samples:
            from relight_stream.train.infer import validation_grid

            unet = self.accelerator.unwrap_model(self.unet)
            if self.ema is not None:
                self.ema.store(self.params)
                self.ema.copy_to(self.params)
            try:
                validation_grid(self.model, unet, self.val_samples, out / "validation" / f"step-{step:06d}.jpg",
                                resolution=self.cfg.resolution, seed=self.seed)
            finally:
                if self.ema is not None:
                    self.ema.restore(self.params)
                unet.train()
        self.accelerator.wait_for_everyone()

    def save_final(self, out: Path, **info: Any) -> None:
        """Save the EMA weights as a diffusers pipeline folder plus a model card (rank 0)."""
        from relight_stream.train.card import write_card
        from relight_stream.train.model import make_pipeline

        unet = self.accelerator.unwrap_model(self.unet)
        if self.ema is not None:
            self.ema.copy_to(self.params)
        if unet.dtype != torch.float32:
            unet = unet.to(torch.float32)
        # The pipeline's default size (sample_size x VAE scale) becomes the training resolution.
        unet.register_to_config(sample_size=self.cfg.resolution // self.model.vae_scale)
        make_pipeline(self.model, unet).save_pretrained(str(out), safe_serialization=True)
        write_card(out, cfg=self.cfg, model=self.model, **info)
        log.info("saved pipeline to %s", out)


def build_setup(cfg: TrainConfig, model: IP2PModel, accelerator: Any, *, seed: int, fmt: str) -> TrainSetup:
    """Freeze VAE and text encoders, prepare the UNet, optimizer, constant LR schedule and EMA."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    device = accelerator.device
    for part in (model.vae, *model.text_encoders):
        part.requires_grad_(False).eval().to(device)
    unet = prepare_unet(model.unet.to(device), device=device, gradient_checkpointing=cfg.gradient_checkpointing,
                        compile=cfg.compile)
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    fused = torch.device(device).type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8, fused=fused)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    ema = None
    if cfg.ema:
        ema = EMAModel(params, decay=cfg.ema_decay, foreach=fused)
        ema.to(device)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    setup = TrainSetup(cfg=cfg, model=model, accelerator=accelerator, unet=unet, params=params, optimizer=optimizer,
                       lr_scheduler=lr_scheduler, ema=ema, seed=seed)
    if cfg.validate_every and fmt == "images" and accelerator.is_main_process:
        from relight_stream.train.infer import load_validation_samples

        setup.val_samples = load_validation_samples(cfg.shards, resolution=cfg.resolution, count=4)
    elif cfg.validate_every:
        log.warning("validation grids need image shards; none for latent caches")
    return setup
