"""``relight-stream infer``: relight photos with a trained IP2P pipeline; validation grids during training.

Reads a pipeline folder (``train``'s ``final/``, or any diffusers IP2P / SDXL-IP2P folder) and a photo or a
folder of photos. Writes the edited image(s) and a comparison sheet (photo | model input | output).

Preprocessing is the training data's: the photo (EXIF orientation applied) is fitted to ``resolution`` — by
default the model folder's training resolution (``training_stats.json``) — the subject is segmented and
composited on sRGB grey 128 (``segment_input``; the same mask convention as ``generate``), then the pipeline
runs with text and image guidance. ``fit`` says how a non-square photo meets the square the model was trained
on:

* ``pad`` (default): the photo, long side = ``resolution``, is letterboxed on a ``resolution``² square of grey
  128 (the grey the subject is composited on, so the pad is seamless); the output is cut back to the photo's
  box, so it keeps the photo's aspect ratio with long side = ``resolution``.
* ``keep``: the photo is resized to long side = ``resolution`` with both sides multiples of 8 and run as it is
  (the IP2P pipelines accept non-square images); the output has that size.
* ``crop``: short side resized to ``resolution``, centre square cropped (the output is ``resolution``²).
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
from relight_stream.train.model import pick_resolution

log = logging.getLogger(__name__)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
GREY = (128, 128, 128)


def comparison_sheet(rows: list[list[np.ndarray]], *, pad: int = 4) -> np.ndarray:
    """Tile ``HW3`` uint8 images, one list per row, on a white background; each is centred in a cell of the
    largest height and width."""
    h = max(img.shape[0] for row in rows for img in row)
    w = max(img.shape[1] for row in rows for img in row)
    cols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ih, iw = img.shape[:2]
            y, x = pad + i * (h + pad) + (h - ih) // 2, pad + j * (w + pad) + (w - iw) // 2
            sheet[y : y + ih, x : x + iw] = img
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
    out: list[np.ndarray] = list(images)
    try:
        for idx in _by_shape(images):  # photos of one size are segmented as one batch
            batch = stage.process(SampleBatch(keys=[f"img{i}" for i in idx],
                                              arrays={"rgb_BHW3": np.stack([images[i] for i in idx])}))
            for b, i in enumerate(idx):
                if not batch.keep_B[b]:
                    log.warning("segmentation failed (%s): using image %d without compositing",
                                batch.drop_reason[b], i)
                else:
                    out[i] = composite_on_grey(images[i], np.asarray(batch["mask_BHW"][b], np.float32))
    finally:
        stage.teardown()
    return out


def _by_shape(images: list[np.ndarray]) -> list[list[int]]:
    """Indices of ``images`` grouped by shape, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.shape, []).append(i)
    return list(groups.values())


def load_photo(data: bytes) -> np.ndarray:
    """Image bytes -> ``HW3`` sRGB uint8 at full size, EXIF orientation applied (camera photos are upright)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)


def fit_photo(photo: np.ndarray, resolution: int, fit: str) -> np.ndarray:
    """The photo sized for ``fit`` (see the module docstring): ``crop`` -> ``resolution``² centre square;
    ``pad`` -> long side ``resolution`` (exact aspect); ``keep`` -> long side ``resolution``, sides multiples of 8."""
    from PIL import Image

    h, w = photo.shape[:2]
    if fit == "crop":
        s = resolution / min(w, h)
        size = (max(resolution, round(w * s)), max(resolution, round(h * s)))
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        img = Image.fromarray(photo).resize(size, Image.BICUBIC)
        return np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)
    s = resolution / max(w, h)
    if fit == "keep":
        size = (max(8, round(w * s / 8) * 8), max(8, round(h * s / 8) * 8))
    else:
        size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC), dtype=np.uint8)


def letterbox(img: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``img`` (sides <= ``resolution``) centred on a ``resolution``² square of grey 128; returns it and the
    content box ``(top, left, height, width)`` in px."""
    h, w = img.shape[:2]
    top, left = (resolution - h) // 2, (resolution - w) // 2
    canvas = np.empty((resolution, resolution, 3), np.uint8)
    canvas[:] = GREY
    canvas[top : top + h, left : left + w] = img
    return canvas, (top, left, h, w)


def unbox(out: np.ndarray, box: tuple[int, int, int, int], resolution: int) -> np.ndarray:
    """Cut the content ``box`` of a letterboxed input back out of the output (scaled if the output's side is not
    ``resolution``) at the content's size: the photo's aspect ratio, long side ``resolution``."""
    from PIL import Image

    top, left, h, w = box
    sy, sx = out.shape[0] / resolution, out.shape[1] / resolution
    cut = out[round(top * sy) : round((top + h) * sy), round(left * sx) : round((left + w) * sx)]
    if cut.shape[:2] != (h, w):
        cut = np.asarray(Image.fromarray(np.ascontiguousarray(cut)).resize((w, h), Image.BICUBIC), dtype=np.uint8)
    return np.ascontiguousarray(cut)


def infer_resolution(cfg: InferConfig) -> int:
    """``cfg.resolution``, else the model folder's training resolution (``training_stats.json``), else the model's
    native one (:func:`~relight_stream.train.model.pick_resolution`); logged once."""
    import json

    if cfg.resolution is None:
        stats = Path(cfg.model).expanduser() / "training_stats.json"
        try:
            recorded = json.loads(stats.read_text()).get("resolution") if stats.is_file() else None
        except ValueError:
            recorded = None
        if isinstance(recorded, int) and recorded > 0:
            log.info("infer: resolution %d² (the model's training resolution, %s; --resolution overrides)",
                     recorded, stats)
            return recorded
    return pick_resolution(cfg.resolution, str(Path(cfg.model).expanduser()), what="infer")


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
    if cfg.fit not in ("crop", "pad", "keep"):
        raise ValueError(f"infer: --fit {cfg.fit!r}: not crop|pad|keep")
    res = infer_resolution(cfg)
    if res % 8:
        raise ValueError(f"infer: --resolution {res} must be a multiple of 8")
    from diffusers import DiffusionPipeline

    photos = []
    for f in files:  # a photo that cannot be read is an input error here: the user named it
        try:
            photos.append(fit_photo(load_photo(f.read_bytes()), res, cfg.fit))
        except OSError as exc:
            raise ValueError(f"infer: cannot read {f}: {exc}") from exc
    inputs = segment_and_composite(photos, cfg, run) if cfg.segment_input else photos
    boxes: list[tuple[int, int, int, int]] = []
    if cfg.fit == "pad":  # after compositing: the subject's grey background runs on into the pad
        inputs, boxes = (list(t) for t in zip(*(letterbox(x, res) for x in inputs)))
    pipe = DiffusionPipeline.from_pretrained(str(Path(cfg.model).expanduser())).to(_device(run))
    pipe.set_progress_bar_config(disable=True)
    outs: list[np.ndarray] = list(inputs)
    for idx in _by_shape(inputs):  # ``keep`` photos differ in size; a batch needs one size
        edited = edit(pipe, [inputs[i] for i in idx], [cfg.instruction] * len(idx), steps=cfg.steps,
                      guidance=cfg.guidance, image_guidance=cfg.image_guidance,
                      seed=run.seed if run.seed is not None else 0)
        for i, img in zip(idx, edited):
            outs[i] = img
    if boxes:
        outs = [unbox(o, b, res) for o, b in zip(outs, boxes)]
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
