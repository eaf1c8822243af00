"""Text-prompted segmentation engine: SAM 3 (transformers' ``Sam3Model``), the reference pipeline's primary segmenter.

Reads images ``[B,3,H,W]`` float sRGB in [0,1] and a concept prompt (``"person"``: one string for the whole batch,
or a list of ``B`` strings, one per image). Images are resized (square, bilinear, antialiased — what
``Sam3ImageProcessor`` does) to the model's side and normalised with mean/std 0.5 inside the ``detector`` part.
Prompts are tokenised with the CLIP BPE tokenizer (SAM3's text encoder is a CLIP text transformer; ``facebook/sam3``
ships a ``CLIPTokenizer``), built offline from the vocabulary open_clip bundles (``train.model.clip_tokenizer``),
padded to 32 tokens as ``Sam3Processor`` does. Writes a soft foreground mask ``[B,H,W]`` fp32 in [0,1] at the input
resolution: the union (pixel-wise max) of the sigmoid instance masks whose score ``sigmoid(logit) *
sigmoid(presence)`` exceeds ``threshold`` (all zeros when no instance passes); :meth:`Sam3Engine.detect` also returns
the per-query scores and boxes.

Two parts: ``text`` (token ids + attention mask -> projected text features ``[B,32,D]``; run once per distinct
prompt of a call) and ``detector`` (pixels + text features + mask -> mask logits ``[B,Q,h,w]``, scores ``[B,Q]``,
boxes ``[B,Q,4]`` xyxy normalised to [0,1]). Both export to ONNX with the engine cache's TorchScript exporter
(tiny: parity ≤ 2e-6 vs eager at batch 3, variable prompt lengths), so every backend applies to this kind.

Flavors: ``tiny`` (every sub-network width 32, one or two layers, 112² input, 8 queries; random weights, for tests)
and ``sam3`` (``base``; 1008² input, 200 queries). The real flavor has no random build: pass
``weights="facebook/sam3@<commit>"`` (the whole repository is fetched) or a local folder written by
``Sam3Model.save_pretrained``; the architecture then comes from the weights' ``config.json``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from relight_stream.engines.common import check_images, resize_back, resize_square
from relight_stream.engines.registry import register_engine
from relight_stream.engines.spec import BuiltModel, EngineSpec, PartIO, WeightsRef, fetch_weights

log = logging.getLogger(__name__)

KIND = "segmenter_sam3"
HF_ID = "facebook/sam3"
TEXT_LEN = 32  # Sam3Processor pads/truncates every prompt to 32 tokens (the text encoder's position table)
HALF = (0.5, 0.5, 0.5)  # Sam3ImageProcessor: IMAGENET_STANDARD mean/std
DEFAULT_THRESHOLD = 0.5


def _tiny_config(size: int = 112, width: int = 32, queries: int = 8) -> dict[str, Any]:
    """``Sam3Config`` kwargs of the ``tiny`` flavor: every sub-config shrunk to ``width`` and 1-2 layers."""
    grid = size // 14  # patch 14; the FPN levels are 4x, 2x, 1x (and a dropped 0.5x) the patch grid
    small = {"hidden_size": width, "num_attention_heads": 2, "intermediate_size": 2 * width}
    return {
        "vision_config": {
            "backbone_config": {
                "model_type": "sam3_vit_model", **small, "num_hidden_layers": 2, "image_size": size, "patch_size": 14,
                "window_size": grid // 2, "global_attn_indexes": [1], "pretrain_image_size": size,
            },
            "fpn_hidden_size": width,
            "backbone_feature_sizes": [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
        },
        "text_config": {
            "model_type": "clip_text_model", **small, "vocab_size": 49408, "projection_dim": width,
            "num_hidden_layers": 1, "max_position_embeddings": TEXT_LEN,
        },
        "geometry_encoder_config": {**small, "num_layers": 1, "roi_size": 2},
        "detr_encoder_config": {**small, "num_layers": 1},
        "detr_decoder_config": {**small, "num_layers": 1, "num_queries": queries},
        "mask_decoder_config": {"hidden_size": width, "num_attention_heads": 2},
    }


TINY = {"image_size": 112, "width": 32, "queries": 8}


def _build(spec: EngineSpec, weights: WeightsRef) -> BuiltModel:
    from transformers import Sam3Config, Sam3Model

    from relight_stream.train.model import clip_tokenizer

    if weights.source == "random":
        if spec.flavor != "tiny":
            raise ValueError(
                f"{KIND}/{spec.flavor} has no random-weight build: pass weights='{HF_ID}@<commit>' (a pinned "
                f"revision of the Hugging Face repository) or a local folder saved with Sam3Model.save_pretrained"
            )
        model = Sam3Model(Sam3Config(**copy.deepcopy(dict(spec.config["sam3"]))))
        # HF's init (std 0.02 at width 32) gives masks ≈ 0.5 everywhere and prompt-independent scores;
        # torch's default Linear/Conv init gives a tiny model whose outputs depend on image and prompt
        for mod in model.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                mod.reset_parameters()
    else:
        model = Sam3Model.from_pretrained(str(fetch_weights(weights, spec.hf_file)))
    model = model.float().eval()
    size = int(model.config.image_size)
    text_len = int(model.config.text_config.max_position_embeddings)
    tokenizer = clip_tokenizer(text_len)
    text, detector = _TextEncoder(model), _Detector(model)
    dim = int(model.config.detr_encoder_config.hidden_size)

    def example_text(b: int) -> tuple[Any, ...]:
        tok = tokenizer(["person"] * b, padding="max_length", max_length=text_len, truncation=True,
                        return_tensors="pt")
        return tok["input_ids"], tok["attention_mask"]

    def example_detector(b: int) -> tuple[Any, ...]:
        mask = torch.zeros(b, text_len, dtype=torch.int64)
        mask[:, :3] = 1
        return torch.rand(b, 3, size, size), torch.randn(b, text_len, dim), mask

    return BuiltModel(
        parts={"text": text, "detector": detector},
        io={
            "text": PartIO(("input_ids", "attention_mask"), ("text_features",)),
            "detector": PartIO(("pixels", "text_features", "attention_mask"), ("mask_logits", "scores", "boxes")),
        },
        example_inputs={"text": example_text, "detector": example_detector},
        extras={"model": model, "tokenizer": tokenizer, "image_size": size, "text_len": text_len},
    )


class _TextEncoder(torch.nn.Module):
    """(input_ids ``[B,L]`` int64, attention_mask ``[B,L]``) -> projected text features ``[B,L,D]``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.text_encoder, self.text_projection = model.text_encoder, model.text_projection

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return (self.text_projection(hidden),)  # what Sam3Model.get_text_features returns as pooler_output


class _Detector(torch.nn.Module):
    """(pixels ``[B,3,S,S]`` in [0,1], text features ``[B,L,D]``, attention_mask ``[B,L]``) ->
    (mask logits ``[B,Q,S',S']``, scores ``[B,Q]`` in [0,1], boxes ``[B,Q,4]`` xyxy in [0,1] of the image)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model  # the text tower is inside but unused here (text features come in)

    def forward(self, pixels: Any, text_features: Any, attention_mask: Any) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        out = self.model(pixel_values=(pixels - 0.5) / 0.5, attention_mask=attention_mask,
                         text_embeds=BaseModelOutputWithPooling(pooler_output=text_features))
        scores = out.pred_logits.sigmoid()
        if out.presence_logits is not None:  # SAM3's presence head: "is the concept in the image at all"
            scores = scores * out.presence_logits.sigmoid()
        return out.pred_masks, scores, out.pred_boxes


@dataclass
class Sam3Detections:
    """What :meth:`Sam3Engine.detect` returns (tensors on the engine's device, fp32).

    Attributes:
        mask: ``[B,H,W]`` in [0,1]: max over the kept instances' mask probabilities (0 where none is kept).
        scores: ``[B,Q]`` instance scores in [0,1] (``sigmoid(logit) * sigmoid(presence)``), every query.
        boxes: ``[B,Q,4]`` x0, y0, x1, y1 in pixels of the input image, every query.
        keep: ``[B,Q]`` bool, ``scores > threshold``.
    """

    mask: Any
    scores: Any
    boxes: Any
    keep: Any


class Sam3Engine:
    """``engine(images [B,3,H,W], prompts, threshold=None) -> [B,H,W]`` soft foreground mask in [0,1].

    Attributes:
        input_size: side of the square the model consumes (112 tiny, 1008 real).
        threshold: default instance-score threshold (0.5, SAM3's own default for its image predictor).
        tokenizer: the CLIP BPE tokenizer (``transformers.CLIPTokenizer``), 32 tokens per prompt.
    """

    def __init__(self, spec: EngineSpec, runners: dict[str, Any], built: BuiltModel, device: Any) -> None:
        self.spec, self.device = spec, device
        self.input_size: int = built.extras["image_size"]
        self.text_len: int = built.extras["text_len"]
        self.tokenizer = built.extras["tokenizer"]
        self.threshold = DEFAULT_THRESHOLD
        self._text, self._detector = runners["text"], runners["detector"]

    def encode_text(self, prompts: list[str]) -> tuple[Any, Any]:
        """``P`` prompts -> (text features ``[P,L,D]`` fp32, attention mask ``[P,L]`` int64)."""
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise TypeError("prompts: expected a non-empty list of non-empty strings")
        tok = self.tokenizer([p.strip() for p in prompts], padding="max_length", max_length=self.text_len,
                             truncation=True, return_tensors="pt")
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        return self._text(ids, mask)[0], mask

    def detect(self, images: Any, prompts: str | list[str], *, threshold: float | None = None) -> Sam3Detections:
        """Instances of the prompted concept: the union mask plus every query's score and box.

        Args:
            images: ``[B,3,H,W]`` float sRGB in [0,1], any size (resized to ``input_size``², aspect not kept).
            prompts: one concept for the whole batch (``"person"``) or a list of ``B`` (one per image).
            threshold: instance-score threshold in [0,1]; ``None`` = ``self.threshold``.
        """
        x = check_images(images).to(self.device)
        b, _, h, w = x.shape
        names = [prompts] * b if isinstance(prompts, str) else list(prompts)
        if len(names) != b:
            raise ValueError(f"prompts: expected one string or a list of {b} (one per image), got {len(names)}")
        thr = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= thr <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {thr}")
        unique = list(dict.fromkeys(names))  # each distinct prompt through the text tower once
        feats, mask = self.encode_text(unique)
        index = torch.tensor([unique.index(n) for n in names], device=self.device)
        logits, scores, boxes = self._detector(resize_square(x, self.input_size), feats[index], mask[index])
        keep = scores > thr
        # union at the mask decoder's resolution, then one bilinear upsample (not one per instance)
        union = (logits.sigmoid() * keep[:, :, None, None]).amax(dim=1, keepdim=True)
        union = resize_back(union, (h, w))[:, 0].clamp(0, 1)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
        return Sam3Detections(mask=union, scores=scores, boxes=boxes * scale, keep=keep)

    def __call__(self, images: Any, prompts: str | list[str], *, threshold: float | None = None) -> Any:
        """Soft foreground mask ``[B,H,W]`` fp32 in [0,1] of the prompted concept (see :meth:`detect`)."""
        return self.detect(images, prompts, threshold=threshold).mask


@register_engine(KIND)
def sam3_flavors() -> dict[str, EngineSpec]:
    tiny = EngineSpec(
        KIND, "tiny", _build, Sam3Engine, input_size=TINY["image_size"],
        config={**TINY, "sam3": _tiny_config(TINY["image_size"], TINY["width"], TINY["queries"])},
        description="tiny SAM3 (all widths 32, 1-2 layers, 112², 8 queries), random weights; tests",
    )
    real = EngineSpec(
        KIND, "sam3", _build, Sam3Engine, input_size=1008, hf_id=HF_ID,
        config={"image_size": 1008, "queries": 200},
        description="SAM 3 (ViT-L/14 PE backbone, CLIP text encoder, DETR detector) at 1008²; weights required",
        random_build=False,
    )
    return {"tiny": tiny, "sam3": real, "base": real}
