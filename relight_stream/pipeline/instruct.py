"""Instruction text: reads ``meta[i]["relight"]`` (what was applied to the input) plus ``rgb_BHW3``,
``albedo_BHW3``, ``normals_BHW3`` and ``mask_BHW`` (to describe what the target shows); writes ``instruction_B``.

The reference asked a VLM about the original photo only, so its text never named the light that the model had
to undo. Here the instruction is built from both ends of the edit:

* applied (input side): the degradation type and its parameters as recorded by the relight stage — light
  direction in words (from the left / above / the front / behind ...), softness, colour temperature, pattern.
* target: a least-squares fit of the photo's shading (photo luminance / albedo luminance over the foreground)
  to ``c0 + c . n`` gives the target's dominant light direction (``c``) and how directional it is
  (``|c| / c0``); the white balance of the foreground gives its colour temperature in words.

Directions are in image space (the viewer's left is "the left"). One of several phrasings is drawn per sample
from ``sample_rng(seed, key, "instruct")``; all phrasings, the summaries and the drawn index go to
``meta[i]["instruct"]``. Optional user captions (CSV or JSONL with ``key`` and ``caption``/``text``/
``keywords``) are appended by key.
"""

from __future__ import annotations

import colorsys
import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from relight_stream.config import InstructConfig, RunConfig
from relight_stream.kernels.color import luminance, srgb_to_linear
from relight_stream.kernels.shading import direction_angles
from relight_stream.kernels.xp import asnumpy
from relight_stream.keys import sample_rng
from relight_stream.pipeline.stage import Stage, per_sample
from relight_stream.sample import SampleBatch

log = logging.getLogger(__name__)

_SECTORS = ("the right", "the upper right", "above", "the upper left", "the left", "the lower left", "below",
            "the lower right")


PATTERN_WORDS = {  # kernels.patterns.PATTERNS -> what the shadow looks like
    "blinds": "venetian-blind stripes", "window": "a window-frame shadow", "foliage": "dappled leaf shadows",
    "branches": "branch shadows", "fence": "fence-slat shadows", "chainlink": "a chain-link shadow",
    "lattice": "a lattice shadow", "clouds": "drifting cloud shadows", "voronoi": "a mottled shadow pattern",
    "curtain": "curtain shadows", "screen": "a screen shadow", "grille": "a grille shadow",
    "dapple": "dappled light",
}


def direction_words(direction: Any) -> str:
    """Where a light comes from, in words: ``from the upper left``, ``from the front``, ``from behind, left``."""
    az, el = direction_angles(direction)
    if el >= 62:
        return "from the front"
    sector = _SECTORS[int(((az + 22.5) % 360) // 45)]
    if el <= -15:
        return f"from behind, {sector.replace('the ', '')}" if sector != "above" else "from behind and above"
    if el >= 35:
        return f"from the front and {sector if sector in ('above', 'below') else sector.replace('the ', '')}"
    return f"from {sector}"


def kelvin_words(kelvin: float | None) -> str:
    """``warm``, ``neutral`` or ``cool`` for a colour temperature in kelvin (``None`` -> neutral)."""
    if kelvin is None:
        return "neutral"
    return "warm" if kelvin < 4600 else ("cool" if kelvin > 7200 else "neutral")


def white_balance_words(rgb_HW3: np.ndarray) -> str:
    """``warm``/``cool``/``neutral`` from the grey-world ratio of the whole photo (linear R/B), conservatively."""
    small = rgb_HW3[:: max(1, rgb_HW3.shape[0] // 64), :: max(1, rgb_HW3.shape[1] // 64)]
    mean = srgb_to_linear(small).reshape(-1, 3).mean(0)
    ratio = float(mean[0] / max(mean[2], 1e-4))
    return "warm" if ratio > 2.2 else ("cool" if ratio < 0.6 else "neutral")


def estimate_target_light(rgb_HW3: np.ndarray, albedo_HW3: np.ndarray, normals_HW3: np.ndarray,
                          mask_HW: np.ndarray, *, samples: int = 4096) -> dict[str, Any]:
    """Dominant light of the original photo from its shading, ``s ~ c0 + c . n`` over the foreground.

    Returns:
        JSON-able dict: ``direction`` (unit, camera frame, or None when the light is even), ``directionality``
        (``|c| / (c0 + |c|)``, 0 = perfectly even), ``contrast`` (90th / 10th percentile of the shading),
        ``tone`` (``warm``/``neutral``/``cool`` from the foreground's white balance) and ``words``.
    """
    step = max(1, int(math.sqrt(mask_HW.size / samples)))
    m = mask_HW[::step, ::step] > 0.5
    lin = srgb_to_linear(rgb_HW3[::step, ::step])[m]
    ya = luminance(albedo_HW3[::step, ::step][m])
    n = normals_HW3[::step, ::step][m]
    ok = ya > 0.02
    if ok.sum() < 32:
        return {"direction": None, "directionality": 0.0, "contrast": 1.0, "tone": "neutral", "words": "even light"}
    s = luminance(lin[ok]) / ya[ok]
    A = np.concatenate([np.ones((int(ok.sum()), 1), np.float32), n[ok]], axis=1)
    coef, *_ = np.linalg.lstsq(A, s, rcond=None)
    c0, c = float(coef[0]), coef[1:].astype(np.float64)
    strength = float(np.linalg.norm(c))
    directionality = strength / (abs(c0) + strength + 1e-9)
    lo, hi = np.percentile(s, [10, 90])
    contrast = float(hi / max(lo, 1e-4))
    tone = white_balance_words(rgb_HW3)
    lateral = float(np.hypot(c[0], c[1]))
    if directionality < 0.2 or lateral < 0.15 * (abs(c0) + strength):
        direction, where = None, ("from the front" if directionality >= 0.2 else None)
    else:
        # Inflated or monocular normals make the fitted z unreliable (rim darkening looks like back light);
        # photos are front-lit far more often than back-lit, so the target's key light is kept in front.
        d = np.array([c[0], c[1], max(c[2], 0.0) + 0.35 * lateral])
        direction = (d / np.linalg.norm(d)).tolist()
        where = direction_words(direction)
    quality = "soft" if contrast < 2.5 else ("contrasty" if contrast > 5 else "gentle")
    words = f"{quality} light {where}" if where else f"{quality}, even light"
    if tone != "neutral":
        words = f"{tone} {words}"
    return {"direction": direction, "directionality": round(directionality, 4), "contrast": round(contrast, 4),
            "tone": tone, "words": words}


def color_words(light: dict[str, Any]) -> str:
    """``warm``/``cool``/empty for a white light by kelvin; a hue name (``blue-gel``) for a coloured light."""
    if light.get("kelvin") is not None or light.get("color") is None:
        w = kelvin_words(light.get("kelvin"))
        return "" if w == "neutral" else w
    r, g, b = (max(0.0, float(c)) for c in light["color"])
    h, sat, _ = colorsys.rgb_to_hsv(r / max(r, g, b, 1e-6), g / max(r, g, b, 1e-6), b / max(r, g, b, 1e-6))
    if sat < 0.25:
        return ""
    names = ((0.04, "red"), (0.11, "orange"), (0.18, "yellow"), (0.45, "green"), (0.55, "cyan"), (0.72, "blue"),
             (0.85, "purple"), (0.96, "pink"), (1.01, "red"))
    return next(n for edge, n in names if h < edge) + "-gel"


def sh_direction(coeffs: Any) -> list[float] | None:
    """Dominant direction of an order-2 SH environment (luminance of the linear band), or None when even."""
    c = np.asarray(coeffs, np.float64).reshape(9, 3) @ np.array([0.2126, 0.7152, 0.0722])
    v = np.array([c[3], c[1], c[2]])  # Y11 ~ x, Y1-1 ~ y, Y10 ~ z
    n = float(np.linalg.norm(v))
    return None if n < 0.15 * abs(c[0]) + 1e-9 else (v / n).tolist()


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def describe_applied(rec: dict[str, Any]) -> str:
    """Words for the lighting applied to the input, from the relight record (``meta["relight"]``,
    :func:`relight_stream.kernels.lights.sample_relight`)."""
    kind, variant = rec.get("degradation", "soft"), rec.get("variant", "")
    lights = rec.get("lights") or []
    key = next((l for l in lights if l.get("role") == "key"), lights[0] if lights else {})
    where = direction_words(key["direction"]) if key.get("direction") is not None else ""
    tone = color_words(key) if key else ""
    if kind == "soft":
        return "flat, shadowless light" if variant == "flat" else _join("soft", tone, "light", where)
    if kind == "shadow":
        return _join("hard" if variant == "hard" else "soft", tone, "light", where, "casting shadows")
    if kind == "pattern":
        ptype = str((key.get("pattern") or {}).get("type", variant))
        return _join(tone, "light", where, "broken up by", PATTERN_WORDS.get(ptype, f"{ptype} shadows"))
    if kind == "specular":
        return _join(tone, "light", where, "with shiny specular highlights")
    if kind == "sh":
        d = sh_direction(rec["sh"]) if rec.get("sh") is not None else None
        return _join("diffuse environment light", f"mostly {direction_words(d)}" if d else "")
    if kind == "multi":
        parts = [_join(color_words(l), l.get("role", "extra"), "light", direction_words(l["direction"]))
                 for l in lights if l.get("direction") is not None]
        return "three-light setup (" + ", ".join(parts) + ")"
    return _join(tone, "light", where)


TEMPLATES = (  # the first names only the target (used alone when both ends read the same)
    "Relight the {subject} with {target}.",
    "Remove the {applied} and restore {target}.",
    "Change the lighting from {applied} to {target}.",
    "Get rid of the {applied}; the {subject} should be lit by {target}.",
    "Make the lighting {target} instead of {applied}.",
)


def phrasings(applied: str, target: str, subject: str) -> list[str]:
    """Every phrasing of one edit (the instruction is one of them; the rest go to meta for augmentation)."""
    return [t.format(applied=applied, target=target, subject=subject) for t in TEMPLATES]


def load_captions(path: str) -> dict[str, str]:
    """Captions by key from a CSV (header with ``key`` and ``caption``/``text``/``keywords``) or a JSONL file.

    Raises:
        ValueError: the file is missing or has no usable columns.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"instruct.captions: file not found: {p}")
    rows: list[dict[str, Any]]
    if p.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    out: dict[str, str] = {}
    for row in rows:
        text = next((row[c] for c in ("caption", "text", "keywords") if c in row and row[c] not in (None, "")), None)
        if "key" not in row or text is None:
            raise ValueError(f"instruct.captions: {p} needs a 'key' and a 'caption'/'text'/'keywords' field; "
                             f"got {sorted(row)}")
        out[str(row["key"])] = ", ".join(text) if isinstance(text, list) else str(text).strip()
    return out


class InstructStage(Stage):
    """Writes ``instruction_B`` and ``meta[i]["instruct"]`` (applied/target summaries, phrasings, choice)."""

    name = "instruct"
    reads = ("rgb_BHW3", "mask_BHW", "normals_BHW3", "albedo_BHW3", "input_BHW3")
    writes = ("instruction_B",)

    def __init__(self, cfg: InstructConfig, run: RunConfig | None = None) -> None:
        self.cfg = cfg
        self.seed = int((run or RunConfig()).seed or 0)
        self.captions: dict[str, str] | None = load_captions(cfg.captions) if cfg.captions else None

    def describe(self) -> str:
        extra = f" + {len(self.captions)} captions from {self.cfg.captions}" if self.captions is not None else ""
        return f"{len(TEMPLATES)} templates from applied + estimated target light{extra}"

    def process(self, batch: SampleBatch) -> SampleBatch:
        rgb, mask = asnumpy(batch["rgb_BHW3"]), asnumpy(batch["mask_BHW"])
        normals, albedo = asnumpy(batch["normals_BHW3"]), asnumpy(batch["albedo_BHW3"])
        texts = [""] * len(batch)
        batch["instruction_B"] = texts

        def one(i: int) -> None:
            meta = batch.meta[i]
            target = estimate_target_light(rgb[i], albedo[i], normals[i], mask[i])
            applied = describe_applied(meta.get("relight", {}))
            subject = "person" if (meta.get("segment") or {}).get("faces") else "subject"
            options = phrasings(applied, target["words"], subject)
            # "from X to X" reads as no edit: when both ends get the same words, only the target is named.
            allowed = len(options) if applied != target["words"] else 1
            choice = int(sample_rng(self.seed, batch.keys[i], "instruct").integers(allowed))
            text = options[choice]
            caption = self.captions.get(batch.keys[i]) if self.captions is not None else None
            if caption:
                text = f"{text} Target look: {caption}."
            texts[i] = text
            meta["instruct"] = {"applied": applied, "target": target, "template": choice, "phrasings": options,
                                "caption": caption}

        per_sample(self, batch, one)
        return batch
