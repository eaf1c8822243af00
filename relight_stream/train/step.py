"""One InstructPix2Pix training loss: batch -> latents -> noise -> conditioning dropout -> UNet -> MSE.

Reads a batch from ``data.py`` (uint8 images, or cached latents and text embeddings) and returns the loss
tensor. All randomness (VAE sampling, noise, timesteps, dropout masks) comes from one ``torch.Generator`` per
rank, which the checkpoint saves, so a resumed run draws the same numbers.

Conditioning dropout (classifier-free guidance for text and image, InstructPix2Pix §3.2, as the diffusers
example): with ``p ~ U[0, 1)`` per sample, the text is dropped for ``p < 2 t`` and the image for
``t <= p < t + 2 i``; at t = i = 0.05 that is 5 % text only, 5 % both, 5 % image only.

Light-transport consistency (optional, shards with ``input_l1/l2/l12``; ``--consistency``). IC-Light's
principle is that light transport is linear: in linear HDR, the appearance under L1 + L2 is the appearance under
L1 plus the appearance under L2. IC-Light relights *towards* a light condition, so its outputs differ per light
and it imposes the sum on them: ‖M ⊙ (ε̂(L1+L2) − φ(ε̂(L1), ε̂(L2)))‖, with an MLP φ because VAE latents are
not linear. Our direction is the reverse: the inputs are the subject relit by L1, L2 and L1 + L2 (``generate``
renders them so that I(L1+L2) = I(L1) + I(L2) in linear light, which is where the principle is used: it makes the
three inputs the *same subject* under consistent light) and all three share one target, the original photo.
Additivity of outputs would demand x0 = x0 + x0, so the grounded constraint on the model is *invariance*: the
three conditional predictions of the same target must agree. It is imposed in noise-prediction space, where it
is exact and needs no φ: all three UNet calls see the same noisy latent x_t, timestep and text, so the denoised
latent x̂0 = (x_t − σ_t ε̂) / α_t (and, for v-prediction, x̂0 = α_t x_t − σ_t v̂) is the same affine function of
each prediction; equal ε̂ means equal x̂0 and equal decoded images. The term (:func:`consistency_loss`) is the
spread of the K = 3 predictions around their mean, (1/K) Σ_k ‖ε̂_k − ε̄‖². It is the disagreement part of the
diffusion loss on all K inputs, (1/K) Σ_k ‖ε̂_k − ε‖² = (1/K) Σ_k ‖ε̂_k − ε̄‖² + ‖ε̄ − ε‖², without the sampled
noise ε (so low variance), symmetric (the shadowed I(L1) prediction is not made the anchor the better-lit
I(L1+L2) one must copy), and zero exactly when the predictions agree. It is weighted by ``consistency_weight``.
``input`` is I(L1) in ``generate``'s shards, so ``input_l1`` is used only when it differs from ``input``.
No foreground mask is needed: the three inputs have the same grey background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from relight_stream.train.model import IP2PModel, encode_images, encode_text, time_ids


@dataclass
class StepInputs:
    """What the UNet sees for one batch (after dropout), plus the regression target."""

    noisy: torch.Tensor
    cond: torch.Tensor
    timesteps: torch.Tensor
    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None
    target: torch.Tensor
    extra_conds: list[torch.Tensor]


def to_unit(x: torch.Tensor, device: Any) -> torch.Tensor:
    """uint8 ``B3HW`` sRGB -> float32 in [-1, 1] on ``device``."""
    return x.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def _on(x: torch.Tensor, device: Any) -> torch.Tensor:
    return x.to(device, non_blocking=True).float()


def consistency_loss(preds: torch.Tensor) -> torch.Tensor:
    """Spread of K predictions of the same target: mean over k and elements of ``(preds[k] - preds.mean(0))**2``.

    Args:
        preds: ``(K, B, C, H, W)`` noise (or v) predictions for K conditions of the same noisy latent.

    Returns:
        A scalar, 0 iff all K predictions are equal (exactly: it is computed from the pairwise differences,
        (1/K) Σ_k ‖p_k − p̄‖² = (1/K²) Σ_{k<l} ‖p_k − p_l‖²); gradients reach every prediction.
    """
    k = preds.shape[0]
    pairs = [(preds[a] - preds[b]).pow(2).mean() for a in range(k) for b in range(a + 1, k)]
    return torch.stack(pairs).sum() / k**2 if pairs else preds.sum() * 0


def sample_moments(moments: torch.Tensor, scaling: float, gen: torch.Generator) -> torch.Tensor:
    """Sample a scaled latent from cached VAE moments (mean ‖ logvar on the channel axis)."""
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=gen, device=mean.device, dtype=mean.dtype)
    return (mean + std * noise) * scaling


class LossFn:
    """Builds UNet inputs from a batch and computes the (dropout-aware) diffusion loss."""

    def __init__(self, model: IP2PModel, *, resolution: int, text_dropout: float, image_dropout: float,
                 null_embeds: torch.Tensor, null_pooled: torch.Tensor | None, consistency_weight: float = 0.0,
                 vae_autocast: bool = True) -> None:
        self.model, self.resolution = model, resolution
        self.text_dropout, self.image_dropout = text_dropout, image_dropout
        self.null_embeds, self.null_pooled = null_embeds, null_pooled
        self.consistency_weight = consistency_weight
        self.vae_autocast = vae_autocast
        sched = model.scheduler
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.prediction_type = sched.config.prediction_type

    def prepare(self, batch: dict[str, Any], device: Any, gen: torch.Generator) -> StepInputs:
        model = self.model
        extra_conds: list[torch.Tensor] = []
        if "moments" in batch:  # cached latents (float16 on the host)
            cond, embeds = _on(batch["cond"], device), _on(batch["embeds"], device)
            target = sample_moments(_on(batch["moments"], device), model.scaling_factor, gen)
            pooled = _on(batch["pooled"], device) if "pooled" in batch else None
        else:
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.vae_autocast):
                cond, target = encode_images(model, to_unit(batch["input"], device), to_unit(batch["target"], device),
                                             generator=gen)
                for name in ("input_l1", "input_l2", "input_l12"):
                    if name in batch and self.consistency_weight > 0:
                        if name == "input_l1" and torch.equal(batch[name], batch["input"]):
                            continue  # generate writes input == I(L1): the main condition already is L1
                        extra_conds.append(encode_images(model, to_unit(batch[name], device))[0])
            embeds, pooled = encode_text(model, batch["instruction"], device)
        cond, target = cond.float(), target.float()
        bsz = target.shape[0]
        noise = torch.randn(target.shape, generator=gen, device=target.device)
        t = torch.randint(0, self.num_train_timesteps, (bsz,), generator=gen, device=target.device)
        noisy = model.scheduler.add_noise(target, noise, t)
        if self.prediction_type == "v_prediction":
            goal = model.scheduler.get_velocity(target, noise, t)
        else:
            goal = noise
        p = torch.rand(bsz, generator=gen, device=target.device)
        drop_text = (p < 2 * self.text_dropout).view(bsz, 1, 1)
        keep_image = ~((p >= self.text_dropout) & (p < self.text_dropout + 2 * self.image_dropout))
        keep_image = keep_image.view(bsz, 1, 1, 1).to(cond.dtype)
        embeds = torch.where(drop_text, self.null_embeds.to(embeds.dtype), embeds)
        added = None
        if model.kind == "sdxl":
            pooled = torch.where(drop_text.view(bsz, 1), self.null_pooled.to(pooled.dtype), pooled)
            added = {"text_embeds": pooled, "time_ids": time_ids(model, bsz, self.resolution, target.device)}
        cond = cond * keep_image
        extra_conds = [c.float() * keep_image for c in extra_conds]
        return StepInputs(noisy=noisy, cond=cond, timesteps=t, embeds=embeds, added=added, target=goal,
                          extra_conds=extra_conds)

    def __call__(self, unet: Any, inp: StepInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, diffusion loss) for prepared inputs; ``unet`` may be DDP-wrapped."""
        conds = [inp.cond, *inp.extra_conds]
        n = len(conds)  # one UNet call over all conditions (DDP allows one forward per backward)
        x = torch.cat([torch.cat([inp.noisy, c], dim=1) for c in conds], dim=0)
        if getattr(unet, "module", unet).conv_in.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)  # as the UNet (setup.prepare_unet)
        added = None if inp.added is None else {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in inp.added.items()}
        pred = unet(x, inp.timesteps.repeat(n), inp.embeds.repeat(n, 1, 1), added_cond_kwargs=added,
                    return_dict=False)[0].float()
        main = pred[: len(inp.noisy)]
        diff = F.mse_loss(main, inp.target, reduction="mean")
        if n == 1:
            return diff, diff
        cons = consistency_loss(pred.view(n, len(inp.noisy), *pred.shape[1:]))
        return diff + self.consistency_weight * cons, diff


MIN_FP16_SCALE = 1.0
"""Below this grad scale an fp16 overflow is not calibration but a real NaN/inf (see :func:`fp16_outcome`)."""


def fp16_outcome(scaler: Any, scale_before: float | None) -> tuple[bool, bool]:
    """What the grad scaler did with the optimizer step just taken: ``(skipped, hopeless)``.

    Under fp16, ``GradScaler`` skips a step whose gradients overflowed and halves its scale. Early overflows are
    its normal calibration (not counted as non-finite steps; the EMA and the loss log skip them); once the scale
    has fallen below :data:`MIN_FP16_SCALE` even unscaled gradients are not finite, a real NaN/inf that counts
    toward ``max_nonfinite_steps``. ``scaler`` None (bf16/fp32) -> ``(False, False)``.
    """
    if scaler is None or scale_before is None:
        return False, False
    after = float(scaler.get_scale())
    skipped = after < scale_before
    return skipped, skipped and after < MIN_FP16_SCALE
