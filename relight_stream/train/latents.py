"""``relight-stream cache-latents``: encode triplet shards once with the VAE and text encoder(s).

Reads triplet shards (``input.jpg``, ``target.jpg``, ``instruction.txt``). Writes, per input shard, a latent
shard of the same name under ``OUT`` whose samples hold (float16 ``.npy``):

* ``cond.npy`` — the image condition, ``vae.encode(input).latent_dist.mode()`` unscaled (``C h w``);
* ``moments.npy`` — the target's latent distribution (mean ‖ logvar, ``2C h w``); the trainer draws a fresh
  sample × scaling factor every step, exactly as it does from images (``model.py`` conventions);
* ``embeds.npy`` (``77 D``) and, for SDXL, ``pooled.npy`` — the instruction's text embeddings;
* ``instruction.txt`` and ``meta.json`` carried over.

plus ``latents.json`` (model, resolution, kind, scaling factor, and the drops: ``drops`` {reason: count},
``dropped`` {reason: [key, ...]} over the shards written, per shard under ``shards``). The VAE is half the
training FLOPs at 512² (FACTS.md §2), so training from this cache is the largest speed-up. A sample whose latents
are not finite (an fp16 VAE overflowing) is dropped as ``cache:nonfinite_latent``, each key logged at WARNING
(RELIABILITY.md E6). Shards are written to a temporary name and renamed; a rerun skips the shards already done
(their drop records are kept); rank k of a launcher takes input shards k, k+world, ….
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from relight_stream.config import CacheLatentsConfig, RunConfig, dump_config
from relight_stream.log import DropCounter, rank_world, warn_once
from relight_stream.pipeline.engine_batch import free_cuda_cache, is_oom
from relight_stream.train.data import IMAGE_MEMBERS, decode_rgb, resolve_shards, shard_format, warn_if_upscaled
from relight_stream.train.model import (
    TINY_FLAVORS,
    encode_images,
    encode_text,
    load_model,
    pick_resolution,
    resolve_source,
)
from relight_stream.train.setup import TrainOutOfMemory
from relight_stream.train.step import to_unit

log = logging.getLogger(__name__)

NONFINITE = "cache:nonfinite_latent"
NONFINITE_ADVICE = "non-finite VAE/text output: use a bf16 or fp32 VAE (an fp16 VAE overflows)"


class _Drops(DropCounter):
    """A :class:`DropCounter` that also keeps the dropped keys of the current shard, and logs every non-finite
    latent (rare by nature, and each key must be named), not only the first and every 100th."""

    def __init__(self) -> None:
        super().__init__(every=100, logger=log)
        self.keys: defaultdict[str, list[str]] = defaultdict(list)

    def record(self, reason: str, key: str, detail: str | None = None) -> None:
        self.keys[reason].append(key)
        if reason == NONFINITE:
            self.counts[reason] += 1
            self.log.warning("dropped %s: %s (%s) [%d so far]", key, reason, detail, self.counts[reason])
        else:
            super().record(reason, key, detail)

    def take_shard(self) -> dict[str, Any]:
        """This shard's record (``drops`` counts, ``dropped`` keys); starts the next shard's."""
        rec = {"drops": {r: len(k) for r, k in sorted(self.keys.items())}, "dropped": dict(sorted(self.keys.items()))}
        self.keys = defaultdict(list)
        return rec


def _update_info(path: Path, update: dict[str, Any] | None = None, shard: tuple[str, dict] | None = None) -> None:
    """Read-modify-write ``latents.json`` under a lock (ranks write it concurrently): set ``update``'s fields,
    add one shard's drop record, and recompute the totals ``drops``/``dropped`` over the shards recorded."""
    with open(path.with_name(".latents.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = json.loads(path.read_text()) if path.is_file() else {}
        info.update(update or {})
        shards = info.setdefault("shards", {})
        if shard is not None:
            shards[shard[0]] = shard[1]
        drops: dict[str, int] = defaultdict(int)
        dropped: dict[str, list[str]] = defaultdict(list)
        for name in sorted(shards):
            for reason, keys in shards[name].get("dropped", {}).items():
                drops[reason] += len(keys)
                dropped[reason] += keys
        info["drops"], info["dropped"] = dict(sorted(drops.items())), dict(sorted(dropped.items()))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(path)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _batches(url: str, size: int, resolution: int, drops: DropCounter) -> Iterator[list[dict[str, Any]]]:
    from webdataset import warn_and_continue
    from webdataset.tariterators import tarfile_samples

    items: list[dict[str, Any]] = []
    for rec in tarfile_samples([{"url": url}], handler=warn_and_continue):
        try:
            missing = [m for m in IMAGE_MEMBERS if m not in rec]
            if missing:
                raise KeyError(f"missing {missing}")
            items.append({"key": rec["__key__"], "input": decode_rgb(rec["input.jpg"], resolution),
                          "target": decode_rgb(rec["target.jpg"], resolution), "text": rec["instruction.txt"],
                          "meta": rec.get("meta.json", b"{}")})
        except Exception as exc:  # noqa: BLE001 - bad samples are dropped, never raised
            drops.record("cache:missing_member" if isinstance(exc, KeyError) else "cache:decode_error",
                         f"{url}:{rec.get('__key__')}", str(exc))
            continue
        if len(items) == size:
            yield items
            items = []
    if items:
        yield items


@torch.no_grad()
def encode_batch(model: Any, items: list[dict[str, Any]], device: Any, autocast: bool) -> dict[str, np.ndarray]:
    """Latents and embeddings of one batch, float32 numpy (see the module docstring)."""
    inputs = to_unit(torch.from_numpy(np.stack([it["input"] for it in items])).permute(0, 3, 1, 2), device)
    targets = to_unit(torch.from_numpy(np.stack([it["target"] for it in items])).permute(0, 3, 1, 2), device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        cond, _ = encode_images(model, inputs)
        moments = model.vae.encode(targets.to(model.vae.dtype)).latent_dist.parameters
        embeds, pooled = encode_text(model, [it["text"].decode("utf-8").strip() for it in items], device)
    out = {"cond": cond, "moments": moments, "embeds": embeds}
    if pooled is not None:
        out["pooled"] = pooled
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def encode_halving(model: Any, items: list[dict[str, Any]], device: Any, autocast: bool) -> dict[str, np.ndarray]:
    """:func:`encode_batch`, halving the batch on a GPU out-of-memory error (each sample is encoded on its own
    terms, so the batch size changes no result beyond kernel-level rounding). One sample that still does not fit
    raises :class:`~relight_stream.train.setup.TrainOutOfMemory` with what to change."""
    try:
        return encode_batch(model, items, device, autocast)
    except Exception as exc:  # noqa: BLE001 - only an out-of-memory error is handled here
        if not is_oom(exc):
            raise
        if len(items) == 1:
            raise TrainOutOfMemory(f"cache-latents: one sample at this resolution does not fit in GPU memory "
                                   f"({exc}); pass a smaller --resolution or use a larger GPU") from exc
    free_cuda_cache()
    half = len(items) // 2
    warn_once(log, f"cache-latents: out of GPU memory at batch {len(items)}: encoding in halves of {half} "
                   f"(pass --batch-size {half} to avoid the retries)")
    first, second = (encode_halving(model, part, device, autocast) for part in (items[:half], items[half:]))
    return {k: np.concatenate([first[k], second[k]]) for k in first}


def run_cache_latents(cfg: CacheLatentsConfig, run: RunConfig) -> int:
    """Encode every input shard not yet done; returns 0 (1 when a shard failed).

    The resolution is ``cfg.resolution`` or, unset, the one ``train`` picks for the same ``--model``
    (:func:`~relight_stream.train.model.pick_resolution`), so the trainer can use the cache as it is.
    """
    import dataclasses

    import webdataset as wds

    if not cfg.out:
        raise ValueError("cache-latents: --out is required")
    if cfg.model not in TINY_FLAVORS:
        resolve_source(cfg.model)  # an unknown model name fails before anything is written
    shards = resolve_shards(cfg.shards)
    if shard_format(shards[0]) != "images":
        raise ValueError(f"cache-latents: {shards[0]} is not a triplet image shard")
    cfg = dataclasses.replace(cfg, resolution=pick_resolution(cfg.resolution, cfg.model, what="cache-latents"))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    info_path = out / "latents.json"
    if info_path.is_file():
        old = json.loads(info_path.read_text())
        if (old.get("model"), old.get("resolution")) != (cfg.model, cfg.resolution):
            raise ValueError(f"{out} holds latents of --model {old.get('model')} at {old.get('resolution')}², not "
                             f"{cfg.model} at {cfg.resolution}²; use another --out")
    rank, world = rank_world()
    if rank == 0:
        dump_config(cfg, out / "config.yaml", run=run)
        warn_if_upscaled(shards, cfg.resolution, what="cache-latents")
    todo = [s for s in shards[rank::world] if not (out / Path(s).name).is_file()]
    log.info("cache-latents: %d shard(s) for this rank, %d to do", len(shards[rank::world]), len(todo))
    device = "cuda" if run.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if run.device == "auto" else run.device)
    model = load_model(cfg.model, seed=run.seed or 0)
    for part in (model.vae, *model.text_encoders):
        part.requires_grad_(False).eval().to(device)
    autocast = torch.device(device).type == "cuda"
    info = {"model": cfg.model, "resolution": cfg.resolution, "kind": model.kind,
            "scaling_factor": model.scaling_factor, "dtype": "float16", "source": model.source,
            "revision": model.revision}
    if rank == 0:
        _update_info(info_path, info)  # keeps the drop records of the shards a previous run wrote
    drops = _Drops()
    written, failed = 0, 0
    for url in todo:
        final = out / Path(url).name
        tmp = final.with_name(final.name + ".tmp")
        n_shard = 0
        try:
            with wds.TarWriter(str(tmp), mtime=0) as sink:
                for items in _batches(url, cfg.batch_size, cfg.resolution, drops):
                    arrays = encode_halving(model, items, device, autocast)
                    for i, it in enumerate(items):
                        sample = {name: arr[i].astype(np.float16) for name, arr in arrays.items()}
                        bad = [f"{n}.npy" for n, a in sample.items() if not np.isfinite(a).all()]
                        if bad:
                            drops.record(NONFINITE, it["key"], f"{', '.join(bad)} in {url}; {NONFINITE_ADVICE}")
                            continue
                        rec = {"__key__": it["key"], "instruction.txt": it["text"], "meta.json": it["meta"]}
                        rec.update({f"{n}.npy": _npy(a) for n, a in sample.items()})
                        sink.write(rec)
                        written += 1
                        n_shard += 1
            tmp.replace(final)
            _update_info(info_path, shard=(final.name, {"written": n_shard, **drops.take_shard()}))
        except Exception as exc:  # noqa: BLE001 - a failed shard is reported and left undone for a rerun
            tmp.unlink(missing_ok=True)
            if isinstance(exc, TrainOutOfMemory):  # every later shard would fail the same way
                raise
            log.exception("cache-latents: shard %s failed", url)
            drops.take_shard()
            failed += 1
    log.info("cache-latents: %d sample(s) written, drops %s, %d shard(s) failed", written, drops.as_dict(), failed)
    return 1 if failed else 0
