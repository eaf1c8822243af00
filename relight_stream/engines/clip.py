"""CLIP engine (open_clip): image and text towers giving L2-normalised embeddings.

Reads images ``[B,3,H,W]`` float sRGB in [0,1] (any size: resized on the short side and centre-cropped to the
model's square, then normalised with CLIP's mean/std inside the exported ``image`` part) and lists of strings
(tokenised with the real CLIP BPE tokenizer that ships with open_clip). Writes ``[B,D]`` fp32 unit vectors.

Flavors: ``tiny`` (width-64, 2-layer ViT at 32², 2-layer text tower, embed 32; random weights, for tests),
``vit-b-32`` and ``vit-l-14`` (``base``): open_clip's ViT-B-32 / ViT-L-14 with QuickGELU, the architecture of
OpenAI's weights. Real weights: ``weights="timm/vit_large_patch14_clip_224.openai@<commit>"`` (open_clip's hub
copy of the ``openai`` tag) or a local open_clip checkpoint file.

Pass-through flavors ``open_clip:<ModelName>``, for any name in ``open_clip.list_models()`` (including configs
added with ``open_clip.add_model_config``): registered on first use by :func:`open_clip_flavor`, built with
``open_clip.create_model(name)`` as is (its own mean/std and tokenizer), weights ``None`` (random, seeded), a
local checkpoint (file, or a folder holding ``open_clip_model.safetensors``/``open_clip_pytorch_model.bin``) or
``org/name@revision``. An open_clip pretrained *tag* becomes a local file with :func:`resolve_open_clip_tag`,
from the local caches only: nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from relight_stream.engines.common import check_images, resize_crop
from relight_stream.engines.registry import register_engine
from relight_stream.engines.spec import BuiltModel, EngineSpec, PartIO, WeightsRef, fetch_weights
from relight_stream.engines.weights import load_state_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    "quick_gelu": True,
}


def _build(spec: EngineSpec, weights: WeightsRef) -> BuiltModel:
    import open_clip

    if spec.flavor == "tiny":
        cfg = dict(TINY_CFG)
        model = open_clip.CLIP(**cfg)
        if weights.source != "random":
            state = load_state_file(fetch_weights(weights, spec.hf_file))
            model.load_state_dict(state.get("state_dict", state))
    else:
        pretrained = None if weights.source == "random" else str(_checkpoint(fetch_weights(weights, spec.hf_file)))
        passthrough = spec.flavor.startswith(OPEN_CLIP_PREFIX)
        model = open_clip.create_model(spec.config["open_clip_name"], pretrained=pretrained,
                                       force_quick_gelu=not passthrough)
    model.eval()
    if spec.flavor.startswith(OPEN_CLIP_PREFIX):
        pre = open_clip.get_model_preprocess_cfg(model)
        mean, std = tuple(pre.get("mean", CLIP_MEAN)), tuple(pre.get("std", CLIP_STD))
        try:
            tokenizer = open_clip.get_tokenizer(spec.config["open_clip_name"])
        except Exception as exc:  # an HF tokenizer that is not in the local cache
            raise ValueError(f"clip {spec.flavor}: cannot load its tokenizer offline: {exc}") from exc
    else:
        mean, std = CLIP_MEAN, CLIP_STD
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)  # bundled CLIP BPE
    size = spec.input_size
    image, text = _ImageTower(model, mean, std), _TextTower(model)

    def example_image(b: int) -> tuple[Any, ...]:
        return (torch.rand(b, 3, size, size),)

    def example_text(b: int) -> tuple[Any, ...]:
        return (tokenizer(["a photo of a well lit face"] * b),)

    return BuiltModel(
        parts={"image": image, "text": text},
        io={"image": PartIO(("pixels",), ("embedding",)), "text": PartIO(("tokens",), ("embedding",))},
        example_inputs={"image": example_image, "text": example_text},
        extras={"tokenizer": tokenizer, "logit_scale": float(model.logit_scale.exp().item()),
                "embed_dim": int(spec.config.get("embed_dim") or model.visual.output_dim), "model": model},
    )


def _checkpoint(path: Path) -> Path:
    """An open_clip checkpoint file: ``path`` itself, or the open_clip weights file inside a snapshot folder."""
    if path.is_dir():
        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise ValueError(f"{path}: no open_clip_model.safetensors / open_clip_pytorch_model.bin in this folder")
    return path


class _ImageTower(torch.nn.Module):
    """pixels ``[B,3,S,S]`` in [0,1] -> unit embedding ``[B,D]`` (CLIP mean/std applied inside)."""

    def __init__(self, model: Any, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> None:
        super().__init__()
        self.visual = model.visual
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: Any) -> Any:
        import torch.nn.functional as F

        feats = self.visual((pixels - self.mean) / self.std)
        return (F.normalize(feats, dim=-1),)


class _TextTower(torch.nn.Module):
    """token ids ``[B,L]`` int64 -> unit embedding ``[B,D]``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model  # encode_text reads many attributes; the unused visual tower is not exported

    def forward(self, tokens: Any) -> Any:
        import torch.nn.functional as F

        return (F.normalize(self.model.encode_text(tokens), dim=-1),)


class ClipEngine:
    """``encode_image(images) -> [B,D]``, ``encode_text(texts) -> [B,D]`` (unit vectors), ``logit_scale``."""

    def __init__(self, spec: EngineSpec, runners: dict[str, Any], built: BuiltModel, device: Any) -> None:
        self.spec, self.device = spec, device
        self.image_size = spec.input_size
        self._image, self._text = runners["image"], runners["text"]
        self.tokenizer = built.extras["tokenizer"]
        self.logit_scale: float = built.extras["logit_scale"]
        self.embed_dim: int = built.extras["embed_dim"]

    def encode_image(self, images: Any) -> Any:
        """``[B,3,H,W]`` sRGB in [0,1] -> ``[B,D]`` fp32 unit embeddings (on the engine's device)."""
        import torch.nn.functional as F

        x = resize_crop(check_images(images).to(self.device), self.image_size)
        return F.normalize(self._image(x)[0], dim=-1)

    def encode_text(self, texts: list[str]) -> Any:
        """List of ``B`` strings -> ``[B,D]`` fp32 unit embeddings."""
        import torch.nn.functional as F

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_text expects a list of strings")
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self._text(tokens)[0], dim=-1)


@register_engine("clip")
def clip_flavors() -> dict[str, EngineSpec]:
    tiny = EngineSpec(
        "clip", "tiny", _build, ClipEngine, input_size=32, config={**TINY_CFG},
        description="tiny ViT (width 64, 2 layers, 32², embed 32), random weights; tests",
    )
    b32 = EngineSpec(
        "clip", "vit-b-32", _build, ClipEngine, input_size=224, hf_id="timm/vit_base_patch32_clip_224.openai",
        hf_file="open_clip_model.safetensors", config={"open_clip_name": "ViT-B-32", "embed_dim": 512},
        description="open_clip ViT-B-32 (QuickGELU, OpenAI architecture)",
    )
    l14 = EngineSpec(
        "clip", "vit-l-14", _build, ClipEngine, input_size=224, hf_id="timm/vit_large_patch14_clip_224.openai",
        hf_file="open_clip_model.safetensors", config={"open_clip_name": "ViT-L-14", "embed_dim": 768},
        description="open_clip ViT-L-14 (QuickGELU, OpenAI architecture)",
    )
    return {"tiny": tiny, "vit-b-32": b32, "vit-l-14": l14, "base": l14, **_OPEN_CLIP}


OPEN_CLIP_PREFIX = "open_clip:"
_OPEN_CLIP: dict[str, EngineSpec] = {}


def open_clip_flavor(name: str) -> str:
    """The pass-through flavor ``open_clip:<name>`` of an open_clip model name, registered on first use.

    Args:
        name: Any name in ``open_clip.list_models()`` (with or without the ``open_clip:`` prefix).

    Raises:
        ValueError: an unknown name (listing close ones), or a non-square image size.
    """
    import difflib

    import open_clip

    name = name[len(OPEN_CLIP_PREFIX):] if name.startswith(OPEN_CLIP_PREFIX) else name
    flavor = OPEN_CLIP_PREFIX + name
    if flavor in _OPEN_CLIP:
        return flavor
    names = open_clip.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5)
        raise ValueError(f"unknown open_clip model {name!r}; close names: {close} (all: open_clip.list_models())")
    mcfg = open_clip.get_model_config(name)
    size = mcfg.get("vision_cfg", {}).get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"open_clip model {name}: non-square image size {size} is not supported")
        size = size[0]
    _OPEN_CLIP[flavor] = EngineSpec(
        "clip", flavor, _build, ClipEngine, input_size=int(size),
        config={"open_clip_name": name, "embed_dim": mcfg.get("embed_dim")},
        description=f"open_clip {name} as open_clip builds it (pass-through)",
    )
    register_engine("clip")(clip_flavors)  # re-registering drops the registry's cached flavor table
    return flavor


def resolve_open_clip_tag(name: str, tag: str, cache_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """``(model name, local checkpoint)`` for open_clip's pretrained ``tag`` of ``name``, from local caches only.

    Looks in the Hugging Face cache (``cache_dir``, default the hub cache) for the tag's ``hf_hub`` repository,
    then in open_clip's URL cache (``~/.cache/clip``). When the tag's weights need QuickGELU and open_clip has a
    ``<name>-quickgelu`` config, that name is returned (the activation must match the weights).

    Raises:
        ValueError: an unknown tag (listing the known ones), or weights not in any local cache (nothing is
            downloaded; the message names what to fetch).
    """
    import open_clip

    asked, pcfg = name, open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        raise ValueError(f"open_clip {name} has no pretrained tag {tag!r}; known tags: "
                         f"{open_clip.list_pretrained_tags_by_model(name)}")
    if pcfg.get("quick_gelu") and "quickgelu" not in name.lower() and f"{name}-quickgelu" in open_clip.list_models():
        name = f"{name}-quickgelu"
    hub = pcfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, file = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        for fn in ([file] if file else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
            hit = try_to_load_from_cache(repo, fn, cache_dir=cache_dir)
            if isinstance(hit, str):
                return name, hit
    url = pcfg.get("url", "")
    local = Path("~/.cache/clip").expanduser() / os.path.basename(url) if url else None
    if local is not None and local.is_file():
        return name, str(local)
    where = f"the Hugging Face repository {hub.rstrip('/')!r}" if hub else f"{url!r}"
    raise ValueError(f"open_clip {asked} tag {tag!r}: weights not in the local caches and nothing is downloaded here; "
                     f"fetch {where} on a connected machine, or give a local checkpoint path or org/name@revision")
