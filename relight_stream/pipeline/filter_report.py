"""The filter's verification report: selected-vs-rejected score summaries and the score histogram.

Replaces the reference's ``verify_filtering.py``. Reads the ranking score of every input (the column
:func:`relight_stream.pipeline.selection.ranking_score` ranks by) and the selected keys; produces

* :func:`verification` — the ``verification`` block of ``stats.json``: ``selected`` and ``rejected`` summaries
  (``count, min, max, mean, median, std``; std is the population std, ``ddof=0``) over the ``ok`` inputs with a
  finite score, ``unscored`` (``ok`` inputs without one) and ``gap_at_cutoff`` = lowest selected score − highest
  rejected score (None when either group is empty; 0 when the cut-off splits a tie; ≥ 0 otherwise);
* :func:`score_histogram` — ``score_histogram.png``: a histogram of that score over the ``ok`` inputs, each bar
  stacked as rejected (grey) below selected (green), with the cut-off (the lowest selected score) as a red
  vertical line that falls on a bin edge. Drawn with PIL and NumPy (no plotting dependency).

Scores are dimensionless (``photo_score``/``clip_score`` in 0–1, ``head_score`` a linear head's logit); the plot's
x axis is that score, its y axis inputs per bin.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from relight_stream.pipeline.shard import atomic_write

log = logging.getLogger(__name__)

SELECTED_RGB = (70, 170, 90)
REJECTED_RGB = (150, 150, 150)
CUTOFF_RGB = (220, 30, 30)
PLOT_BOX = (70, 40, 30, 60)  # left, top, right, bottom margins in pixels


def summary(values: np.ndarray) -> dict[str, Any]:
    """``count, min, max, mean, median, std`` (ddof=0) of the finite values; the statistics are None when none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"count": 0, "min": None, "max": None, "mean": None, "median": None, "std": None}
    return {"count": len(v), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
            "median": float(np.median(v)), "std": float(v.std())}


def verification(scores: np.ndarray, ok: np.ndarray, selected: np.ndarray) -> dict[str, Any]:
    """The ``verification`` block of ``stats.json`` (see the module docstring).

    Args:
        scores: Ranking score per input, float ``[N]`` (NaN where there is none).
        ok: ``status == "ok"`` per input, bool ``[N]``.
        selected: Whether each input was selected, bool ``[N]``.
    """
    scores, ok, selected = np.asarray(scores, float), np.asarray(ok, bool), np.asarray(selected, bool)
    finite = np.isfinite(scores) & ok
    sel, rej = summary(scores[finite & selected]), summary(scores[finite & ~selected])
    gap = sel["min"] - rej["max"] if sel["count"] and rej["count"] else None
    return {"selected": sel, "rejected": rej, "unscored": int((ok & ~np.isfinite(scores)).sum()),
            "gap_at_cutoff": gap}


def histogram_edges(values: np.ndarray, cutoff: float | None, bins: int | None = None) -> np.ndarray:
    """Equal-width bin edges covering ``values`` (and ``cutoff``), with ``cutoff`` exactly on an edge.

    ``bins`` defaults to the Rice rule ``2·n^(1/3)`` clipped to 10–60. Values equal to ``cutoff`` fall in the bin
    right of it (bins are left-closed, the last one closed on both sides).
    """
    v = values[np.isfinite(values)]
    lo, hi = float(v.min()), float(v.max())
    if cutoff is not None:
        lo, hi = min(lo, cutoff), max(hi, cutoff)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 0.5, hi + 0.5
    n = bins or int(np.clip(math.ceil(2 * len(v) ** (1 / 3)), 10, 60))
    w = (hi - lo) / n
    if cutoff is None:
        return lo + w * np.arange(n + 1)
    left = math.ceil((cutoff - lo) / w - 1e-9)
    right = max(1, math.ceil((hi - cutoff) / w - 1e-9))
    edges = cutoff + w * np.arange(-left, right + 1)
    edges[left] = cutoff  # exact, whatever the rounding of w * 0
    return edges


def _axis_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """About ``n`` round tick values inside ``[lo, hi]``."""
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return np.arange(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1) * step


def score_histogram(path: Path, scores: np.ndarray, selected: np.ndarray, cutoff: float | None, *,
                    score_name: str = "score", size: tuple[int, int] = (640, 400),
                    bins: int | None = None) -> dict[str, Any] | None:
    """Write ``score_histogram.png`` (see the module docstring); nothing (and None) when no score is finite.

    Args:
        path: Output PNG path (written atomically).
        scores: Ranking score of every ``ok`` input, float ``[N]``; non-finite values are left out.
        selected: Whether each of those inputs was selected, bool ``[N]``.
        cutoff: The lowest selected score (``stats.json``'s ``cutoff``); None draws no line.
        score_name: Name of the score column, used in the x-axis label.
        size: ``(width, height)`` of the image in pixels.
        bins: Number of bins (default: see :func:`histogram_edges`).

    Returns:
        The layout: ``edges`` (bin edges), ``plot`` (``x0, y0, x1, y1`` of the plot area in pixels; the value
        ``edges[0]`` maps to column ``x0`` and ``edges[-1]`` to ``x1``), ``cutoff_x`` (the line's column or None).
    """
    from PIL import Image, ImageDraw, ImageFont

    scores, selected = np.asarray(scores, float), np.asarray(selected, bool)
    fin = np.isfinite(scores)
    if not fin.any():
        return None
    edges = histogram_edges(scores, cutoff, bins)
    n_sel = np.histogram(scores[fin & selected], edges)[0]
    n_rej = np.histogram(scores[fin & ~selected], edges)[0]
    top = max(1, int((n_sel + n_rej).max()))
    w, h = size
    x0, y0, x1, y1 = PLOT_BOX[0], PLOT_BOX[1], w - PLOT_BOX[2], h - PLOT_BOX[3]

    def px(v: float) -> int:
        return round(x0 + (v - edges[0]) / (edges[-1] - edges[0]) * (x1 - x0))

    def py(c: float) -> int:
        return round(y1 - c / top * (y1 - y0))

    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for i in range(len(edges) - 1):
        a, b = px(edges[i]) + 1, max(px(edges[i]) + 1, px(edges[i + 1]) - 1)
        base, cum = y1, 0  # base: the row above the part drawn so far; a non-empty part is at least 1 px high
        for count, colour in ((n_rej[i], REJECTED_RGB), (n_sel[i], SELECTED_RGB)):
            if count and base > y0:
                cum += count
                top_y = max(y0, min(py(cum), base - 1))
                d.rectangle([a, top_y, b, base - 1], fill=colour)
                base = top_y
    d.line([(x0, y0), (x0, y1), (x1, y1)], fill=(0, 0, 0))
    for t in _axis_ticks(edges[0], edges[-1]):
        d.line([(px(t), y1), (px(t), y1 + 4)], fill=(0, 0, 0))
        d.text((px(t), y1 + 6), f"{t:.4g}", fill=(0, 0, 0), font=font, anchor="ma")
    for t in _axis_ticks(0, top, 5):
        if t == int(t):
            d.line([(x0 - 4, py(t)), (x0, py(t))], fill=(0, 0, 0))
            d.text((x0 - 6, py(t)), f"{int(t)}", fill=(0, 0, 0), font=font, anchor="rm")
    d.text(((x0 + x1) // 2, h - 18), f"{score_name} (dimensionless; bin width {edges[1] - edges[0]:.3g})",
           fill=(0, 0, 0), font=font, anchor="ma")
    ylabel = Image.new("RGB", (y1 - y0, 14), (255, 255, 255))
    ImageDraw.Draw(ylabel).text(((y1 - y0) // 2, 1), "inputs per bin (count)", fill=(0, 0, 0), font=font, anchor="ma")
    img.paste(ylabel.rotate(90, expand=True), (4, y0))
    cutoff_x = None
    if cutoff is not None:
        cutoff_x = px(cutoff)
        d.line([(cutoff_x, y0), (cutoff_x, y1 - 1)], fill=CUTOFF_RGB, width=1)
    legend = [(SELECTED_RGB, f"selected ({int(n_sel.sum())})"), (REJECTED_RGB, f"rejected ({int(n_rej.sum())})")]
    if cutoff is not None:
        legend.append((CUTOFF_RGB, f"cut-off {cutoff:.4g}"))
    lx = x0 + 4
    for colour, text in legend:
        d.rectangle([lx, 8, lx + 10, 18], fill=colour)
        d.text((lx + 14, 8), text, fill=(0, 0, 0), font=font)
        lx += 26 + int(d.textlength(text, font=font))
    d.text((x1, 24), f"{int(fin.sum())} ok inputs", fill=(0, 0, 0), font=font, anchor="ra")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(str(path), buf.getvalue())
    return {"edges": edges, "plot": (x0, y0, x1, y1), "cutoff_x": cutoff_x}


def score_label(df: Any, scorer: str) -> str:
    """The name of the score ``scorer`` ranks ``df`` by (as :func:`~.selection.ranking_score` picks it)."""
    if scorer == "combined":
        return "sqrt(photo_score * clip_score)"
    if scorer == "clip":
        return "head_score" if "head_score" in df.columns and df["head_score"].notna().any() else "clip_score"
    return "photo_score" if scorer == "photometric" else scorer


def write_histogram(out: Path, keys: Any, status: Any, score: Any, selected_keys: set[str], cutoff: float | None,
                    label: str) -> Path | None:
    """``out/score_histogram.png`` over the ``ok`` inputs; removes a stale one and returns None when none has a score.

    Args:
        out: Output folder.
        keys, status, score: Per input (``scores.parquet`` rows): key, status, ranking score (NaN when none).
        selected_keys: The selected keys.
        cutoff: The lowest selected score (None when nothing was selected).
        label: The x-axis name of the score (:func:`score_label`).
    """
    path = out / "score_histogram.png"
    import pandas as pd

    ok = pd.Series(status).eq("ok").to_numpy()
    sel = pd.Series(keys).isin(selected_keys).to_numpy()
    layout = score_histogram(path, np.asarray(score, float)[ok], sel[ok], cutoff, score_name=label)
    if layout is None:
        path.unlink(missing_ok=True)  # a stale plot would show another run's scores
        return None
    log.info("score histogram: %s", path)
    return path


__all__ = ["histogram_edges", "score_histogram", "score_label", "summary", "verification", "write_histogram"]
