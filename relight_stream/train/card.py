"""Model card (``README.md``) for a trained pipeline folder: data, config, metrics, conventions.

Writes ``<final>/README.md`` with a YAML header the Hugging Face Hub reads (library, pipeline tag, base model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from relight_stream.config import TrainConfig, config_to_dict


def write_card(out: Path, *, cfg: TrainConfig, model: Any, shards: list[str], losses: list[float],
               counters: dict[str, int], seed: int, step: int) -> Path:
    """Write the card; returns its path."""
    base = model.source if model.revision is None else f"{model.source}@{model.revision}"
    header = {"library_name": "diffusers", "pipeline_tag": "image-to-image",
              "tags": ["instruct-pix2pix", "relighting", "relight-stream"]}
    if not model.source.startswith("tiny"):
        header["base_model"] = model.source
    shown = shards if len(shards) <= 10 else [*shards[:5], f"... ({len(shards)} shards)", *shards[-2:]]
    t, i = cfg.text_dropout, cfg.image_dropout
    loss_line = ", ".join(f"{x:.4f}" for x in losses[-10:]) if losses else "n/a"
    text = f"""---
{yaml.safe_dump(header, sort_keys=False).strip()}
---

# Relighting InstructPix2Pix ({'SDXL' if model.kind == 'sdxl' else 'SD'})

Fine-tuned with `relight-stream train` from **{base}** for {step} steps (seed {seed}) at a training resolution of
**{cfg.resolution}x{cfg.resolution} px** (recorded in `training_stats.json`; `relight-stream infer` uses it unless
given `--resolution`).

## Data

{len(shards)} WebDataset shard(s) of (input, instruction, target) triplets made by `relight-stream generate`:
the input is the relit/degraded subject composited on sRGB grey 128, the target is the original photo.

```
{chr(10).join(shown)}
```

## Use

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("<this folder>")
out = pipe("<lighting instruction>", image=subject_on_grey, image_guidance_scale=1.5).images[0]
```

or `relight-stream infer --model <this folder> --image photo.jpg --instruction "..." --out out.png`, which
applies the training preprocessing (segment, composite on grey 128, resize) first; a non-square photo is
letterboxed on grey 128 at {cfg.resolution}² and the output cut back to the photo's aspect ratio (`--fit pad`).

Conventions: image condition = VAE latent mode of the input (unscaled); target latent = sample x scaling
factor; conditioning dropout for classifier-free guidance, with p ~ U[0, 1) per sample: the text is dropped
for p < {2 * t:g}, the image for {t:g} <= p < {t + 2 * i:g}; EMA weights {'saved' if cfg.ema else 'not used'}.

## Metrics

- last logged training losses: {loss_line}
- non-finite steps skipped: {counters.get('nonfinite_total', 0)}

## Training config

```yaml
{yaml.safe_dump(config_to_dict(cfg), sort_keys=False).strip()}
```
"""
    path = out / "README.md"
    path.write_text(text)
    stats = {"losses": losses, "step": step, "seed": seed, "resolution": cfg.resolution, **counters}
    (out / "training_stats.json").write_text(json.dumps(stats))
    return path
