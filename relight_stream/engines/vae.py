"""VAE encoder engine (diffusers ``AutoencoderKL``): images -> latent distribution mean.

Reads images ``[B,3,H,W]`` float in [-1,1] (H, W multiples of 8). Writes the latent mean ``[B,4,H/8,W/8]`` fp32,
*unscaled* (multiply by ``engine.scaling_factor`` for the diffusion model's latent space, as diffusers does).
Only the encoder and ``quant_conv`` are part of the exported ``encoder`` part; the input size is the caller's
(no resize): the ONNX graph has dynamic height and width, TensorRT plans are built for the flavor's sample size.

Flavors: ``tiny`` (block channels 16/32/32/32, one layer per block: still 8× downsampling; random weights),
``sd15`` (``base``; the SD 1.x VAE architecture) and ``sdxl`` (same architecture, scaling 0.13025, fp32 upcast).
Real weights: a VAE repo (``stabilityai/sd-vae-ft-mse@<commit>``, ``madebyollin/sdxl-vae-fp16-fix@<commit>``), a
pipeline repo whose ``vae/`` subfolder holds it (``stable-diffusion-v1-5/stable-diffusion-v1-5@<commit>``), or a
local folder of either layout.
"""

from __future__ import annotations

from typing import Any

import torch

from relight_stream.engines.common import check_images
from relight_stream.engines.registry import register_engine
from relight_stream.engines.spec import BuiltModel, EngineSpec, PartIO, WeightsRef, fetch_weights

_DOWN = "DownEncoderBlock2D"
_UP = "UpDecoderBlock2D"
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "block_out_channels": [16, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64,
        "latent_channels": 4, "down_block_types": [_DOWN] * 4, "up_block_types": [_UP] * 4,
    },
    "sd15": {
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512,
        "latent_channels": 4, "down_block_types": [_DOWN] * 4, "up_block_types": [_UP] * 4, "scaling_factor": 0.18215,
    },
    "sdxl": {
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024,
        "latent_channels": 4, "down_block_types": [_DOWN] * 4, "up_block_types": [_UP] * 4, "scaling_factor": 0.13025,
        "force_upcast": True,
    },
}
HF_IDS = {"sd15": "stabilityai/sd-vae-ft-mse", "sdxl": "madebyollin/sdxl-vae-fp16-fix"}


def _build(spec: EngineSpec, weights: WeightsRef) -> BuiltModel:
    from diffusers import AutoencoderKL

    if weights.source == "random":
        vae = AutoencoderKL(**spec.config)
    else:
        path = fetch_weights(weights)
        sub = path / "vae" if (path / "vae" / "config.json").is_file() else path
        vae = AutoencoderKL.from_pretrained(str(sub))
    size = spec.input_size
    return BuiltModel(
        parts={"encoder": _Encoder(vae.eval())},
        io={"encoder": PartIO(("images",), ("latent_mean",), {"images": {2: "height", 3: "width"},
                                                               "latent_mean": {2: "height8", 3: "width8"}})},
        example_inputs={"encoder": lambda b: (torch.rand(b, 3, size, size) * 2 - 1,)},
        extras={"scaling_factor": float(vae.config.scaling_factor), "model": vae},
    )


class _Encoder(torch.nn.Module):
    """images ``[B,3,H,W]`` in [-1,1] -> latent mean ``[B,C,H/8,W/8]``."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.encoder, self.quant_conv = vae.encoder, vae.quant_conv

    def forward(self, images: Any) -> Any:
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return (moments.chunk(2, dim=1)[0],)


class VaeEngine:
    """``encode(images [B,3,H,W] in [-1,1]) -> [B,4,H/8,W/8]`` latent mean; ``scaling_factor`` attribute."""

    def __init__(self, spec: EngineSpec, runners: dict[str, Any], built: BuiltModel, device: Any) -> None:
        self.spec, self.device = spec, device
        self._encoder = runners["encoder"]
        self.scaling_factor: float = built.extras["scaling_factor"]

    def encode(self, images: Any) -> Any:
        x = check_images(images, lo=-1.0).to(self.device)
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"vae.encode: H and W must be multiples of 8, got {tuple(x.shape[-2:])}")
        return self._encoder(x)[0]


@register_engine("vae")
def vae_flavors() -> dict[str, EngineSpec]:
    specs = {
        flavor: EngineSpec(
            "vae", flavor, _build, VaeEngine, input_size=cfg["sample_size"], hf_id=HF_IDS.get(flavor), config=cfg,
            description=("tiny AutoencoderKL (16/32/32/32), random weights; tests" if flavor == "tiny"
                         else f"{flavor} AutoencoderKL encoder ({cfg['sample_size']}²)"),
        )
        for flavor, cfg in CONFIGS.items()
    }
    specs["base"] = specs["sd15"]
    return specs
