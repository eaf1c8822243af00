"""The ``relight-stream`` command line: one click group, each command builds a config and calls ``run_<cmd>``.

Precedence: dataclass defaults < ``--config FILE.yaml`` < the flags given here. Flags default to ``None`` so an
absent flag never overrides the file. Every command's body lives in a library function (``run_generate(cfg,
run)`` …) that tests and notebooks call directly; this module only parses. Nothing here imports torch or a
Hugging Face library at import time, so ``--offline`` takes effect before the first HF import.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any, Callable

import click

from relight_stream import config as C
from relight_stream.cli_options import (NotImplementedYet, RunError, RunFailed, apply_offline, config_option,
                                        dry_run_option, inputs_or_none, parse_floats, parse_mix)

log = logging.getLogger("relight_stream")

GENERATE_FLAGS = {  # generate's flag -> config key (flags not listed are top-level keys of the same name)
    "resolution": "decode.resolution", "samples_per_shard": "shard.samples_per_shard", "segmenter": "segment.backend",
    "segmenter_flavor": "segment.flavor", "segmenter_weights": "segment.weights",
    "segment_prompt": "segment.prompts", "depth": "geometry.backend",
    "depth_flavor": "geometry.flavor", "depth_weights": "geometry.weights", "albedo": "albedo.method",
    "consistency": "relight.consistency", "overwrite": "shard.overwrite", "new_run": "shard.new_run",
    "keep_alpha": "decode.keep_alpha", "batch_size": "decode.batch_size", "decode_backend": "decode.backend",
    "skip_bad_input_shards": "shard.skip_bad_input_shards",
}

# command -> "module:function"; a command whose module is not built yet exits 2 with "not implemented yet".
ENTRY_POINTS: dict[str, str] = {
    "filter": "relight_stream.pipeline.filter_run:run_filter",
    "generate": "relight_stream.pipeline.recipes:run_generate",
    "verify": "relight_stream.pipeline.verify:run_verify",
    "cache-latents": "relight_stream.train.latents:run_cache_latents",
    "train": "relight_stream.train.loop:run_train",
    "infer": "relight_stream.train.infer:run_infer",
    "bench": "relight_stream.bench.run:run_bench",
    "build-engines": "relight_stream.engines.build:run_build_engines",
    "demo": "relight_stream.demo:run_demo",
}


def resolve_entry(command: str) -> Callable[..., int]:
    """Import the library function behind ``command``; raise :class:`NotImplementedYet` if it does not exist."""
    module_name, func_name = ENTRY_POINTS[command].split(":")
    if importlib.util.find_spec(module_name) is None:
        raise NotImplementedYet(command, f"{module_name} does not exist")
    func = getattr(importlib.import_module(module_name), func_name, None)
    if func is None:
        raise NotImplementedYet(command, f"{module_name}.{func_name} does not exist")
    return func


def _invoke(ctx: click.Context, command: str, cls: type, config_file: str | None, flags: dict[str, Any]) -> None:
    run: C.RunConfig = ctx.obj
    try:
        cfg = C.load_config(cls, config_file, flags)
    except ValueError as exc:
        raise RunError(f"bad configuration: {exc}") from exc
    func = resolve_entry(command)
    try:
        code = func(cfg, run)
    except ValueError as exc:
        raise RunError(str(exc)) from exc
    except OSError as exc:
        from relight_stream.fileio import disk_full

        if (message := disk_full(exc)) is None:  # disk full: a message, not a traceback (C4)
            raise
        raise RunFailed(message) from exc
    except RuntimeError as exc:
        from relight_stream.pipeline.runner import StageSetupError
        from relight_stream.train.setup import TrainOutOfMemory

        if isinstance(exc, TrainOutOfMemory):  # GPU memory: what to change, not a traceback; exit 1
            raise RunFailed(str(exc)) from exc
        if not isinstance(exc, StageSetupError):  # a stage whose model cannot load is a bad run, not a crash
            raise
        raise RunError(str(exc)) from exc
    ctx.exit(int(code or 0))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--seed", type=int, default=None, help="Global seed (data commands default to 0; train generates one).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG | INFO | WARNING | ERROR")
@click.option("--offline", is_flag=True, help="Never contact a model hub (HF_HUB_OFFLINE=1 before any HF import).")
@click.version_option(package_name="relight-stream")
@click.pass_context
def cli(ctx: click.Context, seed: int | None, device: str, log_level: str, offline: bool) -> None:
    """relight-stream: filter well-lit photos, generate relighting triplets, train and run InstructPix2Pix."""
    from relight_stream.log import setup_logging

    apply_offline(offline)
    try:
        setup_logging(log_level)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--log-level") from None
    ctx.obj = C.RunConfig(seed=seed, device=device, log_level=log_level, offline=offline)


@cli.command("filter")
@click.argument("inputs", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output directory.")
@click.option("--scorer", type=click.Choice(["photometric", "clip", "combined"]), default=None)
@click.option("--top", type=int, default=None, help="Keep the N best-lit images.")
@click.option("--threshold", type=float, default=None, help="Keep images scoring at least T.")
@click.option("--splits", default=None, help="Train,val,test fractions, e.g. 0.8,0.1,0.1 (seeded, disjoint).")
@click.option("--from-scores", type=click.Path(), default=None, help="Re-select from scores.parquet (or its folder).")
@click.option("--clip-model", default=None, help="ViT-L-14 (default) | ViT-B-32 | tiny | any open_clip name (open_clip:<Name>)")
@click.option("--clip-pretrained", default=None, help="openai | random | org/name@revision | local checkpoint")
@click.option("--backend", default=None, help="CLIP engine backend: auto | eager | compile | onnxruntime | tensorrt")
@click.option("--save-embeddings", is_flag=True, default=None, help="Also write embeddings.npy (CLIP scorers).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per CLIP batch.")
@dry_run_option
@config_option
@click.pass_context
def filter_cmd(ctx, inputs, out, scorer, top, threshold, splits, from_scores, clip_model, clip_pretrained, backend,
               save_embeddings, batch_size, dry_run, config_file) -> None:
    """Score the lighting of every input image and select the best-lit ones.

    Reads INPUT... (folders, CSV/parquet lists with an image_path column, WebDataset tars). Writes to --out:
    scores.parquet (every input with status and every score), selected.csv (image_path,lighting_score),
    train/val/test.csv with --splits, a contact sheet, stats.json and config.yaml.
    """
    flags = dict(inputs=inputs_or_none(inputs), out=out, scorer=scorer, top=top, threshold=threshold,
                 splits=parse_floats(splits), from_scores=from_scores, dry_run=dry_run,
                 save_embeddings=save_embeddings)
    flags.update({"clip.model": clip_model, "clip.pretrained": clip_pretrained, "clip.backend": backend,
                  "clip.batch_size": batch_size})
    _invoke(ctx, "filter", C.FilterConfig, config_file, flags)


@cli.command("generate")
@click.argument("inputs", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output directory for the shards.")
@click.option("--resolution", type=int, default=None, help="Square output side in pixels.")
@click.option("--samples-per-shard", type=int, default=None)
@click.option("--segmenter", type=click.Choice(["classical", "sam2", "sam3"]), default=None)
@click.option("--segmenter-flavor", default=None,
              help="sam2: hiera-t | hiera-s (default) | hiera-b+ | hiera-l; sam3: sam3 (default); tiny (tests)")
@click.option("--segmenter-weights", default=None,
              help="facebook/sam2.1-hiera-small@<commit> | facebook/sam3@<commit> | local | random (sam2 benchmarks)")
@click.option("--segment-prompt", default=None, help="sam3: concepts to segment, e.g. person,dog (default person)")
@click.option("--depth", type=click.Choice(["classical", "depth-anything", "dpt"]), default=None)
@click.option("--depth-flavor", default=None,
              help="s (default) | b | l for depth-anything; hybrid (default) | large for dpt")
@click.option("--depth-weights", default=None, help="<hf_id>@<commit> | local folder | random (untrained; benchmarks)")
@click.option("--albedo", type=click.Choice(["retinex", "lab", "intrinsic"]), default=None, help="Albedo method.")
@click.option("--mix", default=None, help="Degradation weights, e.g. soft=0.4,shadow=0.3,pattern=0.3")
@click.option("--preview", type=int, default=None, help="Write preview.png for the first N samples.")
@click.option("--consistency", is_flag=True, default=None, help="Also write (L1, L2, L1+L2) inputs.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace outputs made with another config/input.")
@click.option("--new-run", is_flag=True, default=None,
              help="Move the previous outputs to OUT/previous-<UTC time>/ and start afresh (--overwrite deletes).")
@click.option("--keep-alpha", is_flag=True, default=None, help="Also write the source alpha as alpha.png.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per batch (decode and stages).")
@click.option("--decode-backend", type=click.Choice(["auto", "dali", "pil"]), default=None)
@click.option("--skip-bad-input-shards", is_flag=True, default=None, help="Exit 0 although an input tar is truncated.")
@click.option("--fast-dev-run", is_flag=True, default=None, help="One batch of the first shard only.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Worker processes (0: auto, one per two cores on CPU runs; 1: this process).")
@dry_run_option
@config_option
@click.pass_context
def generate_cmd(ctx, inputs, config_file, mix, **flags) -> None:
    """Turn photos into relighting triplet shards.

    Reads INPUT... (folders, CSV/parquet lists, WebDataset tars). Writes --out/shard-NNNNNN.tar (members
    input.jpg, target.jpg, instruction.txt, meta.json and the artefacts mask.png, albedo.jpg, normals.png,
    depth.npy, shading.jpg) each with its shard-NNNNNN.json record, plus stats.json and config.yaml.
    Reruns skip finished shards.
    """
    flags = {GENERATE_FLAGS.get(name, name): value for name, value in flags.items()}
    prompt = flags.pop("segment.prompts")
    if prompt is not None and flags.get("segment.backend") not in (None, "sam3"):
        raise click.BadParameter(f"only --segmenter sam3 reads prompts, not {flags['segment.backend']}",
                                 param_hint="--segment-prompt")
    flags.update({"inputs": inputs_or_none(inputs), "relight.mix": parse_mix(mix),
                  "segment.prompts": None if prompt is None else [p.strip() for p in prompt.split(",") if p.strip()]})
    _invoke(ctx, "generate", C.GenerateConfig, config_file, flags)


@cli.command("verify")
@click.argument("out", type=click.Path(file_okay=False))
@click.pass_context
def verify_cmd(ctx, out) -> None:
    """Check every shard in OUT against its record (hashes, counts, field set, keys) and that it loads.

    Reads OUT/shard-*.tar and OUT/shard-*.json; writes nothing. Exits non-zero on any mismatch.
    """
    _invoke(ctx, "verify", C.VerifyConfig, None, {"out": out})


@cli.command("cache-latents")
@click.argument("shards", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False), default=None)
@click.option("--model", default=None, help="tiny | sd15 | sdxl | HF id@revision | local folder")
@click.option("--resolution", type=int, default=None)
@config_option
@click.pass_context
def cache_latents_cmd(ctx, shards, out, model, resolution, config_file) -> None:
    """Encode triplet shards once with the VAE and text encoder(s) for faster training.

    Reads SHARDS... (generate's output). Writes latent shards (input/target latents, text embeddings) to --out.
    """
    flags = dict(shards=inputs_or_none(shards), out=out, model=model, resolution=resolution)
    _invoke(ctx, "cache-latents", C.CacheLatentsConfig, config_file, flags)


@cli.command("train")
@click.argument("shards", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False), default=None)
@click.option("--model", default=None, help="tiny | sd15 | sdxl | HF id@revision | local folder")
@click.option("--resolution", type=int, default=None)
@click.option("--max-steps", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--checkpoint-every", type=int, default=None)
@click.option("--resume", default=None, help="latest | PATH to a checkpoint")
@click.option("--mixed-precision", type=click.Choice(["no", "bf16", "fp16"]), default=None)
@click.option("--consistency", is_flag=True, default=None, help="Light-transport consistency loss (input_l1/l2/l12).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the UNet blocks.")
@click.option("--fast-dev-run", is_flag=True, default=None, help="A few steps, no checkpoints: a smoke test.")
@config_option
@click.pass_context
def train_cmd(ctx, shards, out, model, resolution, max_steps, batch_size, checkpoint_every, resume, mixed_precision,
              consistency, compile_, fast_dev_run, config_file) -> None:
    """Fine-tune InstructPix2Pix (SD1.5 / SDXL / tiny) on triplet or latent shards.

    Reads SHARDS... Writes --out/checkpoints/checkpoint-STEP (complete ones marked COMPLETE), --out/final (a
    diffusers pipeline folder with a model card), stats.json and config.yaml. Works under torchrun and
    accelerate launch.
    """
    flags = dict(shards=inputs_or_none(shards), out=out, model=model, resolution=resolution, max_steps=max_steps,
                 batch_size=batch_size, checkpoint_every=checkpoint_every, resume=resume, fast_dev_run=fast_dev_run,
                 mixed_precision=mixed_precision, consistency=consistency, compile=compile_)
    _invoke(ctx, "train", C.TrainConfig, config_file, flags)


@cli.command("infer")
@click.option("--model", default=None, help="A trained pipeline folder (train's --out/final).")
@click.option("--image", default=None, help="A photo or a folder of photos.")
@click.option("--instruction", default=None, help="The lighting edit, e.g. 'light from the left, warm'.")
@click.option("--out", default=None, help="Output image path (or folder for a folder of photos).")
@click.option("--steps", type=int, default=None)
@click.option("--resolution", type=int, default=None)
@click.option("--guidance", type=float, default=None, help="Text guidance scale.")
@click.option("--image-guidance", type=float, default=None, help="Image guidance scale.")
@click.option("--segment/--no-segment", "segment_input", default=None,
              help="Composite the segmented subject on grey, as generate does (default).")
@click.option("--fit", type=click.Choice(["crop", "pad", "keep"]), default=None,
              help="Non-square photos: pad on grey and cut back, keeping the aspect (default); keep (long side = "
                   "resolution, multiples of 8); crop (centre square).")
@config_option
@click.pass_context
def infer_cmd(ctx, model, image, instruction, out, steps, resolution, guidance, image_guidance, segment_input, fit,
              config_file) -> None:
    """Relight photos with a trained model, using the same preprocessing as training.

    Reads --model and --image. Writes the relit image(s) and a comparison sheet to --out.
    """
    flags = dict(model=model, image=image, instruction=instruction, out=out, steps=steps, resolution=resolution,
                 guidance=guidance, image_guidance=image_guidance, segment_input=segment_input, fit=fit)
    _invoke(ctx, "infer", C.InferConfig, config_file, flags)


@cli.command("bench")
@click.argument("target", default="all")
@click.option("--tiny", is_flag=True, default=None, help="Small sizes and tiny models (seconds).")
@click.option("--json", "json_only", is_flag=True, default=None, help="Print only the JSON line.")
@click.option("--compare", default=None, help="Two backends or configs side by side, e.g. eager,onnxruntime")
@click.option("--backend", default=None, help="Backend the target measures (engines: eager|compile|onnxruntime|tensorrt)")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None)
@click.option("--batch-sizes", default=None, help="Batch sweep, e.g. 1,8,32")
@click.option("--repeats", type=int, default=None)
@click.option("--save", is_flag=True, default=None, help="Save the JSON result under bench/results/.")
@click.option("--out", default=None, help="Also save the JSON result to this file.")
@click.option("--example-script", default=None, help="example: diffusers' train_instruct_pix2pix.py (the baseline)")
@config_option
@click.pass_context
def bench_cmd(ctx, target, tiny, json_only, compare, backend, precision, batch_sizes, repeats, save, out,
              example_script, config_file) -> None:
    """Measure throughput: TARGET in decode, kernels, albedo, filter, generate, train, engines, example, all.

    Reads nothing but the bundled photos and random-weight models. Writes a table, then one JSON line (the last
    line of stdout); --out/--save also write the JSON result.
    """
    try:
        sizes = [int(b) for b in batch_sizes.split(",")] if batch_sizes else None
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {batch_sizes!r}") from None
    flags = dict(target=target, tiny=tiny, json=json_only, compare=compare, backend=backend, precision=precision,
                 batch_sizes=sizes, repeats=repeats, save=save, out=out, example_script=example_script)
    _invoke(ctx, "bench", C.BenchConfig, config_file, flags)


@cli.command("build-engines")
@click.option("--kind", default=None, help="clip | segmenter | segmenter_sam3 | depth | vae")
@click.option("--flavor", default=None, help="tiny | ... (see the engine registry)")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Engine cache directory.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default=None)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None)
@click.option("--weights", default=None, help="org/name@revision or a local path (default: random, seeded)")
@click.option("--batch-size", type=int, default=None)
@click.option("--max-batch", type=int, default=None, help="Largest batch of a dynamic TensorRT profile.")
@click.option("--fixed-batch", is_flag=True, default=None, help="Export with a fixed batch (default: dynamic).")
@config_option
@click.pass_context
def build_engines_cmd(ctx, kind, flavor, out, backend, precision, weights, batch_size, max_batch, fixed_batch,
                      config_file) -> None:
    """Export a model to ONNX, check it against eager torch in onnxruntime, and build TensorRT plans.

    Writes --out/<key>.onnx (and .plan for TensorRT) with a JSON sidecar describing the cache key.
    """
    flags = dict(kind=kind, flavor=flavor, out=out, backend=backend, precision=precision, weights=weights,
                 batch_size=batch_size, max_batch=max_batch, dynamic_batch=False if fixed_batch else None)
    _invoke(ctx, "build-engines", C.BuildEnginesConfig, config_file, flags)


@cli.command("demo")
@click.option("--out", type=click.Path(file_okay=False), default=None, show_default="demo-out")
@click.option("--num-images", type=int, default=None, help="How many of the bundled photos to use.")
@click.pass_context
def demo_cmd(ctx, out, num_images) -> None:
    """Run the whole flow on photos that scikit-image ships (no downloads, CPU is fine).

    Writes --out/inputs (the photos), and for every stage built so far its outputs (filter/, shards/, model/,
    infer/), a preview PNG and summary.json listing where everything is.
    """
    _invoke(ctx, "demo", C.DemoConfig, None, dict(out=out, num_images=num_images))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="relight-stream")


if __name__ == "__main__":
    main()
