"""``relight-stream demo``: the main job end to end on photos a dependency ships (no downloads, CPU is fine).

Writes ``<out>/inputs`` (scikit-image's bundled photos in an FFHQ-like nested layout, PNG and JPEG), then runs
every command that is built: filter → generate (with a preview) → verify → train (tiny model, a few steps) →
infer, and ends with ``<out>/summary.json`` listing each step's status and outputs. A step whose command is
not built yet is reported as such, never faked. Each run starts afresh: the previous filter/, shards/, model/ and
infer/ under ``<out>`` are removed first.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from relight_stream import config as C

log = logging.getLogger(__name__)

DEMO_OUTPUTS = ("filter", "shards", "model", "infer")

# Colour photos bundled with scikit-image (people, animals, objects, a scene); no network needed.
DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field")


def demo_images(num_images: int) -> list[tuple[str, np.ndarray]]:
    """``num_images`` (relative path, HxWx3 uint8) pairs from the bundled photos, mirrored to add variety."""
    from skimage import data

    base = [(name, np.ascontiguousarray(getattr(data, name)()[..., :3])) for name in DEMO_PHOTOS]
    out = []
    for i in range(num_images):
        name, img = base[i % len(base)]
        if (i // len(base)) % 2 == 1:
            img, name = np.ascontiguousarray(img[:, ::-1]), f"{name}_mirrored"
        folder = f"{i // 4:05d}"  # FFHQ-like nested folders
        ext = "png" if i % 2 == 0 else "jpg"
        out.append((f"{folder}/{i:05d}_{name}.{ext}", img))
    return out


def write_inputs(folder: Path, num_images: int) -> list[Path]:
    """Write the demo photos under ``folder`` and return their paths."""
    from PIL import Image

    paths = []
    for rel, img in demo_images(num_images):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.fromarray(img).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def _step(summary: dict[str, Any], name: str, run_step: Callable[[Callable[..., int]], tuple[int, dict]]) -> bool:
    from relight_stream.cli import NotImplementedYet, resolve_entry

    try:
        func = resolve_entry(name)
    except NotImplementedYet as exc:
        log.warning("demo: skipping %s: %s", name, exc.message)
        summary["steps"][name] = {"status": "not implemented yet"}
        return False
    t0 = time.perf_counter()
    code, outputs = run_step(func)
    summary["steps"][name] = {"status": "ok" if code == 0 else f"exit {code}", "seconds": round(time.perf_counter() - t0, 2),
                              **outputs}
    if code != 0:
        raise RuntimeError(f"demo step {name} exited with code {code}")
    return True


def run_demo(cfg: C.DemoConfig, run: C.RunConfig) -> int:
    """Build the demo inputs and run every built command on them; returns 0 when every built step succeeded."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for sub in DEMO_OUTPUTS:  # the demo starts afresh each time (the real commands resume instead)
        shutil.rmtree(out / sub, ignore_errors=True)
    run = C.RunConfig(seed=0 if run.seed is None else run.seed, device=run.device, log_level=run.log_level,
                      offline=run.offline)
    inputs = out / "inputs"
    paths = write_inputs(inputs, cfg.num_images)
    summary: dict[str, Any] = {"inputs": str(inputs), "num_images": len(paths), "steps": {}}
    gen_inputs = [str(inputs)]

    def filter_step(func):
        fcfg = C.build_config(C.FilterConfig, {"inputs": [str(inputs)], "out": str(out / "filter"),
                                               "scorer": "photometric", "splits": [0.75, 0.125, 0.125]})
        code = func(fcfg, run)
        selected = out / "filter" / "selected.csv"
        if selected.exists():
            gen_inputs[:] = [str(selected)]
        return code, {"outputs": str(out / "filter")}

    def generate_step(func):
        gcfg = C.build_config(C.GenerateConfig, {"inputs": gen_inputs, "out": str(out / "shards"),
                                                 "preview": min(8, cfg.num_images),
                                                 "decode": {"resolution": cfg.resolution},
                                                 "shard": {"samples_per_shard": 4}})
        return func(gcfg, run), {"outputs": str(out / "shards"), "inputs_from": gen_inputs[0]}

    def verify_step(func):
        return func(C.VerifyConfig(out=str(out / "shards")), run), {}

    shards = str(out / "shards")

    def train_step(func):
        tcfg = C.build_config(C.TrainConfig, {"shards": [shards], "out": str(out / "model"), "model": "tiny",
                                              "resolution": 64, "max_steps": cfg.train_steps, "batch_size": 4,
                                              "checkpoint_every": max(1, cfg.train_steps // 2), "mixed_precision": "no", "num_workers": 0})
        return func(tcfg, run), {"outputs": str(out / "model")}

    def infer_step(func):
        icfg = C.build_config(C.InferConfig, {"model": str(out / "model" / "final"), "image": str(paths[0]),
                                              "instruction": "soft light from the left", "out": str(out / "infer"),
                                              "resolution": 64, "steps": 4})
        return func(icfg, run), {"outputs": str(out / "infer")}

    _step(summary, "filter", filter_step)
    generated = _step(summary, "generate", generate_step)
    if generated:
        _step(summary, "verify", verify_step)
        if _step(summary, "train", train_step):
            _step(summary, "infer", infer_step)
    preview = out / "shards" / "preview.png"
    if preview.exists():
        summary["preview"] = str(preview)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"demo outputs under {out}/", f"  inputs    {inputs} ({len(paths)} photos)"]
    for name, info in summary["steps"].items():
        lines.append(f"  {name:<9} {info['status']:<22} {info.get('outputs', '')}")
    if "preview" in summary:
        lines.append(f"  preview   {summary['preview']}")
    lines.append(f"  summary   {out / 'summary.json'}")
    print("\n".join(lines))
    return 0
