"""Training data: triplet shards (or latent-cache shards) -> batches, split by rank and worker, resumable.

Reads WebDataset tars (ARCHITECTURE.md §5): ``input.jpg``, ``target.jpg``, ``instruction.txt`` (+ optional
``input_l1.jpg``/``input_l2.jpg``/``input_l12.jpg`` for the consistency loss), or the shards ``cache-latents``
writes (``cond.npy``, ``moments.npy``, ``embeds.npy``, optional ``pooled.npy``; see ``latents.py``).

The stream is infinite (training is step-based): each of the ``world x workers`` slots reads its own shards —
shard order reshuffled every epoch from the seed — or, when there are fewer shards than slots, every
``slots``-th sample of all shards. Every rank therefore always has a full batch: no rank runs out first and
leaves DDP waiting. Batches are assembled inside the worker (``DataLoader(batch_size=None)``), and each batch
carries ``(worker, raw_pos)``: how many raw records that worker has consumed. The loop stores the position of
the last *consumed* batch per worker and the number of batches consumed; a resumed stream skips exactly that
many raw records per worker (without decoding them) and continues the workers' round-robin where it stopped,
so the data order after a resume is the one an uninterrupted run would have seen.
Bad samples (missing member, undecodable image) are dropped with a reason and counted, never raised.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import signal
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from relight_stream.keys import sample_rng
from relight_stream.log import DropCounter

log = logging.getLogger(__name__)
IMAGE_MEMBERS = ("input.jpg", "target.jpg", "instruction.txt")
CONSISTENCY_MEMBERS = ("input_l1.jpg", "input_l2.jpg", "input_l12.jpg")
LATENT_MEMBERS = ("cond.npy", "moments.npy", "embeds.npy")


def resolve_shards(specs: list[str]) -> list[str]:
    """Shard files from files, folders (their ``shard-*.tar``), brace patterns and globs, sorted and unique.

    Raises:
        ValueError: nothing matched (named), before any model loads.
    """
    import braceexpand

    found: list[str] = []
    for spec in specs:
        for item in braceexpand.braceexpand(str(spec)):
            p = Path(item).expanduser()
            if p.is_dir():
                hits = sorted(glob.glob(str(p / "shard-*.tar")))
            elif any(c in item for c in "*?["):
                hits = sorted(glob.glob(item))
            elif p.is_file() or "://" in item or item.startswith("pipe:"):
                hits = [item]
            else:
                hits = []
            if not hits:
                raise ValueError(f"no shards found for {item!r}")
            found.extend(hits)
    if not found:
        raise ValueError("no input shards given")
    return list(dict.fromkeys(found))


def shard_format(url: str) -> str:
    """``images`` or ``latents``, from the member names of the first sample of a shard."""
    from webdataset.tariterators import tarfile_samples

    for sample in tarfile_samples([{"url": url}]):
        names = set(sample)
        if all(m in names for m in LATENT_MEMBERS):
            return "latents"
        if all(m in names for m in IMAGE_MEMBERS):
            return "images"
        raise ValueError(f"{url}: first sample {sample.get('__key__')!r} has neither image nor latent members "
                         f"(found {sorted(n for n in names if not n.startswith('__'))})")
    raise ValueError(f"{url}: empty shard")


def warn_if_upscaled(shards: list[str], resolution: int, *, what: str) -> tuple[int, int] | None:
    """Warn once when the first image shard's ``target.jpg`` is smaller than ``resolution``² (it would be upscaled).

    Reads only the first sample's image header. Returns its (width, height), or None for latent shards or an
    unreadable first sample (the stream drops and counts those itself).
    """
    from PIL import Image
    from webdataset.tariterators import tarfile_samples

    try:
        rec = next(iter(tarfile_samples([{"url": shards[0]}])))
        with Image.open(io.BytesIO(rec["target.jpg"])) as img:
            size = img.size
    except (StopIteration, KeyError, OSError, ValueError):
        return None
    if min(size) < resolution:
        log.warning("%s: the shards' images are %dx%d px (first sample of %s), smaller than the resolution %d²: "
                    "every image is upscaled. Generate the shards at --resolution %d or pass --resolution %d",
                    what, size[0], size[1], shards[0], resolution, resolution, min(size))
    return size


def check_latent_size(shards: list[str], resolution: int, vae_scale: int) -> None:
    """Refuse cached latents whose spatial size is not ``resolution / vae_scale`` (latents.json may be absent)."""
    from webdataset.tariterators import tarfile_samples

    for rec in tarfile_samples([{"url": shards[0]}]):
        h, w = np.load(io.BytesIO(rec["cond.npy"])).shape[-2:]
        if (h * vae_scale, w * vae_scale) != (resolution, resolution):
            raise ValueError(f"{shards[0]}: cached latents are {h}x{w} (images of {h * vae_scale}x{w * vae_scale} "
                             f"px), but this run trains at {resolution}²: pass --resolution {h * vae_scale} or "
                             f"rerun cache-latents with --resolution {resolution}")
        return


def decode_rgb(data: bytes, resolution: int) -> np.ndarray:
    """JPEG/PNG bytes -> ``HW3`` sRGB uint8 at ``resolution``² (short side resized, centre-cropped).

    A smaller image is upscaled; the commands warn about that once per run (:func:`warn_if_upscaled`).

    JPEGs go through simplejpeg (about 1.5x PIL's speed, FACTS.md §4), anything else through PIL; EXIF
    orientation is not applied (generated shards are upright by construction).
    """
    from PIL import Image

    arr = None
    if data[:2] == b"\xff\xd8":
        try:
            import simplejpeg

            arr = simplejpeg.decode_jpeg(data, colorspace="RGB")
        except (ImportError, ValueError):
            arr = None  # not decodable by libjpeg-turbo's fast path: let PIL try (and name the error)
    if arr is not None and arr.shape[:2] == (resolution, resolution):
        return arr
    img = Image.fromarray(arr) if arr is not None else Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s = resolution / min(w, h)
    img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return np.asarray(img.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)


def _ignore_sigterm(_: int) -> None:
    # Workers must survive the SIGTERM that asks the main process to checkpoint (RELIABILITY.md E7).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ShardStream(torch.utils.data.IterableDataset):
    """Infinite, deterministic batch stream for one rank (see the module docstring)."""

    def __init__(self, shards: list[str], *, batch_size: int, resolution: int, seed: int, rank: int = 0,
                 world: int = 1, fmt: str = "images", consistency: bool = False, shuffle_buffer: int = 64,
                 start: dict[int, int] | None = None, start_batch: int = 0) -> None:
        super().__init__()
        self.shards, self.batch_size, self.resolution = list(shards), batch_size, resolution
        self.seed, self.rank, self.world, self.fmt = seed, rank, world, fmt
        self.consistency, self.shuffle_buffer = consistency, shuffle_buffer
        self.start, self.start_batch = dict(start or {}), start_batch

    def _records(self, slot: int, slots: int) -> Iterator[dict[str, Any]]:
        from webdataset import warn_and_continue
        from webdataset.tariterators import tarfile_samples

        epoch = 0
        while True:
            order = list(self.shards)
            sample_rng(self.seed, "shard-order", f"epoch{epoch}").shuffle(order)
            by_shard = len(order) >= slots
            mine = order[slot::slots] if by_shard else order
            n = 0
            for i, rec in enumerate(tarfile_samples([{"url": u} for u in mine], handler=warn_and_continue)):
                if by_shard or i % slots == slot:
                    n += 1
                    yield rec
            if n == 0:
                raise ValueError(f"slot {slot}/{slots}: one epoch over {len(mine)} shards yielded no samples")
            epoch += 1

    def _shuffled(self, records: Iterator[dict[str, Any]], slot: int) -> Iterator[dict[str, Any]]:
        rng = sample_rng(self.seed, f"shuffle-slot{slot}")
        buf: list[dict[str, Any]] = []
        for rec in records:
            buf.append(rec)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(int(rng.integers(len(buf))))

    def _decode(self, rec: dict[str, Any]) -> dict[str, Any]:
        if self.fmt == "latents":
            out = {k.split(".")[0]: np.load(io.BytesIO(rec[k])) for k in LATENT_MEMBERS}
            if "pooled.npy" in rec:
                out["pooled"] = np.load(io.BytesIO(rec["pooled.npy"]))
            return out
        names = IMAGE_MEMBERS + (CONSISTENCY_MEMBERS if self.consistency else ())
        missing = [m for m in names if m not in rec]
        if missing:
            raise KeyError(f"missing {missing}")
        out = {m.split(".")[0]: decode_rgb(rec[m], self.resolution) for m in names if m.endswith(".jpg")}
        out["instruction"] = rec["instruction.txt"].decode("utf-8").strip()
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        w, num_w = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes batches from workers round-robin starting at worker 0; after ``start_batch`` consumed
        # batches the next one is due from logical worker start_batch % num_w, so rotate the roles.
        w = (w + self.start_batch) % num_w
        slot, slots = self.rank * num_w + w, self.world * num_w
        drops = DropCounter(every=100, logger=log)
        pos = self.start.get(w, 0)
        records = self._shuffled(self._records(slot, slots), slot) if self.shuffle_buffer > 1 else \
            self._records(slot, slots)
        for _ in range(pos):  # resume: skip consumed records without decoding them
            next(records)
        items: list[dict[str, Any]] = []
        for rec in records:
            pos += 1
            try:
                item = self._decode(rec)
            except Exception as exc:  # noqa: BLE001 - any bad sample is dropped, never raised
                reason = "train:missing_member" if isinstance(exc, KeyError) else "train:decode_error"
                drops.record(reason, f"{rec.get('__url__')}:{rec.get('__key__')}", str(exc))
                continue
            item["__key__"] = rec["__key__"]
            items.append(item)
            if len(items) == self.batch_size:
                yield collate(items, worker=w, raw_pos=pos)
                items = []


def collate(items: list[dict[str, Any]], *, worker: int = 0, raw_pos: int = 0) -> dict[str, Any]:
    """Stack per-sample arrays: images -> uint8 ``B3HW`` tensors; latents/embeddings -> tensors of their dtype."""
    batch: dict[str, Any] = {"keys": [it["__key__"] for it in items], "worker": worker, "raw_pos": raw_pos}
    for name in items[0]:
        if name == "__key__":
            continue
        values = [it[name] for it in items]
        if isinstance(values[0], str):
            batch[name] = values
        elif values[0].dtype == np.uint8:
            batch[name] = torch.from_numpy(np.stack(values)).permute(0, 3, 1, 2).contiguous()
        else:  # cached latents stay float16 until they are on the device (half the host-to-device traffic)
            batch[name] = torch.from_numpy(np.stack(values))
    return batch


def make_loader(stream: ShardStream, *, num_workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over a :class:`ShardStream` (batches are built in the workers)."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = dict(worker_init_fn=_ignore_sigterm, prefetch_factor=4)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                       **extra)


def read_cache_info(shards: list[str]) -> dict[str, Any] | None:
    """The ``latents.json`` written by ``cache-latents`` beside latent shards (None when absent)."""
    p = Path(shards[0]).parent / "latents.json"
    return json.loads(p.read_text()) if p.is_file() else None
