"""``relight-stream bench engines``: throughput of every engine kind on one backend, over a batch sweep.

Reads nothing from disk (random-weight models built from configs; inputs are random tensors at the model's input
size). Rows: ``name`` (kind/part), ``flavor``, ``backend``, ``precision``, ``batch``, ``ms`` (median per batch,
synchronised), ``images_per_s``, ``gflop_per_image`` (counted with ``torch.utils.flop_counter`` on the eager
model) and ``util_pct`` (achieved FLOP/s over the GPU's dense peak for the precision, where the GPU is known).

``--tiny``: the ``tiny`` flavors (seconds on a CPU). Otherwise the full-size flavors of the GPU measurements —
CLIP ViT-L/14, SAM2 hiera-s, Depth Anything V2-S, the SD1.5 VAE encoder and the SD1.5 UNet (8-channel
InstructPix2Pix input, 64² latents = 512² images; eager/compile only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from relight_stream.bench.timing import measure

log = logging.getLogger(__name__)

TINY = [("clip", "tiny"), ("segmenter", "tiny"), ("depth", "tiny"), ("vae", "tiny")]
FULL = [("clip", "vit-l-14"), ("segmenter", "hiera-s"), ("depth", "depth-anything-v2-s"), ("vae", "sd15")]
PEAK_TFLOPS = {  # dense peak by GPU name fragment, vendor datasheets (SXM): bf16/fp16 and TF32 on tensor cores,
    # fp32 on the CUDA cores (what fp32 matmuls use while torch's allow_tf32 is off, its default)
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "4090": {"bf16": 165.0, "fp16": 165.0, "tf32": 82.6, "fp32": 82.6},
}


def peak_tflops(device: Any, precision: str, *, tf32: bool | None = None) -> float | None:
    """Dense peak TFLOP/s of ``device`` at ``precision`` if the GPU is in ``PEAK_TFLOPS``, else ``None``.

    fp32 counts the TF32 tensor-core peak when ``tf32`` (default: torch's ``allow_tf32`` for matmuls; TensorRT
    builds use TF32 unless told not to), else the CUDA-core fp32 peak.
    """
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return None
    if precision == "fp32" and (torch.backends.cuda.matmul.allow_tf32 if tf32 is None else tf32):
        precision = "tf32"
    name = torch.cuda.get_device_name(device)
    for frag, peaks in PEAK_TFLOPS.items():
        if frag in name:
            return peaks[precision]
    return None


def _calls(kind: str, engine: Any, batch: int, device: Any) -> list[tuple[str, Callable[[], Any]]]:
    """(row name, zero-argument call) pairs timing the engine's public API on random inputs."""
    import torch

    size = engine.spec.input_size
    images = torch.rand(batch, 3, size, size, device=device)
    if kind == "clip":
        texts = [f"a photo lit from the left, number {i}" for i in range(batch)]
        return [("clip/image", lambda: engine.encode_image(images)), ("clip/text", lambda: engine.encode_text(texts))]
    if kind == "segmenter":
        boxes = torch.tensor([[0.2, 0.2, 0.8, 0.9]], device=device).repeat(batch, 1) * size
        return [("segmenter", lambda: engine(images, boxes))]
    if kind == "vae":
        return [("vae/encode", lambda: engine.encode(images * 2 - 1))]
    return [(kind, lambda: engine(images))]


def _gflop(fn: Callable[[], Any]) -> float:
    """GFLOP of one call (matmuls, convolutions, attention), counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA inference kernel is invisible to the counter
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / 1e9


def _unet(tiny: bool) -> tuple[Any, Callable[[int, Any], tuple[Any, ...]]]:
    """SD1.5-architecture UNet with an 8-channel (InstructPix2Pix) input, random weights; tiny config for tests."""
    import torch
    from diffusers import UNet2DConditionModel

    if tiny:
        cfg = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), norm_num_groups=8,
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=16)
        side, ctx, width = 16, 8, 32
    else:
        cfg = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                   sample_size=64)
        side, ctx, width = 64, 77, 768
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(in_channels=8, out_channels=4, **cfg).eval()

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: Any, t: Any, ctx_: Any) -> Any:
            return (self.unet(x, t, encoder_hidden_states=ctx_).sample,)

    def inputs(batch: int, device: Any) -> tuple[Any, ...]:
        return (torch.randn(batch, 8, side, side, device=device), torch.full((batch,), 500, device=device),
                torch.randn(batch, ctx, width, device=device))

    return Forward(), inputs


def _unet_rows(cfg: Any, device: Any, backend: str, batches: list[int]) -> list[dict[str, Any]]:
    from relight_stream.engines.backends import get_backend

    if backend not in ("eager", "compile"):
        log.info("bench engines: the UNet row runs on eager/compile only, skipped for %s", backend)
        return []
    import torch

    module, inputs = _unet(cfg.tiny)
    with torch.no_grad():  # count on the fp32 eager module, before the runner casts or compiles it
        flop = _gflop(lambda: module.to(device)(*inputs(1, device)))
    runner = get_backend(backend).make_runner("unet", module, spec=None, built=None, weights=None,
                                              precision=cfg.precision, device=device)
    rows = []
    for b in batches:
        x = inputs(b, device)
        rows.append(_row("unet-ip2p", "tiny" if cfg.tiny else "sd15", backend, cfg, b, lambda x=x: runner(*x), flop,
                         device))
        if rows[-1].get("error") == "oom":
            break
    return rows


def _row(name: str, flavor: str, backend: str, cfg: Any, batch: int, fn: Callable[[], Any], gflop: float | None,
         device: Any) -> dict[str, Any]:
    import torch

    row: dict[str, Any] = {"name": name, "flavor": flavor, "backend": backend, "precision": cfg.precision,
                           "batch": batch}
    try:
        t = measure(fn, warmup=max(cfg.warmup, 1), repeats=cfg.repeats)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        log.warning("bench engines: %s batch %d ran out of GPU memory; larger batches skipped", name, batch)
        return {**row, "error": "oom"}
    ips = batch / (t["median_ms"] / 1e3)
    row.update(ms=t["median_ms"], images_per_s=ips)
    if gflop is not None:
        row["gflop_per_image"] = gflop
        tf32 = True if backend == "tensorrt" else None
        peak = peak_tflops(device, cfg.precision, tf32=tf32)
        if peak:
            row["util_pct"] = 100 * gflop * ips / (peak * 1e3)
            row["peak_tflops"] = peak
    return row


def bench_engines(cfg: Any, run: Any) -> dict[str, Any]:
    """Benchmark each engine kind (and the IP2P UNet) on ``cfg.backend``; see the module docstring."""
    import torch

    from relight_stream.engines import create_engine
    from relight_stream.engines.backends import resolve_backend
    from relight_stream.engines.registry import resolve_device

    device = resolve_device(getattr(run, "device", "auto"))
    resolve_backend(cfg.backend, device)  # a bad or unavailable backend fails here, before any model is built
    cuda = device.type == "cuda"
    batches = list(cfg.batch_sizes) or ([1, 4] if cfg.tiny else ([1, 8, 32] if cuda else [1]))
    rows: list[dict[str, Any]] = []
    for kind, flavor in TINY if cfg.tiny else FULL:
        # auto stays auto here, so a missing TensorRT plan steps down to compile as it does in the pipeline
        engine = create_engine(kind, flavor, backend=cfg.backend, device=device, precision=cfg.precision)
        backend = engine.backend
        flops: dict[str, float | None] = {}
        counter = engine if backend == "eager" else None
        if counter is None and (cfg.tiny or cuda):  # count FLOPs on an eager twin (same architecture)
            counter = create_engine(kind, flavor, backend="eager", device=device)
        for name, fn in _calls(kind, counter, 1, device) if counter is not None else []:
            flops[name] = _gflop(fn)
        for b in batches:
            new = [_row(name, flavor, backend, cfg, b, fn, flops.get(name), device)
                   for name, fn in _calls(kind, engine, b, device)]
            rows += new
            if any(r.get("error") == "oom" for r in new):
                break  # larger batches of this kind would run out of memory too
        del engine, counter
        if cuda:
            torch.cuda.empty_cache()
    rows += _unet_rows(cfg, device, resolve_backend(cfg.backend, device), batches)
    return {"target": "engines", "rows": rows, "device": str(device), "backend": cfg.backend,
            "precision": cfg.precision, "tiny": cfg.tiny}
