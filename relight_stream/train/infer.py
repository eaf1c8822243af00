"""``relight-stream infer``: relight photos with a trained IP2P pipeline; validation grids during training.

Reads a pipeline folder (``train``'s ``final/``, or any diffusers IP2P / SDXL-IP2P folder) and a photo or a
folder of photos. Writes the edited image(s) and a comparison sheet (photo | model input | output).

Preprocessing is the training data's: the photo is resized (short side) and centre-cropped to
``resolution``², the subject is segmented and composited on sRGB grey 128 (``segment_input``; the same mask
convention as ``generate``), then the pipeline runs with text and image guidance.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relight_stream.config import InferConfig, RunConfig
from relight_stream.fileio import atomic_write
from relight_stream.train.data import decode_rgb, resolve_shards

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
GREY = (128, 128, 128)


def comparison_sheet(rows: list[list[np.ndarray]], *, pad: int = 4) -> np.ndarray:
    """Tile equally sized ``HW3`` uint8 images, one list per row, on a white background."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y : y + h, x : x + w] = img
    return sheet


def save_image(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), quality=95)
    atomic_write(str(path), buf.getvalue())


def composite_on_grey(rgb_HW3: np.ndarray, mask_HW: np.ndarray) -> np.ndarray:
    """The subject (soft mask, 0–1) over neutral grey 128, composited in linear light as ``generate`` does."""
    from relight_stream.kernels.color import linear_to_srgb_u8, srgb_to_linear
    from relight_stream.kernels.render import composite

    return np.asarray(linear_to_srgb_u8(composite(srgb_to_linear(rgb_HW3), mask_HW)), np.uint8)


def segment_and_composite(images: list[np.ndarray], cfg: InferConfig, run: RunConfig) -> list[np.ndarray]:
    """SEGMENTATION HOOK: the same segmenter ``generate`` uses, then composite on grey.

    Raises:
        ValueError: segmentation was requested but ``relight_stream.pipeline.segment`` is unavailable.
    """
    try:
        from relight_stream.pipeline.segment import SegmentStage
        from relight_stream.sample import SampleBatch
    except ImportError as exc:
        raise ValueError(f"infer: segmentation requested but unavailable ({exc}); use --no-segment") from exc
    stage = SegmentStage(cfg.segment, run)
    stage.setup()
    batch = stage.process(SampleBatch(keys=[f"img{i}" for i in range(len(images))],
                                      arrays={"rgb_BHW3": np.stack(images)}))
    stage.teardown()
    out = []
    for i, img in enumerate(images):
        if not batch.keep_B[i]:
            log.warning("segmentation failed (%s): using image %d without compositing", batch.drop_reason[i], i)
            out.append(img)
        else:
            out.append(composite_on_grey(img, np.asarray(batch["mask_BHW"][i], np.float32)))
    return out


def _list_images(path: str) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and not f.name.startswith("."))
    elif p.is_file():
        files = [p]
    else:
        raise ValueError(f"infer: --image {path}: no such file or folder")
    if not files:
        raise ValueError(f"infer: no images in {path}")
    return files


def _device(run: RunConfig) -> str:
    return "cuda" if run.device == "auto" and torch.cuda.is_available() else ("cpu" if run.device == "auto" else
                                                                              run.device)


def edit(pipe: Any, images: list[np.ndarray], instructions: list[str], *, steps: int, guidance: float,
         image_guidance: float, seed: int, batch_size: int = 8) -> list[np.ndarray]:
    """Run the IP2P pipeline on equally sized ``HW3`` uint8 images, ``batch_size`` at a time.

    Every image gets its own generator seeded with ``seed``, so an output does not depend on its batch.
    """
    import inspect

    from PIL import Image

    sized = "height" in inspect.signature(pipe.__call__).parameters  # SDXL defaults to its native size otherwise
    size = {"height": images[0].shape[0], "width": images[0].shape[1]} if sized and images else {}
    outs: list[np.ndarray] = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        gens = [torch.Generator(device=pipe.device).manual_seed(seed) for _ in chunk]
        res = pipe(instructions[i : i + batch_size], image=[Image.fromarray(x) for x in chunk],
                   num_inference_steps=steps, guidance_scale=guidance, image_guidance_scale=image_guidance,
                   generator=gens, output_type="np", **size).images
        outs.extend(np.clip(np.rint(r * 255), 0, 255).astype(np.uint8) for r in res)
    return outs


def run_infer(cfg: InferConfig, run: RunConfig) -> int:
    """Preprocess like training, edit, write ``cfg.out`` (a file for one image, else a folder) + a sheet."""
    if not cfg.model or not Path(cfg.model).expanduser().is_dir():
        raise ValueError(f"infer: --model {cfg.model!r} is not a pipeline folder")
    if not cfg.instruction:
        raise ValueError("infer: --instruction is required")
    if not cfg.out:
        raise ValueError("infer: --out is required")
    files = _list_images(cfg.image)
    out = Path(cfg.out)
    single = len(files) == 1 and out.suffix.lower() in IMAGE_EXTS
    if len(files) > 1 and out.suffix.lower() in IMAGE_EXTS:
        raise ValueError(f"infer: --out {out} names an image, but --image {cfg.image} holds {len(files)} photos")
    from diffusers import DiffusionPipeline

    photos = []
    for f in files:  # a photo that cannot be read is an input error here: the user named it
        try:
            photos.append(decode_rgb(f.read_bytes(), cfg.resolution))
        except OSError as exc:
            raise ValueError(f"infer: cannot read {f}: {exc}") from exc
    inputs = segment_and_composite(photos, cfg, run) if cfg.segment_input else photos
    pipe = DiffusionPipeline.from_pretrained(str(Path(cfg.model).expanduser())).to(_device(run))
    pipe.set_progress_bar_config(disable=True)
    outs = edit(pipe, inputs, [cfg.instruction] * len(inputs), steps=cfg.steps, guidance=cfg.guidance,
                image_guidance=cfg.image_guidance, seed=run.seed if run.seed is not None else 0)
    paths = [out] if single else [out / f"{f.stem}.png" for f in files]
    for img, p in zip(outs, paths):
        save_image(img, p)
    sheet = out.with_name(out.stem + "_sheet.jpg") if single else out / "sheet.jpg"
    save_image(comparison_sheet([[p, i, o] for p, i, o in zip(photos, inputs, outs)]), sheet)
    log.info("infer: wrote %d image(s) and %s", len(outs), sheet)
    return 0


def load_validation_samples(shards: list[str], *, resolution: int, count: int) -> list[dict[str, Any]]:
    """The first ``count`` samples of the first shard, decoded (fixed across the run)."""
    from webdataset.tariterators import tarfile_samples

    samples = []
    for rec in tarfile_samples([{"url": resolve_shards(shards)[0]}]):
        try:
            samples.append({"input": decode_rgb(rec["input.jpg"], resolution),
                            "target": decode_rgb(rec["target.jpg"], resolution),
                            "instruction": rec["instruction.txt"].decode("utf-8").strip()})
        except (KeyError, OSError, ValueError):
            continue
        if len(samples) == count:
            break
    return samples


def validation_grid(model: Any, unet: Any, samples: list[dict[str, Any]], path: Path, *, resolution: int,
                    seed: int, steps: int = 20) -> None:
    """Write ``input | output | target`` rows for the validation samples."""
    from relight_stream.train.model import make_pipeline

    unet.eval()
    pipe = make_pipeline(model, unet)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        outs = edit(pipe, [s["input"] for s in samples], [s["instruction"] for s in samples], steps=steps,
                    guidance=7.5, image_guidance=1.5, seed=seed)
    save_image(comparison_sheet([[s["input"], o, s["target"]] for s, o in zip(samples, outs)]), path)
