"""InstructPix2Pix model: UNet surgery, the ``tiny`` flavor, SD1.5/SDXL loading, an offline CLIP tokenizer.

Reads: a Hugging Face id (``org/name@revision``; the aliases ``sd15``/``sdxl`` are pinned to a commit), a local
diffusers folder, or nothing (``tiny``: every part built from a config with random weights). Writes nothing.

Conventions (used by training, latent caching and inference alike — :func:`encode_images` is the one place):

* Images enter the VAE as float in [-1, 1] (sRGB uint8 / 127.5 - 1), ``B3HW``. The neutral background the
  input is composited on is sRGB 128 (ARCHITECTURE.md §4), i.e. 0.0039 after that mapping.
* **Image condition** = ``vae.encode(input).latent_dist.mode()``, *unscaled* (as diffusers'
  ``StableDiffusionInstructPix2PixPipeline.prepare_image_latents`` does, and its SDXL twin).
* **Target latent** = ``vae.encode(target).latent_dist.sample() * vae.config.scaling_factor``.
* The UNet input is ``cat([noisy_target_latent, image_condition], dim=1)`` (8 channels). A base model with a
  4-channel ``conv_in`` is widened: the new 4 input channels get zero weights, the original are copied, so
  the widened UNet starts out computing exactly what the base model did.
* Null text condition (classifier-free guidance): SD1.5 encodes ``""`` (what its pipeline uses for the negative
  prompt); SDXL uses zeros for both embeddings (its pipeline's ``force_zeros_for_empty_prompt=True``). The null
  image condition is a zero latent.
* SDXL micro-conditioning ``add_time_ids`` = (H, W, 0, 0, H, W) at the training resolution, as the pipeline
  computes from the image size at inference.
"""

from __future__ import annotations

import functools
import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Base models pinned to a commit (the reference used moving branches).
ALIASES: dict[str, tuple[str, str]] = {
    "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "462165984030d82259a11f4367a4eed129e94a7b"),
}
TINY_FLAVORS = ("tiny", "tiny-sdxl")
# Training side (px) when --resolution is not given: the reference's SD1.5 512² / SDXL 1024²; tiny stays cheap.
DEFAULT_RESOLUTION: dict[str, int] = {"tiny": 256, "tiny-sdxl": 256, "sd15": 512, "sdxl": 1024}
FALLBACK_RESOLUTION = 512


@dataclass
class IP2PModel:
    """Everything training and inference need. ``kind`` is ``sd`` or ``sdxl``."""

    kind: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    scheduler: Any
    """Training noise scheduler (``DDPMScheduler``)."""
    source: str = "tiny"
    revision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# ------------------------------------------------------------------------------------------ tokenizer


@functools.lru_cache(maxsize=2)
def clip_tokenizer(max_length: int = 77) -> Any:
    """The real CLIP BPE tokenizer (49,408 tokens) built offline from the vocabulary open_clip ships.

    Token ids match ``open_clip.tokenize`` and ``openai/clip-vit-large-patch14``'s tokenizer. Cached: treat
    the returned tokenizer as read-only.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in lines]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=max_length)


# ------------------------------------------------------------------------------------------ surgery


def widen_conv_in(unet: Any, in_channels: int = 8) -> Any:
    """Give ``unet.conv_in`` ``in_channels`` inputs: original weights copied, the new channels zero (in place)."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"conv_in already has {old.in_channels} > {in_channels} input channels")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


# ------------------------------------------------------------------------------------------ builders


def build_tiny(kind: str = "sd", *, seed: int = 0, widen: bool = True) -> IP2PModel:
    """A random-weight IP2P model (UNet ``block_out_channels=(32, 64)``, VAE /2, 2-layer CLIP) for tests and demos.

    The UNet is built with 4 input channels and widened by :func:`widen_conv_in`, as a real base model is
    (``widen=False``: the 4-channel base model itself).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = clip_tokenizer()
    text_cfg = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=len(tok), hidden_size=32,
                    intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77)
    unet_cfg: dict[str, Any] = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4,
                                    out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                    attention_head_dim=(2, 4), cross_attention_dim=32)
    if kind == "sd":
        encoders = [CLIPTextModel(CLIPTextConfig(**text_cfg))]
        tokenizers = [tok]
    elif kind == "sdxl":
        encoders = [CLIPTextModel(CLIPTextConfig(**text_cfg)),
                    CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg, projection_dim=32))]
        tokenizers = [tok, tok]
        # 6 time ids x 8 + the 32-d pooled embedding of the second encoder.
        unet_cfg.update(cross_attention_dim=64, use_linear_projection=True, addition_embed_type="text_time",
                        addition_time_embed_dim=8, projection_class_embeddings_input_dim=80)
    else:
        raise ValueError(f"unknown tiny kind {kind!r}")
    unet = UNet2DConditionModel(**unet_cfg)
    unet = widen_conv_in(unet) if widen else unet
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=64)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False)
    return IP2PModel(kind=kind, unet=unet, vae=vae, text_encoders=encoders, tokenizers=tokenizers,
                     scheduler=scheduler, source="tiny-sdxl" if kind == "sdxl" else "tiny")


def resolve_source(model: str) -> tuple[str, str | None]:
    """``sd15``/``sdxl`` -> pinned (id, commit); ``org/name@rev`` -> (id, rev); a local folder -> (path, None)."""
    if model in ALIASES:
        return ALIASES[model]
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser()), None
    repo, _, rev = model.partition("@")
    if "flux" in repo.lower():
        raise ValueError(f"--model {model!r}: Flux is not supported (the reference listed it as experimental and its "
                         "trainer never ran); use sd15, sdxl or an SD1.5/SDXL-family id or folder")
    if repo.count("/") != 1:
        raise ValueError(f"--model {model!r}: not tiny|tiny-sdxl|sd15|sdxl, an existing folder, or an 'org/name' id")
    from relight_stream.engines.spec import check_revision

    check_revision(repo, rev or None, "--model")
    return repo, rev


def _folder_resolution(folder: Path) -> int | None:
    """``unet/config.json`` sample_size x the VAE's scale (``2 ** (len(block_out_channels) - 1)``, else 8)."""
    import json

    try:
        side = json.loads((folder / "unet" / "config.json").read_text())["sample_size"]
    except (OSError, ValueError, KeyError):
        return None
    side = side[0] if isinstance(side, (list, tuple)) else side
    try:
        scale = 2 ** (len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        scale = 8
    return int(side) * scale if isinstance(side, int) and side > 0 else None


def native_resolution(model: str) -> tuple[int, str]:
    """The training side (px) for ``model`` and why: see :data:`DEFAULT_RESOLUTION`; a hub id or local folder
    gives its UNet's ``sample_size`` x VAE scale when its config can be read (a folder, or the hub cache: no
    download), else :data:`FALLBACK_RESOLUTION`.

    Raises:
        ValueError: ``model`` names no known model (as :func:`resolve_source`).
    """
    if model in DEFAULT_RESOLUTION:
        return DEFAULT_RESOLUTION[model], f"the default for --model {model}"
    src, rev = resolve_source(model)
    folder: Path | None = Path(src) if Path(src).is_dir() else None
    if folder is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            from relight_stream.engines.weights import hub_cache

            hit = try_to_load_from_cache(src, "unet/config.json", cache_dir=str(hub_cache()), revision=rev)
            folder = Path(hit).parent.parent if isinstance(hit, str) else None
        except Exception:  # noqa: BLE001 - no cache entry / hub library quirks: fall back below
            folder = None
    side = _folder_resolution(folder) if folder is not None else None
    if side is None:
        return FALLBACK_RESOLUTION, f"no readable unet/config.json for {model}: the fallback"
    return side, f"{model}'s UNet sample_size x VAE scale"


def pick_resolution(requested: int | None, model: str, *, what: str) -> int:
    """``requested`` or the model's :func:`native_resolution`; logs the choice once (INFO).

    Raises:
        ValueError: ``requested`` is not positive, or ``model`` is unknown.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"{what}: --resolution must be >= 1, got {requested}")
        log.info("%s: resolution %d² (--resolution)", what, requested)
        return requested
    side, why = native_resolution(model)
    log.info("%s: resolution %d² (%s; --resolution overrides)", what, side, why)
    return side


def load_model(model: str, *, seed: int = 0) -> IP2PModel:
    """Load a model by name (see :func:`resolve_source`); the UNet is widened to 8 input channels when needed."""
    if model in TINY_FLAVORS:
        return build_tiny("sdxl" if model == "tiny-sdxl" else "sd", seed=seed)
    from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from relight_stream.engines.weights import prefetch_command, resolve_model_dir

    src, rev = resolve_source(model)
    # offline: the cached snapshot folder or a clear error naming the pre-fetch command; truncated files caught
    path = resolve_model_dir(src, rev, ("unet", "vae", "text_encoder", "text_encoder_2"))
    load_rev = rev if path == src else None  # a folder (local or cached snapshot) has no revision to pass
    try:
        index = DiffusionPipeline.load_config(path, revision=load_rev)
    except Exception as exc:  # noqa: BLE001 - hub/offline errors come in many types
        raise ValueError(f"cannot read model_index.json of {src}@{rev or 'main'}: {exc}. Pre-fetch it with "
                         f"`{prefetch_command(src, rev)}` or pass a local folder") from exc
    name, src, kw = src, path, dict(revision=load_rev)  # name: the id recorded as the model's source
    sdxl = "text_encoder_2" in index
    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kw))
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **kw)
    encoders = [CLIPTextModel.from_pretrained(src, subfolder="text_encoder", **kw)]
    tokenizers = [CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)]
    if sdxl:
        encoders.append(CLIPTextModelWithProjection.from_pretrained(src, subfolder="text_encoder_2", **kw))
        tokenizers.append(CLIPTokenizer.from_pretrained(src, subfolder="tokenizer_2", **kw))
    scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    log.info("loaded %s %s@%s (unet in_channels=%d)", "SDXL" if sdxl else "SD", name, rev, unet.config.in_channels)
    return IP2PModel(kind="sdxl" if sdxl else "sd", unet=unet, vae=vae, text_encoders=encoders,
                     tokenizers=tokenizers, scheduler=scheduler, source=name, revision=rev)


# ------------------------------------------------------------------------------------------ encoders


@torch.no_grad()
def encode_text(model: IP2PModel, texts: list[str], device: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt embeddings ``(B, 77, D)`` and, for SDXL, pooled embeddings ``(B, D2)`` (pipeline conventions)."""
    if model.kind == "sd":
        ids = model.tokenizers[0](texts, padding="max_length", max_length=model.tokenizers[0].model_max_length,
                                  truncation=True, return_tensors="pt").input_ids.to(device)
        return model.text_encoders[0](ids)[0], None
    embeds, pooled = [], None
    for tok, enc in zip(model.tokenizers, model.text_encoders):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(device)
        out = enc(ids, output_hidden_states=True)
        pooled = out[0]  # text_embeds of the projection encoder (the last one)
        embeds.append(out.hidden_states[-2])
    return torch.cat(embeds, dim=-1), pooled


def null_text(model: IP2PModel, device: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text condition used for classifier-free dropout (see the module docstring), batch of 1."""
    embeds, pooled = encode_text(model, [""], device)
    if model.kind == "sdxl":
        return torch.zeros_like(embeds), torch.zeros_like(pooled)
    return embeds, None


@torch.no_grad()
def encode_images(model: IP2PModel, inputs: torch.Tensor, targets: torch.Tensor | None = None, *,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(image condition, target latent) from float images in [-1, 1]; see the module docstring."""
    vae = model.vae
    cond = vae.encode(inputs.to(vae.dtype)).latent_dist.mode()
    if targets is None:
        return cond, None
    target = vae.encode(targets.to(vae.dtype)).latent_dist.sample(generator) * model.scaling_factor
    return cond, target


def time_ids(model: IP2PModel, batch: int, resolution: int, device: Any) -> torch.Tensor | None:
    """SDXL ``add_time_ids`` (original size, crop top-left, target size) for square training images."""
    if model.kind != "sdxl":
        return None
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32, device=device)
    return ids.expand(batch, 6)


def make_pipeline(model: IP2PModel, unet: Any | None = None) -> Any:
    """The diffusers IP2P pipeline (SD or SDXL) over ``model``'s parts, with an Euler-ancestral sampler."""
    from diffusers import (EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           StableDiffusionXLInstructPix2PixPipeline)

    sched = EulerAncestralDiscreteScheduler.from_config(model.scheduler.config)
    unet = unet if unet is not None else model.unet
    if model.kind == "sdxl":
        return StableDiffusionXLInstructPix2PixPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=unet, scheduler=sched,
            force_zeros_for_empty_prompt=True, add_watermarker=False)
    return StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=unet,
        scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
