"""Configuration: one ``kw_only`` dataclass per stage, nested into one config per command.

Precedence (timm's two-stage parser): dataclass defaults < ``--config FILE.yaml`` < explicit CLI flags.
The YAML mirrors the nesting (``decode: {resolution: 1024}``); flags arrive as dotted keys
(``{"decode.resolution": 1024}``). An unknown key or a value of the wrong type raises ``ValueError`` naming
the key and the closest valid one, before any model loads or any output is written. The resolved config is
written beside every output (``config.yaml``) with :func:`dump_config`. The machinery lives in
:mod:`relight_stream.config_io`; its functions are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from relight_stream.config_io import build_config, coerce, config_to_dict, dump_config, load_config  # noqa: F401

# --------------------------------------------------------------------------------------------- stages


@dataclass(kw_only=True, slots=True)
class RunConfig:
    """Options every command shares (the global CLI flags)."""

    seed: int | None = None
    """Global seed. Data commands default to 0 when unset; ``train`` generates, logs and stores one."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    log_level: str = "INFO"
    offline: bool = False
    """Never contact a model hub (sets ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` before any HF import)."""


@dataclass(kw_only=True, slots=True)
class DecodeConfig:
    """Decode and resize (``pipeline/decode.py``). Output: sRGB uint8 ``rgb_BHW3`` at ``resolution``²."""

    backend: Literal["auto", "dali", "pil"] = "auto"
    """``auto``: DALI for JPEG when installed (GPU ``mixed`` decode when CUDA is present), PIL otherwise."""
    resolution: int = 512
    """Output side in pixels; images are resized (short side) and centre-cropped to a square."""
    resize: Literal["crop", "pad"] = "crop"
    batch_size: int = 32
    num_workers: int = 0
    """Threads reading and CPU-decoding files (0: this rank's cores, at most 8); does not change the outputs."""
    max_pixels: int = 89_478_485
    """Images whose header claims more pixels are skipped as ``too_large`` before a full decode."""
    min_size: int = 64
    """Images with a side shorter than this are skipped as ``too_small``."""
    max_aspect_ratio: float = 4.0
    animated: Literal["first_frame", "skip"] = "first_frame"
    allow_truncated: bool = False
    """Opt-in: decode truncated files with the missing part filled (recorded as ``truncated_filled``)."""
    icc: Literal["convert", "flag"] = "convert"
    """Embedded ICC profiles are converted to sRGB (``convert``) or only recorded (``flag``)."""
    background: tuple[int, int, int] = (128, 128, 128)
    """sRGB colour alpha is composited onto: the neutral grey used everywhere (ARCHITECTURE.md §4)."""
    keep_alpha: bool = False
    """Also keep the alpha as a mask: ``alpha_BHW`` (float 0–1; 1 for opaque images), written as ``alpha.png``."""


@dataclass(kw_only=True, slots=True)
class ShardConfig:
    """Triplet shard writing (``pipeline/shard.py``)."""

    samples_per_shard: int = 256
    jpeg_quality: int = 95
    write_artifacts: bool = True
    """Write mask/albedo/normals/depth/shading beside input/target/instruction/meta."""
    overwrite: bool = False
    """Discard existing outputs whose config or input fingerprint differs, instead of refusing to run."""
    skip_bad_input_shards: bool = False
    """Continue (exit 0) when an input tar is truncated; its samples before the cut are still written."""
    new_run: bool = False
    """Start afresh: move the folder's previous outputs to ``OUT/previous-<UTC time>/`` (``overwrite`` deletes)."""


@dataclass(kw_only=True, slots=True)
class SegmentConfig:
    """Foreground segmentation (``pipeline/segment.py``)."""

    backend: Literal["classical", "sam2", "sam3"] = "classical"
    flavor: str | None = None
    """sam2: ``hiera-t``, ``hiera-s`` (unset), ``hiera-b+``, ``hiera-l``; sam3: ``sam3`` (unset); either: ``tiny``
    (random weights, tests)."""
    weights: str | None = None
    """``facebook/sam2.1-hiera-small@<commit>`` / ``facebook/sam3@<commit>`` (Hugging Face), a local checkpoint,
    or ``random`` (untrained, for benchmarks); required for every flavor but ``tiny``."""
    prompts: tuple[str, ...] = ("person",)
    """sam3: the concepts to segment (their instances are united), e.g. ``[person, dog]``."""
    score_threshold: float = 0.5
    """sam3: an instance counts when its score (detection x presence, 0–1) exceeds this."""
    drop_implausible: bool = True
    """``False`` keeps masks that fail the plausibility checks (the verdict is still in ``meta.segment``): only for
    throughput benchmarks of untrained models, whose masks would otherwise stop every sample at this stage."""
    work_resolution: int = 128
    """Side of the square the classical prior and GrabCut work at; the matte is refined at full resolution."""
    grabcut_iters: int = 2
    min_area: float = 0.02
    """Masks covering less than this fraction of the image are skipped as ``segment:empty_mask``."""
    max_area: float = 0.98

    def __post_init__(self) -> None:
        if self.backend != "sam3" and tuple(self.prompts) != ("person",):
            raise ValueError(f"segment.prompts (--segment-prompt) is read only by the sam3 backend, not by "
                             f"{self.backend!r}: add --segmenter sam3 or drop the prompts")


@dataclass(kw_only=True, slots=True)
class GeometryConfig:
    """Depth and normals (``pipeline/geometry.py``)."""

    backend: Literal["classical", "depth-anything", "dpt"] = "classical"
    flavor: str | None = None
    """``s``/``b``/``l`` (Depth Anything V2) or ``hybrid``/``large`` (MiDaS DPT), or a full engine flavor, or
    ``tiny`` (random weights, tests); unset: ``s`` for depth-anything, ``hybrid`` for dpt."""
    weights: str | None = None
    """``<hf_id>@<commit>`` (e.g. ``depth-anything/Depth-Anything-V2-Small-hf@<commit>``), a local folder, or
    ``random`` (untrained, for benchmarks); required for every flavor but ``tiny``."""
    detail: float = 0.15
    """Classical backend: weight of the luminance detail added to the inflated silhouette height field."""
    work_resolution: int = 512
    """Normals are computed at most at this side and upsampled (they are smooth; 4x fewer pixels at 1024²)."""


@dataclass(kw_only=True, slots=True)
class AlbedoConfig:
    """Intrinsic decomposition (``pipeline/albedo.py``)."""

    method: Literal["retinex", "lab", "intrinsic"] = "retinex"
    sigmas: tuple[float, ...] = (0.015, 0.08, 0.25)
    """Retinex blur scales as fractions of the image side (the reference's 15/80/250 px at 1024²)."""
    work_resolution: int = 512
    """The (low-frequency) shading is estimated at most at this side; albedo = photo / upsampled shading."""


@dataclass(kw_only=True, slots=True)
class RelightConfig:
    """Synthetic relighting (``pipeline/relight.py``): the degradation mix and its strength ranges."""

    mix: dict[str, float] = field(
        default_factory=lambda: {"soft": 0.3, "shadow": 0.2, "pattern": 0.2, "specular": 0.1, "sh": 0.1, "multi": 0.1}
    )
    ambient: tuple[float, float] = (0.05, 0.35)
    work_resolution: int = 512
    """The new shading is rendered at most at this side and upsampled; albedo x shading at full resolution."""
    match_exposure: bool = True
    """Scale the relit subject to the target's mean foreground luminance times a random 0.8–1.25, so inputs are
    not systematically darker or brighter than targets (the edit is the light, not the exposure)."""
    consistency: bool = False
    """Also write (L1, L2, L1+L2) inputs for the same target (light-transport consistency training)."""


@dataclass(kw_only=True, slots=True)
class InstructConfig:
    """Instruction text (``pipeline/instruct.py``)."""

    captions: str | None = None
    """Optional CSV/JSONL of captions by key (e.g. VLM lighting keywords) appended to the instruction."""


@dataclass(kw_only=True, slots=True)
class ClipConfig:
    """CLIP lighting scorer (``pipeline/clip_filter.py``)."""

    model: str = "ViT-L-14"
    pretrained: str | None = "openai"
    backend: str = "auto"
    batch_size: int = 64
    head: str | None = None
    """Optional linear head (``.npz`` with ``weight``/``bias``) applied to image embeddings."""
    prompts: str | None = None
    """Optional YAML/JSON ``{group: [text, ...]}`` replacing the default prompt ensemble (needs a ``good`` group)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """``auto``: bf16 on CUDA, fp32 on CPU."""


# ------------------------------------------------------------------------------------------- commands


@dataclass(kw_only=True, slots=True)
class FilterConfig:
    inputs: list[str] = field(default_factory=list)
    out: str = ""
    scorer: Literal["photometric", "clip", "combined"] = "photometric"
    top: int | None = None
    threshold: float | None = None
    splits: tuple[float, ...] | None = None
    from_scores: str | None = None
    save_embeddings: bool = False
    dry_run: bool = False
    contact_sheet: int = 8
    """Thumbnails per row of ``contact_sheet.jpg`` (top, around the cut-off, bottom); 0 = none."""
    subject: Literal["centre", "prior"] = "centre"
    """Photometric subject weights: a centre Gaussian (free), or the Haar-face + saliency prior (~50 ms/image)."""
    samples_per_unit: int = 256
    """Inputs per work unit; unit ``k`` is scored by rank ``k mod WORLD_SIZE`` (outputs do not depend on it)."""
    merge_timeout_s: float = 3600.0
    """Several ranks: how long rank 0 waits, after its own part, for the other ranks' ``scores-rankNNN.parquet``."""
    torch_threads: int = 0
    """CPU intra-op threads of torch/onnxruntime; 0 = auto: this rank's cores minus the decode workers (at least
    1), left alone when ``OMP_NUM_THREADS`` is set."""
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(resolution=224))
    clip: ClipConfig = field(default_factory=ClipConfig)

    def __post_init__(self) -> None:
        if self.top is not None and self.threshold is not None:
            raise ValueError("filter: give --top or --threshold, not both")
        if self.splits is not None and (len(self.splits) != 3 or abs(sum(self.splits) - 1) > 1e-6):
            raise ValueError(f"filter: splits must be three fractions summing to 1, got {self.splits}")


@dataclass(kw_only=True, slots=True)
class GenerateConfig:
    inputs: list[str] = field(default_factory=list)
    out: str = ""
    preview: int = 0
    """Write a contact sheet of the first N samples (``preview.png``)."""
    dry_run: bool = False
    fast_dev_run: bool = False
    """Process one batch of the first shard only (smoke test)."""
    workers: int = 0
    """Worker processes, each a local rank (``pipeline/workers.py``): 0 = auto (one per two cores on a CPU run
    with at least 48 inputs each; 1 on a GPU), 1 = in this process. Does not change the outputs."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    albedo: AlbedoConfig = field(default_factory=AlbedoConfig)
    relight: RelightConfig = field(default_factory=RelightConfig)
    instruct: InstructConfig = field(default_factory=InstructConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)


@dataclass(kw_only=True, slots=True)
class VerifyConfig:
    out: str = ""


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    shards: list[str] = field(default_factory=list)
    out: str = ""
    model: str = "tiny"
    """``tiny`` (random weights), ``sd15``, ``sdxl``, a Hugging Face id (``id@revision``) or a local folder."""
    resolution: int | None = None
    """Training side in px; ``None`` = the model's: tiny 256, sd15 512, sdxl 1024, else UNet sample_size x 8."""
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-5
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    ema: bool = True
    ema_decay: float = 0.9999
    compile: bool = False
    gradient_checkpointing: bool = False
    text_dropout: float = 0.05
    image_dropout: float = 0.05
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = 3
    validate_every: int = 0
    resume: str | None = None
    num_workers: int = 2
    deterministic: bool = False
    max_nonfinite_steps: int = 10
    fast_dev_run: bool = False
    log_every: int = 10
    """Steps between metrics lines (step, loss, lr, grad_norm, samples/s, memory)."""
    consistency: bool = False
    """Light-transport consistency loss on shards with ``input_l1/l2/l12.jpg``."""
    consistency_weight: float = 0.1
    strict_resume: bool = False
    """Refuse to resume when per-rank state is missing or the world size changed (else: loud warning)."""
    max_grad_norm: float = 1.0
    shuffle_buffer: int = 64


@dataclass(kw_only=True, slots=True)
class CacheLatentsConfig:
    shards: list[str] = field(default_factory=list)
    out: str = ""
    model: str = "tiny"
    resolution: int | None = None
    """``None`` = the model's training default (as ``train``); the trainer refuses latents made at another size."""
    batch_size: int = 16


@dataclass(kw_only=True, slots=True)
class InferConfig:
    model: str = ""
    image: str = ""
    instruction: str = ""
    out: str = ""
    resolution: int | None = None
    """Side in px; ``None`` = the model folder's training resolution (``training_stats.json``), else its native."""
    fit: Literal["crop", "pad", "keep"] = "pad"
    """Non-square photos: ``pad`` on grey 128 and cut back (keeps the aspect), ``keep`` (long side, multiples of
    8), ``crop`` (centre square)."""
    steps: int = 20
    guidance: float = 7.5
    image_guidance: float = 1.5
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    segment_input: bool = True
    """Segment the photo and composite it on grey (as ``generate`` does); ``False``: use it as it is."""


@dataclass(kw_only=True, slots=True)
class BenchConfig:
    target: str = "all"
    tiny: bool = False
    compare: str | None = None
    repeats: int = 5
    warmup: int = 1
    out: str | None = None
    backend: str = "auto"
    """Backend the target benchmarks, interpreted by the target (engines: eager|compile|onnxruntime|tensorrt)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    batch_sizes: list[int] = field(default_factory=list)
    """Batch sweep; empty = the target's default."""
    save: bool = False
    """Save the JSON result under ``bench/results/`` (or ``out``)."""
    json: bool = False
    """Print only the final JSON line (no human tables)."""
    example_script: str | None = None
    """``bench example``: path of diffusers' ``examples/instruct_pix2pix/train_instruct_pix2pix.py`` (the baseline)."""


@dataclass(kw_only=True, slots=True)
class BuildEnginesConfig:
    kind: str = "clip"
    flavor: str = "tiny"
    out: str = ""
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = 1
    """Fixed batch (``dynamic_batch=False``) or the TensorRT profile's optimal batch."""
    dynamic_batch: bool = True
    max_batch: int = 32
    """Largest batch of a dynamic TensorRT profile."""
    weights: str | None = None
    """``None`` (random, seeded), ``org/name@revision`` or a local path: exactly what ``create_engine`` receives."""


@dataclass(kw_only=True, slots=True)
class DemoConfig:
    out: str = "demo-out"
    num_images: int = 8
    resolution: int = 256
    """Side of the generated triplets."""
    train_steps: int = 30
    """Steps of the tiny-model training run (at 64², batch 4)."""
