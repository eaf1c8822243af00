"""CLIP engine (open_clip): image and text towers giving L2-normalised embeddings.

Reads images ``[B,3,H,W]`` float sRGB in [0,1] (any size: resized on the short side and centre-cropped to the
model's square, then normalised with CLIP's mean/std inside the exported ``image`` part) and lists of strings
(tokenised with the real CLIP BPE tokenizer that ships with open_clip). Writes ``[B,D]`` fp32 unit vectors.

Flavors: ``tiny`` (width-64, 2-layer ViT at 32², 2-layer text tower, embed 32; random weights, for tests),
``vit-b-32`` and ``vit-l-14`` (``base``): open_clip's ViT-B-32 / ViT-L-14 with QuickGELU, the architecture of
OpenAI's weights. Real weights: ``weights="timm/vit_large_patch14_clip_224.openai@<commit>"`` (open_clip's hub
copy of the ``openai`` tag) or a local open_clip checkpoint file.
"""

from __future__ import annotations

from typing import Any

import torch

from relight_stream.engines.common import check_images, resize_crop
from relight_stream.engines.registry import register_engine
from relight_stream.engines.spec import BuiltModel, EngineSpec, PartIO, WeightsRef, fetch_weights

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
            state = torch.load(fetch_weights(weights, spec.hf_file), map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state))
    else:
        pretrained = None if weights.source == "random" else str(fetch_weights(weights, spec.hf_file))
        model = open_clip.create_model(spec.config["open_clip_name"], pretrained=pretrained, force_quick_gelu=True)
    model.eval()
    ctx = model.context_length
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)  # the bundled CLIP BPE vocabulary
    size = spec.input_size
    image, text = _ImageTower(model), _TextTower(model)

    def example_image(b: int) -> tuple[Any, ...]:
        return (torch.rand(b, 3, size, size),)

    def example_text(b: int) -> tuple[Any, ...]:
        return (tokenizer(["a photo of a well lit face"] * b),)

    return BuiltModel(
        parts={"image": image, "text": text},
        io={"image": PartIO(("pixels",), ("embedding",)), "text": PartIO(("tokens",), ("embedding",))},
        example_inputs={"image": example_image, "text": example_text},
        extras={"tokenizer": tokenizer, "logit_scale": float(model.logit_scale.exp().item()),
                "embed_dim": int(model.visual.output_dim), "model": model},
    )


class _ImageTower(torch.nn.Module):
    """pixels ``[B,3,S,S]`` in [0,1] -> unit embedding ``[B,D]`` (CLIP mean/std applied inside)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.visual = model.visual
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

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
    return {"tiny": tiny, "vit-b-32": b32, "vit-l-14": l14, "base": l14}
