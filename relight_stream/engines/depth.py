"""Monocular depth engine (transformers' Depth Anything V2 and MiDaS 3.0 DPT).

Reads images ``[B,3,H,W]`` float sRGB in [0,1]; they are resized (square, bilinear) to the model's input side and
normalised inside the exported ``net`` part (ImageNet mean/std for Depth Anything, 0.5/0.5 for MiDaS DPT).
Writes relative inverse depth ``[B,H,W]`` fp32 at the input resolution: larger = nearer, arbitrary scale and
shift (callers normalise it, e.g. to [0,1] over the foreground).

Flavors: ``tiny`` (4-layer width-32 DINOv2 + Depth Anything head at 56², random weights with the neck and head
re-initialised — the stock init makes a tiny DPT output ≈ 0), ``midas-dpt-tiny`` (the MiDaS path: transformers'
DPTForDepthEstimation on a plain 4-layer width-32 ViT at 64², 0.5/0.5 normalisation, random weights, re-initialised
the same way), ``depth-anything-v2-s/-b/-l`` (``base`` = b), ``midas-dpt-hybrid`` and ``midas-dpt-large``. Real
weights: ``weights="<hf_id>@<commit>"`` (see each spec's ``hf_id``) or a local folder saved with ``save_pretrained``;
the config then comes from the weights.
"""

from __future__ import annotations

from typing import Any

import torch

from relight_stream.engines.common import check_images, resize_back, resize_square
from relight_stream.engines.registry import register_engine
from relight_stream.engines.spec import BuiltModel, EngineSpec, PartIO, WeightsRef, fetch_weights

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _dav2(hidden: int, layers: int, heads: int, out: list[int], neck: list[int], fusion: int, size: int) -> dict:
    return {
        "arch": "depth_anything",
        "backbone_config": {
            "model_type": "dinov2", "image_size": size, "patch_size": 14, "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": 4 * hidden,
            "out_indices": out, "reshape_hidden_states": False,
        },
        "reassemble_hidden_size": hidden, "neck_hidden_sizes": neck, "fusion_hidden_size": fusion,
    }


_DPT_COMMON = {"arch": "dpt", "image_size": 384, "use_auxiliary_head": False}
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {**_dav2(32, 4, 2, [1, 2, 3, 4], [8, 16, 32, 32], 16, 56), "head_hidden_size": 8},
    "midas-dpt-tiny": {  # plain-ViT DPT (as midas-dpt-large), 4x4 patches of 16 px
        **_DPT_COMMON, "image_size": 64, "patch_size": 16, "hidden_size": 32, "num_hidden_layers": 4,
        "num_attention_heads": 2, "intermediate_size": 128, "backbone_out_indices": [0, 1, 2, 3],
        "neck_hidden_sizes": [16, 16, 32, 32], "fusion_hidden_size": 16,
    },
    "depth-anything-v2-s": _dav2(384, 12, 6, [3, 6, 9, 12], [48, 96, 192, 384], 64, 518),
    "depth-anything-v2-b": _dav2(768, 12, 12, [3, 6, 9, 12], [96, 192, 384, 768], 128, 518),
    "depth-anything-v2-l": _dav2(1024, 24, 16, [5, 12, 18, 24], [256, 512, 1024, 1024], 256, 518),
    "midas-dpt-large": {
        **_DPT_COMMON, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "intermediate_size": 4096, "backbone_out_indices": [5, 11, 17, 23],
        "neck_hidden_sizes": [256, 512, 1024, 1024],
    },
    "midas-dpt-hybrid": {
        **_DPT_COMMON, "is_hybrid": True, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "backbone_out_indices": [2, 5, 8, 11], "neck_hidden_sizes": [256, 512, 768, 768],
        "backbone_featmap_shape": [1, 1024, 24, 24], "neck_ignore_stages": [0, 1],
        "backbone_config": {  # BiT-R50 stem + 3 stages, as in Intel/dpt-hybrid-midas
            "layer_type": "bottleneck", "depths": [3, 4, 9], "out_features": ["stage1", "stage2", "stage3"],
            "embedding_dynamic_padding": True, "global_padding": "same",
        },
    },
}
HF_IDS = {
    "depth-anything-v2-s": "depth-anything/Depth-Anything-V2-Small-hf",
    "depth-anything-v2-b": "depth-anything/Depth-Anything-V2-Base-hf",
    "depth-anything-v2-l": "depth-anything/Depth-Anything-V2-Large-hf",
    "midas-dpt-hybrid": "Intel/dpt-hybrid-midas",
    "midas-dpt-large": "Intel/dpt-large",
}


def _build(spec: EngineSpec, weights: WeightsRef) -> BuiltModel:
    from transformers import AutoModelForDepthEstimation

    cfg = dict(spec.config)
    arch = cfg.pop("arch")
    if weights.source != "random":
        model = AutoModelForDepthEstimation.from_pretrained(str(fetch_weights(weights)))
    elif arch == "depth_anything":
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

        model = DepthAnythingForDepthEstimation(DepthAnythingConfig(**cfg))
    else:
        from transformers import DPTConfig, DPTForDepthEstimation

        model = DPTForDepthEstimation(DPTConfig(**cfg))
    if weights.source == "random":
        _reinit_random(model, arch)
    mean, std = IMAGENET if arch == "depth_anything" else HALF
    net = _DepthNet(model.eval(), mean, std)
    size = spec.input_size
    return BuiltModel(
        parts={"net": net},
        io={"net": PartIO(("pixels",), ("depth",))},
        example_inputs={"net": lambda b: (torch.rand(b, 3, size, size),)},
        extras={"model": model},
    )


def _reinit_random(model: Any, arch: str) -> None:
    """Re-initialise a random-weight model's neck and head so its depth output is not ≈ 0 (in place)."""
    # HF's init (std 0.02 through many convs) makes the depth output ≈ 0; torch's default conv init does not
    layers = (torch.nn.Conv2d, torch.nn.ConvTranspose2d) + ((torch.nn.Linear,) if arch == "dpt" else ())
    for mod in [*model.neck.modules(), *model.head.modules()]:
        if isinstance(mod, layers):  # DPT also has Linear readout projections in its neck
            mod.reset_parameters()
    if arch == "dpt":
        # the DPT head ends conv1x1 -> ReLU over a ReLU'd input: a negative bias can zero every pixel; non-negative
        # weights and no bias keep the output > 0 and image-dependent whatever the seed
        last = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            last.weight.abs_()
            last.bias.zero_()


class _DepthNet(torch.nn.Module):
    """pixels ``[B,3,S,S]`` in [0,1] -> relative inverse depth ``[B,S',S']`` (model resolution)."""

    def __init__(self, model: Any, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, pixels: Any) -> Any:
        return (self.model(pixel_values=(pixels - self.mean) / self.std).predicted_depth,)


class DepthEngine:
    """``engine(images [B,3,H,W] in [0,1]) -> [B,H,W]`` relative inverse depth (larger = nearer)."""

    def __init__(self, spec: EngineSpec, runners: dict[str, Any], built: BuiltModel, device: Any) -> None:
        self.spec, self.device, self.input_size = spec, device, spec.input_size
        self._net = runners["net"]

    def __call__(self, images: Any) -> Any:
        x = check_images(images).to(self.device)
        hw = tuple(x.shape[-2:])
        depth = self._net(resize_square(x, self.input_size))[0]
        return resize_back(depth.unsqueeze(1), hw)[:, 0]


@register_engine("depth")
def depth_flavors() -> dict[str, EngineSpec]:
    specs = {}
    for flavor, cfg in CONFIGS.items():
        size = cfg.get("image_size") or cfg["backbone_config"]["image_size"]
        desc = {
            "tiny": "tiny Depth Anything (DINOv2 width 32, 4 layers, 56²), random weights; tests",
            "midas-dpt-tiny": "tiny MiDaS DPT (plain ViT width 32, 4 layers, 64²), random weights; tests",
        }.get(flavor, f"{flavor} at {size}²")
        specs[flavor] = EngineSpec(
            "depth", flavor, _build, DepthEngine, input_size=size, hf_id=HF_IDS.get(flavor), config=cfg,
            description=desc,
        )
    specs["base"] = specs["depth-anything-v2-b"]
    return specs
