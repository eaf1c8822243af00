"""CLIP lighting scorer: an ensemble of positive and negative lighting prompts, softmax with the logit scale.

Reads ``rgb_BHW3`` (sRGB uint8, any device); writes, all float32 on the host:

* ``clip_p_<group>_<i>_B`` — each prompt's probability under a softmax over all prompts (they sum to 1);
* ``clip_g_<group>_B`` — each group's probability: a softmax over group logits
  ``logsumexp(prompt logits of the group) − log(group size)``, so a group's share does not grow with the
  number of prompts written for it;
* ``clip_score_B`` = ``clip_g_good_B`` (0–1); ``head_score_B`` when a linear head is loaded;
* ``clip_embed_BD`` (L2-normalised) when embeddings are kept.

The scalars also go to ``meta[i]["scores"]``.

Why negatives: the reference filter averaged cosine similarities to seven positive prompts, which spread
FFHQ's scores over only 0.157–0.263 (FACTS.md §1). Contrasting the positives with named failure modes (flat,
harsh, backlit, under- and over-exposed, mixed colour casts) through ``softmax(logit_scale · cos)`` — CLIP's
zero-shot classifier — spreads the scores over 0–1 and says *why* an image lost (its top negative prompt).
The linear head follows the LAION aesthetic predictor: ``score = emb · w + b`` on the normalised embedding.

The model comes only from the engine registry (``create_engine("clip", ...)``); this file loads no CLIP itself.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from relight_stream.config import ClipConfig
from relight_stream.pipeline.stage import Stage
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

POSITIVE = "good"
DEFAULT_PROMPTS: dict[str, tuple[str, ...]] = {
    POSITIVE: (
        "a well-lit photo with soft, even, flattering light",
        "a professionally lit studio portrait",
        "a photo in beautiful natural light, bright and clear",
        "a well-exposed photo with balanced lighting and gentle shadows",
    ),
    "flat": ("a flat, dull, low-contrast photo", "a hazy, washed-out photo with no shadows"),
    "harsh": ("a photo with harsh, hard shadows across the face", "a photo lit by harsh direct flash"),
    "backlit": ("a backlit photo with the subject in silhouette", "a photo with a bright window behind a dark subject"),
    "underexposed": ("a dark, underexposed photo", "a photo taken in dim light, too dark to see the subject"),
    "overexposed": ("an overexposed photo with blown-out highlights", "a photo that is far too bright"),
    "colour_cast": ("a photo with mixed orange and blue colour casts", "a photo with a strong green or magenta tint"),
}


def prompt_columns(prompts: dict[str, tuple[str, ...]]) -> list[tuple[str, str, str]]:
    """``(column, group, text)`` per prompt, in a stable order: ``clip_p_<group>_<index>``."""
    return [(f"clip_p_{g}_{i}", g, t) for g, texts in prompts.items() for i, t in enumerate(texts)]


def load_prompts(path: str | None) -> dict[str, tuple[str, ...]]:
    """Prompt groups from a YAML/JSON mapping ``{group: [text, ...]}`` (must include ``good``), or the defaults.

    Raises:
        ValueError: a missing file, no ``good`` group, no negative group, or a bad group name.
    """
    if path is None:
        return dict(DEFAULT_PROMPTS)
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"clip prompts file not found: {p}")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict) or POSITIVE not in data or len(data) < 2:
        raise ValueError(f"{p}: needs a mapping with a {POSITIVE!r} group and at least one negative group")
    out = {}
    for g, texts in data.items():
        if not re.fullmatch(r"[a-z0-9_]+", str(g)):
            raise ValueError(f"{p}: prompt group name {g!r} must match [a-z0-9_]+")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise ValueError(f"{p}: group {g!r} needs one or more non-empty strings")
        out[str(g)] = tuple(texts)
    return out


def load_head(path: str) -> tuple[np.ndarray, float]:
    """A linear head ``(w [D], b)`` from ``.npz`` (``weight``, ``bias``) or a torch state dict (``.pt``/``.pth``).

    A LAION-aesthetic style ``nn.Linear(D, 1)`` state dict (``weight [1, D]``, ``bias [1]``) loads as is.

    Raises:
        ValueError: a missing file, a missing key, or a weight that is not a single output row.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"clip head file not found: {p}")
    if p.suffix == ".npz":
        with np.load(p) as z:
            tensors = {k: np.asarray(z[k]) for k in z.files}
    else:
        import torch

        sd = torch.load(p, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        tensors = {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}
    ws = [v for k, v in tensors.items() if k.split(".")[-1] == "weight"]
    b = next((v for k, v in tensors.items() if k.split(".")[-1] == "bias"), np.zeros(1))
    if len(ws) != 1 or ws[0].size != max(ws[0].shape) or np.size(b) != 1:
        raise ValueError(f"{p}: expected one linear head with 'weight' [D] or [1, D] and a scalar 'bias'")
    w = ws[0]
    return w.reshape(-1).astype(np.float32), float(np.asarray(b).reshape(-1)[0])


def _cached_revision(repo: str) -> str | None:
    """Commit of ``repo``'s ``main`` in the local Hugging Face cache (no network), or None."""
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None
    ref = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / "main"
    return ref.read_text().strip() if ref.is_file() else None


def engine_args(cfg: ClipConfig) -> tuple[str, str | None]:
    """Engine flavor and weights for a :class:`ClipConfig`.

    ``model``: a registered flavor (``tiny``, ``vit-b-32``, ``vit-l-14``; ``ViT-L-14``/``ViT-B-32`` map to those,
    the QuickGELU architecture of OpenAI's weights), ``open_clip:<Name>``, or any other name in
    ``open_clip.list_models()`` (-> the pass-through flavor ``open_clip:<Name>``).
    ``pretrained``: ``None``/``random`` (random weights), a local checkpoint, ``org/name@revision``, or an
    open_clip tag: ``openai`` for the registered flavors resolves to the flavor's hub copy at the revision in the
    local Hugging Face cache; any other tag (or any tag of a pass-through flavor) to open_clip's own weights file
    in the local caches (:func:`relight_stream.engines.clip.resolve_open_clip_tag`). Nothing is downloaded.

    Raises:
        ValueError: an unknown model or tag, or tagged weights that are not in the local caches.
    """
    from relight_stream.engines.clip import OPEN_CLIP_PREFIX, open_clip_flavor, resolve_open_clip_tag
    from relight_stream.engines.registry import get_spec

    w = cfg.pretrained
    try:
        if cfg.model.startswith(OPEN_CLIP_PREFIX):
            raise ValueError
        flavor, name = cfg.model.lower(), get_spec("clip", cfg.model.lower()).config.get("open_clip_name")
    except ValueError:  # not a registered flavor: an open_clip model name
        flavor = open_clip_flavor(cfg.model)
        name = flavor[len(OPEN_CLIP_PREFIX):]
    if w in (None, "", "random"):
        return flavor, None
    if "@" in w or "/" in w or Path(w).expanduser().exists():
        return flavor, w
    hf_id = get_spec("clip", flavor).hf_id
    if w == "openai" and hf_id:
        rev = _cached_revision(hf_id)
        if rev:
            return flavor, f"{hf_id}@{rev}"
        raise ValueError(f"clip.pretrained='openai' for {cfg.model}: not in the local Hugging Face cache; set "
                         f"clip.pretrained (config YAML) to {hf_id}@<commit>, a local checkpoint, or 'random'")
    if not name:
        raise ValueError(f"clip.pretrained={w!r}: clip flavor {flavor!r} has no open_clip tags; give "
                         f"'org/name@revision', a local checkpoint path or 'random'")
    name, path = resolve_open_clip_tag(name, w)
    return open_clip_flavor(name), path


def resolve_precision(precision: str, device: Any = "auto") -> str:
    """``ClipConfig.precision`` on ``device``: ``auto`` is bf16 on CUDA and fp32 on a CPU; others as given."""
    if precision != "auto":
        return precision
    kind = str(getattr(device, "type", device) or "auto").split(":")[0]
    if kind == "auto":
        from relight_stream.engines.registry import resolve_device

        kind = resolve_device("auto").type
    return "bf16" if kind == "cuda" else "fp32"


def _to_torch(x: Any, device: Any):
    """``[B, H, W, 3]`` uint8 (NumPy, CuPy or torch) -> ``[B, 3, H, W]`` float 0–1 on ``device``."""
    import torch

    if type(x).__module__.startswith("cupy"):
        x = torch.from_dlpack(x)
    t = torch.as_tensor(x)
    # non_blocking only host -> GPU: a GPU -> host copy would return before the data is there
    t = t.to(device, non_blocking=torch.device(device).type == "cuda")
    return t.permute(0, 3, 1, 2).float().div_(255.0)


class ClipScoreStage(Stage):
    """Scores a batch with CLIP against the prompt groups; see the module docstring for what it writes.

    Args:
        cfg: Model, weights, backend, batch size, optional head and prompt file.
        device: ``auto``, ``cpu``, ``cuda``... (``RunConfig.device``).
        save_embeddings: Also write ``clip_embed_BD``.
        engine: An already built CLIP engine (tests and benchmarks share one); built in :meth:`setup` otherwise.
    """

    name = "clip"
    reads = ("rgb_BHW3",)

    def __init__(self, cfg: ClipConfig, *, device: str = "auto", save_embeddings: bool = False,
                 engine: Any = None) -> None:
        self.cfg = cfg
        self.device = device
        self.save_embeddings = save_embeddings
        self.prompts = load_prompts(cfg.prompts)
        self.columns = prompt_columns(self.prompts)
        self.head = load_head(cfg.head) if cfg.head else None
        self.engine = engine
        if self.head is not None:
            self._check_head_dim(engine.embed_dim if engine is not None else self._spec_dim())
        self.writes = ("clip_score_B", *(f"{c}_B" for c, _, _ in self.columns),
                       *(f"clip_g_{g}_B" for g in self.prompts),
                       *(("head_score_B",) if self.head else ()), *(("clip_embed_BD",) if save_embeddings else ()))

    def _spec_dim(self) -> int | None:
        from relight_stream.engines.registry import get_spec

        return get_spec("clip", engine_args(self.cfg)[0]).config.get("embed_dim")

    def _check_head_dim(self, dim: int | None) -> None:
        if dim is not None and self.head is not None and len(self.head[0]) != dim:
            raise ValueError(f"clip head {self.cfg.head} has {len(self.head[0])} inputs but {self.cfg.model} "
                             f"embeddings have {dim} dimensions")

    def setup(self) -> None:
        import torch

        if self.engine is None:
            from relight_stream.engines.registry import create_engine

            flavor, weights = engine_args(self.cfg)
            precision = resolve_precision(self.cfg.precision, self.device)
            self.engine = create_engine("clip", flavor, backend=self.cfg.backend, weights=weights,
                                        device=self.device, precision=precision)
        eng = self.engine
        self._check_head_dim(getattr(eng, "embed_dim", None))
        with torch.inference_mode():
            text = torch.as_tensor(eng.encode_text([t for _, _, t in self.columns])).float()
        self._text_PD = torch.nn.functional.normalize(text, dim=-1)
        self._scale = float(eng.logit_scale)
        self._groups = {g: [j for j, (_, gj, _) in enumerate(self.columns) if gj == g] for g in self.prompts}
        self._device = self._text_PD.device
        self._chunk = self.cfg.batch_size
        log.info("clip scorer: %s, %d prompts in %d groups, logit scale %.1f", self.describe(), len(self.columns),
                 len(self._groups), self._scale)

    def describe(self) -> str:
        flavor, weights = engine_args(self.cfg)
        eng = self.engine
        backend = getattr(eng, "backend", self.cfg.backend)
        return f"clip {flavor} weights={weights or 'random'} backend={backend}" + (" +head" if self.head else "")

    def _embed(self, rgb: Any):
        """Normalised float32 embeddings ``[B, D]`` in chunks of ``cfg.batch_size``.

        A CUDA out-of-memory error halves the chunk size once for the rest of the run; a second one raises.
        """
        import torch

        out, s = [], 0
        while s < len(rgb):
            x = _to_torch(rgb[s: s + self._chunk], self._device)
            try:
                with torch.inference_mode():
                    e = torch.as_tensor(self.engine.encode_image(x)).float().to(self._device)
            except torch.cuda.OutOfMemoryError:
                if self._chunk < self.cfg.batch_size or self._chunk == 1:
                    raise
                self._chunk = max(1, self._chunk // 2)
                log.warning("clip scorer: CUDA out of memory; retrying with batches of %d", self._chunk)
                torch.cuda.empty_cache()
                continue
            out.append(torch.nn.functional.normalize(e, dim=-1))
            s += len(x)
        return torch.cat(out)

    def process(self, batch: SampleBatch) -> SampleBatch:
        import torch

        idx = list(batch.kept())
        n = len(batch)
        rgb = batch["rgb_BHW3"]
        if isinstance(rgb, (list, tuple)):
            raise ValueError("clip scorer needs a fixed-size rgb_BHW3 batch (decode resizes every image)")
        cols: dict[str, np.ndarray] = {c: np.full(n, np.nan, np.float32) for c, _, _ in self.columns}
        cols.update({f"clip_g_{g}": np.full(n, np.nan, np.float32) for g in self._groups})
        cols["clip_score"] = np.full(n, np.nan, np.float32)
        if idx:
            sel = rgb if len(idx) == n else rgb[np.asarray(idx)] if isinstance(rgb, np.ndarray) else rgb[idx]
            emb = self._embed(sel)
            logits = self._scale * emb @ self._text_PD.T
            probs = torch.softmax(logits, dim=-1)
            group_logits = torch.stack([torch.logsumexp(logits[:, m], dim=-1) - math.log(len(m))
                                        for m in self._groups.values()], dim=-1)
            gprobs = torch.softmax(group_logits, dim=-1)
            probs_np, gprobs_np, emb_np = (t.float().cpu().numpy() for t in (probs, gprobs, emb))
            for j, (c, _, _) in enumerate(self.columns):
                cols[c][idx] = probs_np[:, j]
            for j, g in enumerate(self._groups):
                cols[f"clip_g_{g}"][idx] = gprobs_np[:, j]
            cols["clip_score"][idx] = cols[f"clip_g_{POSITIVE}"][idx]
            if self.head is not None:
                cols["head_score"] = np.full(n, np.nan, np.float32)
                cols["head_score"][idx] = emb_np @ self.head[0] + self.head[1]
            if self.save_embeddings:
                full = np.full((n, emb_np.shape[1]), np.nan, np.float32)
                full[idx] = emb_np
                batch["clip_embed_BD"] = full
            bad = ~np.isfinite(emb_np).all(axis=1)
            for j, i in enumerate(idx):
                if bad[j]:
                    batch.drop(i, f"{self.name}:nonfinite_output", failed=True)
                    continue
                scores = batch.meta[i].setdefault("scores", {})
                scores.update({c: float(v[i]) for c, v in cols.items()})
        elif self.save_embeddings:
            batch["clip_embed_BD"] = np.zeros((n, 0), np.float32)
        for c, v in cols.items():
            batch[f"{c}_B"] = v
        return batch
