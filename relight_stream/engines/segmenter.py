"""Box-prompted segmentation engine: SAM 2.1 (the ``sam2`` package, built from its own Hydra YAML configs).

Reads images ``[B,3,H,W]`` float sRGB in [0,1] and one box per image ``[B,4]`` (x0, y0, x1, y1 in pixels of that
image), optionally with point prompts ``[B,N,2]`` (x, y in pixels; labels ``[B,N]``: 1 subject, 0 background,
-1 padding) alongside the box — eager and compile backends only (the exported decoder graphs take the box alone).
The image is resized (square, as SAM2's own transform does) to the model's side and normalised with ImageNet
mean/std inside the ``image_encoder`` part; box and points are scaled to that frame. Writes mask probabilities
``[B,H,W]`` fp32 in [0,1] at the input resolution (sigmoid of the decoder's low-res logits, bilinearly upsampled).

Two parts, exported separately: ``image_encoder`` (pixels -> image embedding + two high-res feature maps, with
SAM2's ``no_mem_embed`` already added) and ``mask_decoder`` (features + box -> low-res mask logits; prompt
encoder included; single-mask output with SAM2's stability-based multimask fallback, as in its image predictor).

Why the ``sam2`` package and not transformers' ``Sam2Model``: ``sam2==1.1.0`` imports here (built with
``SAM2_BUILD_CUDA=0``; only the optional hole-filling CUDA extension is missing), its YAML configs are the reference
architectures, and its checkpoints (``facebook/sam2.1-hiera-*``) load without conversion.

Flavors: ``tiny`` (Hiera embed 16, 5 blocks, FPN width 32, 128² input; random weights, for tests),
``hiera-t``, ``hiera-s``, ``hiera-b+`` (``base``), ``hiera-l`` at 1024². Real weights:
``weights="facebook/sam2.1-hiera-small@<commit>"`` (file ``sam2.1_hiera_small.pt``) or a local ``.pt`` checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from relight_stream.engines.common import check_images, resize_back, resize_square
from relight_stream.engines.registry import register_engine
from relight_stream.engines.spec import BuiltModel, EngineSpec, PartIO, WeightsRef, fetch_weights
from relight_stream.engines.weights import load_state_file

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_POSTPROCESS = {  # what sam2.build_sam2(apply_postprocessing=True) adds for image prediction
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
FLAVORS = {  # flavor -> (yaml under sam2/configs/sam2.1, hf repo, checkpoint file)
    "hiera-t": ("sam2.1_hiera_t.yaml", "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt"),
    "hiera-s": ("sam2.1_hiera_s.yaml", "facebook/sam2.1-hiera-small", "sam2.1_hiera_small.pt"),
    "hiera-b+": ("sam2.1_hiera_b+.yaml", "facebook/sam2.1-hiera-base-plus", "sam2.1_hiera_base_plus.pt"),
    "hiera-l": ("sam2.1_hiera_l.yaml", "facebook/sam2.1-hiera-large", "sam2.1_hiera_large.pt"),
}
TINY = {"image_size": 128, "embed_dim": 16, "d_model": 32, "mem_dim": 16}


def _tiny_overrides(m: Any) -> None:
    """Shrink a hiera-t model config in place to the ``tiny`` flavor (see ``TINY``)."""
    s, e, d, md = TINY["image_size"], TINY["embed_dim"], TINY["d_model"], TINY["mem_dim"]
    m.image_size = s
    trunk = m.image_encoder.trunk
    # the global-attention block must not be a q-pool (stage-start) block: with window 0 the pooled window is 0
    trunk.embed_dim, trunk.stages, trunk.global_att_blocks = e, [1, 1, 2, 1], [3]
    trunk.window_spec, trunk.window_pos_embed_bkg_spatial_size = [4, 4, 4, 4], [4, 4]
    neck = m.image_encoder.neck
    neck.d_model, neck.backbone_channel_list = d, [8 * e, 4 * e, 2 * e, e]
    neck.position_encoding.num_pos_feats = d
    att = m.memory_attention
    att.d_model, att.num_layers = d, 1
    att.layer.d_model, att.layer.dim_feedforward = d, 2 * d
    for a in (att.layer.self_attention, att.layer.cross_attention):
        a.embedding_dim, a.feat_sizes = d, [s // 16, s // 16]
    att.layer.cross_attention.kv_in_dim = md
    enc = m.memory_encoder
    enc.out_dim, enc.in_dim = md, d
    enc.position_encoding.num_pos_feats = md
    enc.mask_downsampler.embed_dim = d
    enc.fuser.layer.dim, enc.fuser.num_layers = d, 1


def _build(spec: EngineSpec, weights: WeightsRef) -> BuiltModel:
    from pathlib import Path

    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    yaml_name = spec.config["yaml"]
    cfg = OmegaConf.load(Path(sam2.__file__).parent / "configs" / "sam2.1" / yaml_name)
    if spec.flavor == "tiny":
        _tiny_overrides(cfg.model)
    cfg.model.sam_mask_decoder_extra_args = dict(_POSTPROCESS)
    model = instantiate(cfg.model, _recursive_=True)
    if weights.source != "random":
        state = load_state_file(fetch_weights(weights, spec.hf_file))
        missing, unexpected = model.load_state_dict(state.get("model", state), strict=False)
        if missing or unexpected:
            raise ValueError(f"SAM2 checkpoint does not match {spec.flavor}: missing={missing} unexpected={unexpected}")
    model.eval()
    size = model.image_size
    encoder, decoder = _ImageEncoder(model), _MaskDecoder(model)
    c = model.hidden_dim  # embed at stride 16; conv_s0/conv_s1 project strides 4/8 to c/8 and c/4 channels
    shapes = [(c, size // 16, size // 16), (c // 8, size // 4, size // 4), (c // 4, size // 8, size // 8)]

    def example_decoder(b: int) -> tuple[Any, ...]:
        boxes = torch.tensor([[0.2, 0.25, 0.7, 0.8]]).repeat(b, 1) * size
        return (*(torch.randn(b, *shp) for shp in shapes), boxes)

    return BuiltModel(
        parts={"image_encoder": encoder, "mask_decoder": decoder},
        io={
            "image_encoder": PartIO(("pixels",), ("image_embed", "feat_s0", "feat_s1")),
            "mask_decoder": PartIO(("image_embed", "feat_s0", "feat_s1", "boxes"), ("mask_logits",)),
        },
        example_inputs={"image_encoder": lambda b: (torch.rand(b, 3, size, size),), "mask_decoder": example_decoder},
        extras={"model": model},
    )


class _ImageEncoder(torch.nn.Module):
    """pixels ``[B,3,S,S]`` in [0,1] -> (embed ``[B,C,S/16,S/16]``, feat_s0 ``[B,C/8,S/4,S/4]``, feat_s1)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.image_encoder = model.image_encoder
        self.conv_s0, self.conv_s1 = model.sam_mask_decoder.conv_s0, model.sam_mask_decoder.conv_s1
        self.no_mem_embed = model.no_mem_embed  # [1,1,C]
        self.register_buffer("mean", torch.tensor(IMAGENET[0]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET[1]).view(1, 3, 1, 1))

    def forward(self, pixels: Any) -> Any:
        fpn = self.image_encoder((pixels - self.mean) / self.std)["backbone_fpn"]
        embed = fpn[-1] + self.no_mem_embed.reshape(1, -1, 1, 1)
        return embed, self.conv_s0(fpn[0]), self.conv_s1(fpn[1])


class _MaskDecoder(torch.nn.Module):
    """(embed, feat_s0, feat_s1, boxes ``[B,4]`` xyxy in model-input pixels) -> mask logits ``[B,1,S/4,S/4]``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        super()._apply(fn, recurse)
        self.prompt_encoder.float()  # a dtype cast of the decoder leaves the (tiny) prompt encoder in fp32
        return self

    def forward(self, embed: Any, feat_s0: Any, feat_s1: Any, boxes: Any, points: Any = None,
                point_labels: Any = None) -> Any:
        coords = boxes.reshape(-1, 2, 2)
        labels = torch.tensor([[2, 3]], dtype=torch.int32, device=boxes.device).expand(coords.shape[0], 2)
        if points is not None:  # SAM's order: clicks first, then the box corners (labels 2, 3)
            coords = torch.cat([points.to(coords.dtype), coords], dim=1)
            labels = torch.cat([point_labels.to(torch.int32), labels], dim=1)
        # The prompt encoder stays fp32 (see _apply): SAM2 pads the points with a float32 zero point, which would
        # otherwise promote bf16/fp16 coordinates and meet a low-precision positional-encoding matrix.
        sparse, dense = self.prompt_encoder(points=(coords.float(), labels), boxes=None, masks=None)
        sparse, dense = sparse.to(embed.dtype), dense.to(embed.dtype)
        logits, _iou, _tokens, _obj = self.mask_decoder(
            image_embeddings=embed,
            image_pe=self.prompt_encoder.get_dense_pe().to(embed.dtype),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=[feat_s0, feat_s1],
        )
        return (logits,)


class SegmenterEngine:
    """``engine(images [B,3,H,W], boxes [B,4], points=None, labels=None) -> [B,H,W]`` mask probabilities in [0,1].

    Attributes:
        supports_points: Whether point prompts can be passed (the decoder runs in PyTorch: eager/compile).
    """

    def __init__(self, spec: EngineSpec, runners: dict[str, Any], built: BuiltModel, device: Any) -> None:
        self.spec, self.device, self.input_size = spec, device, spec.input_size
        self._encoder, self._decoder = runners["image_encoder"], runners["mask_decoder"]
        self.supports_points = isinstance(getattr(self._decoder, "module", None), _MaskDecoder)

    def __call__(self, images: Any, boxes: Any, points: Any = None, labels: Any = None) -> Any:
        x = check_images(images).to(self.device)
        b, _, h, w = x.shape
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
        if boxes.shape != (b, 4):
            raise ValueError(f"boxes: expected shape [{b},4] (x0,y0,x1,y1 in pixels), got {tuple(boxes.shape)}")
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
        pts = self._check_points(points, labels, b) if points is not None else None
        feats = self._encoder(resize_square(x, self.input_size))
        boxes = boxes / scale * self.input_size
        if pts is None:
            logits = self._decoder(*feats, boxes)[0]
        else:
            runner = self._decoder  # eager/compile runner: call its module with the extra prompt inputs
            with torch.inference_mode():
                args = runner._prepare((*feats, boxes, pts[0] / scale[:2] * self.input_size))
                logits = runner.module(*args, pts[1])[0].float()
        return torch.sigmoid(resize_back(logits, (h, w))[:, 0])

    def _check_points(self, points: Any, labels: Any, b: int) -> tuple[Any, Any]:
        if not self.supports_points:
            raise ValueError(f"point prompts need the eager or compile backend, not {getattr(self, 'backend', '?')}")
        points = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        if points.ndim != 3 or points.shape[0] != b or points.shape[2] != 2:
            raise ValueError(f"points: expected shape [{b},N,2] (x,y in pixels), got {tuple(points.shape)}")
        labels = (torch.ones(points.shape[:2], dtype=torch.int32) if labels is None
                  else torch.as_tensor(labels, dtype=torch.int32)).to(self.device)
        if labels.shape != points.shape[:2]:
            raise ValueError(f"labels: expected shape {tuple(points.shape[:2])}, got {tuple(labels.shape)}")
        return points, labels


@register_engine("segmenter")
def segmenter_flavors() -> dict[str, EngineSpec]:
    specs = {
        "tiny": EngineSpec(
            "segmenter", "tiny", _build, SegmenterEngine, input_size=TINY["image_size"],
            config={"yaml": "sam2.1_hiera_t.yaml", **TINY},
            description="tiny SAM2 (Hiera embed 16, 5 blocks, FPN 32, 128²), random weights; tests",
        )
    }
    for flavor, (yaml_name, repo, ckpt) in FLAVORS.items():
        specs[flavor] = EngineSpec(
            "segmenter", flavor, _build, SegmenterEngine, input_size=1024, hf_id=repo, hf_file=ckpt,
            config={"yaml": yaml_name}, description=f"SAM 2.1 {flavor} at 1024²",
        )
    specs["base"] = specs["hiera-b+"]
    return specs
