"""Selection from a scores table: ranking, top-N / threshold, seeded disjoint splits, CSV and stats outputs.

Reads a table with one row per input (``key``, ``path``, ``status`` ok/skipped/failed, ``reason`` and score
columns — ``scores.parquet`` as written by ``filter``); writes into the output folder:

* ``selected.csv`` — ``image_path,lighting_score``, best first (the reference pipeline's split-CSV columns,
  so the files are drop-in inputs for ``generate`` and for the reference's own scripts);
* ``train.csv``, ``val.csv``, ``test.csv`` with ``--splits`` — the same columns, disjoint;
* ``stats.json`` — counts by status and reason, score quantiles, the cut-off, the split sizes and fractions,
  and the ``verification`` block (selected-vs-rejected summaries, the gap at the cut-off:
  :mod:`relight_stream.pipeline.filter_report`).

Ranking score per scorer: ``photometric`` → ``photo_score``; ``clip`` → ``head_score`` when a linear head was
used, else ``clip_score``; ``combined`` → √(``photo_score`` · ``clip_score``) (a geometric mean: an image must do
well on both). Ties are broken by key, so the order never depends on input order.

Splits: each selected key draws ``u ~ U[0, 1)`` from ``sample_rng(seed, key, "split")`` and falls in the split
whose cumulative fraction interval holds it. A key's split therefore depends only on the seed and the key: it
does not move when the selection is redone with another ``--top``/``--threshold`` (no image changes from test to
train between re-selections), and it is the same on every machine. Split sizes are binomial around the
fractions (exact proportions would make every key's split depend on all the others). The price: a small
selection can leave a split empty (4 keys at 0.8/0.1/0.1 are all ``train`` with probability 0.8⁴ ≈ 0.41). Such a
split is not filled by moving keys (that would make a key's split depend on the rest of the selection, so a
re-selection could move an image between splits); instead a WARNING names every split with a non-zero fraction
that came out empty, and ``stats.json`` records ``split_counts``, ``split_fractions`` and ``empty_splits``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relight_stream.keys import sample_rng
from relight_stream.pipeline.filter_report import verification
from relight_stream.pipeline.shard import atomic_write

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
BASE_COLUMNS = ("key", "path", "member", "status", "reason", "detail")


def ranking_score(df: pd.DataFrame, scorer: str) -> pd.Series:
    """The score to rank by for ``scorer`` (see the module docstring); NaN where a sample has none.

    Raises:
        ValueError: the table lacks the columns that scorer needs (e.g. re-selecting ``--scorer clip`` from a
            photometric-only ``scores.parquet``).
    """
    need = {"photometric": ["photo_score"], "clip": ["clip_score"], "combined": ["photo_score", "clip_score"]}
    if scorer not in need:
        raise ValueError(f"unknown scorer {scorer!r}; choose photometric, clip or combined")
    missing = [c for c in need[scorer] if c not in df.columns]
    if missing:
        have = sorted(c for c in df.columns if c.endswith("_score"))
        raise ValueError(f"scores table has no {missing} for --scorer {scorer} (it has {have}); re-score instead")
    if scorer == "photometric":
        return df["photo_score"].astype(float)
    if scorer == "clip":
        if "head_score" in df.columns and df["head_score"].notna().any():
            return df["head_score"].astype(float)
        return df["clip_score"].astype(float)
    return np.sqrt(df["photo_score"].astype(float).clip(lower=0) * df["clip_score"].astype(float).clip(lower=0))


def top_negative(df: pd.DataFrame) -> pd.Series | None:
    """Per row, the negative prompt group with the most probability (``harsh``, ``backlit``, ...) or None."""
    cols = [c for c in df.columns if c.startswith("clip_g_") and c != "clip_g_good"]
    if not cols:
        return None
    ok = df[cols].notna().all(axis=1)
    out = pd.Series([None] * len(df), index=df.index, dtype=object)
    if ok.any():
        out[ok] = df.loc[ok, cols].astype(float).idxmax(axis=1).str[len("clip_g_"):]
    return out


def select(df: pd.DataFrame, score: pd.Series, *, top: int | None = None,
           threshold: float | None = None) -> tuple[pd.DataFrame, float | None]:
    """Rows to keep, best first, and the cut-off score (the lowest selected score; None when nothing is).

    Only ``status == "ok"`` rows with a finite score are eligible. ``top`` keeps the N best, ``threshold``
    keeps scores ≥ T, neither keeps every eligible row.
    """
    if top is not None and top < 0:
        raise ValueError(f"--top must be >= 0, got {top}")
    ok = df.assign(lighting_score=score.to_numpy())
    ok = ok[(ok["status"] == "ok") & np.isfinite(ok["lighting_score"].to_numpy(dtype=float))]
    ok = ok.sort_values(["lighting_score", "key"], ascending=[False, True], kind="mergesort")
    if top is not None:
        ok = ok.head(top)
    elif threshold is not None:
        ok = ok[ok["lighting_score"] >= threshold]
    cutoff = float(ok["lighting_score"].iloc[-1]) if len(ok) else None
    return ok.reset_index(drop=True), cutoff


def assign_splits(keys: list[str], fractions: tuple[float, ...], seed: int) -> list[str]:
    """Split name per key: ``u`` from the key's own seeded generator against the cumulative fractions."""
    if len(fractions) != len(SPLIT_NAMES) or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {fractions}")
    edges = np.cumsum(fractions)[:-1]
    out = []
    for k in keys:
        u = sample_rng(seed, k, "split").random()
        out.append(SPLIT_NAMES[int(np.searchsorted(edges, u, side="right"))])
    return out


def empty_splits(counts: dict[str, int], fractions: tuple[float, ...]) -> list[str]:
    """Splits asked for (fraction > 0) that hold no key."""
    return [n for n, f in zip(SPLIT_NAMES, fractions) if f > 0 and counts.get(n, 0) == 0]


def image_paths(rows: pd.DataFrame) -> pd.Series:
    """The paths written into the CSVs: the file, or ``tar::member`` for a WebDataset member.

    Local paths are made absolute: a list input resolves relative paths against the list's own folder, so a
    path relative to the working directory would point elsewhere once the CSV is read back.
    """
    path = rows["path"].astype(str).map(lambda p: p if "://" in p else os.path.abspath(p))
    if "member" not in rows.columns:
        return path
    member = rows["member"]
    is_member = member.map(lambda m: isinstance(m, str) and bool(m))
    return path.where(~is_member, path + "::" + member.where(is_member, ""))


def write_csv(path: Path, rows: pd.DataFrame) -> None:
    """``image_path,lighting_score`` rows, written atomically."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["image_path", "lighting_score"])
    w.writerows(zip(image_paths(rows), (f"{v:.6f}" for v in rows["lighting_score"].astype(float))))
    atomic_write(str(path), buf.getvalue().encode("utf-8"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(str(path), (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))


def quantiles(values: pd.Series) -> dict[str, float] | None:
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    qs = {"min": 0, "p05": 5, "p25": 25, "p50": 50, "p75": 75, "p95": 95, "max": 100}
    out = {k: float(np.percentile(v, q)) for k, q in qs.items()}
    out.update(mean=float(v.mean()), std=float(v.std()))
    return out


def write_selection(out: Path, df: pd.DataFrame, *, scorer: str, top: int | None, threshold: float | None,
                    splits: tuple[float, ...] | None, seed: int, extra_stats: dict[str, Any] | None = None
                    ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rank, select, split and write ``selected.csv`` (+ split CSVs) and ``stats.json`` into ``out``.

    Returns:
        (the selected rows with ``lighting_score`` and ``split`` columns, the stats dict written).
    """
    out.mkdir(parents=True, exist_ok=True)
    score = ranking_score(df, scorer)
    sel, cutoff = select(df, score, top=top, threshold=threshold)
    split_counts = split_fractions = empty = None
    if splits is not None:
        sel["split"] = assign_splits(sel["key"].tolist(), tuple(splits), seed)
        for name in SPLIT_NAMES:
            write_csv(out / f"{name}.csv", sel[sel["split"] == name])
        split_counts = {n: int((sel["split"] == n).sum()) for n in SPLIT_NAMES}
        split_fractions = {n: float(f) for n, f in zip(SPLIT_NAMES, splits)}
        empty = empty_splits(split_counts, tuple(splits))
        if empty:
            log.warning("split(s) %s came out empty: %d selected key(s) drawn independently by key hash against "
                        "fractions %s gave %s; select more images or change --splits/--seed if %s must be non-empty",
                        ", ".join(empty), len(sel), split_fractions, split_counts, "/".join(empty))
    else:
        for name in SPLIT_NAMES:  # stale split files from an earlier selection in this folder would mislead
            (out / f"{name}.csv").unlink(missing_ok=True)
    write_csv(out / "selected.csv", sel)
    status = df["status"].value_counts()
    reasons = df.loc[df["status"] != "ok", "reason"].fillna("unknown").value_counts()
    score_cols = [c for c in df.columns if c.endswith("_score") or c.startswith("photo_")]
    stats = {
        "inputs": int(len(df)),
        **{s: int(status.get(s, 0)) for s in ("ok", "skipped", "failed")},
        "reasons": {str(k): int(v) for k, v in reasons.items()},
        "scorer": scorer, "top": top, "threshold": threshold, "seed": seed,
        "selected": int(len(sel)), "cutoff": cutoff, "splits": list(splits) if splits else None,
        "split_counts": split_counts, "split_fractions": split_fractions, "empty_splits": empty,
        "ranking_score": quantiles(score[df["status"] == "ok"]),
        "scores": {c: quantiles(df[c]) for c in score_cols if pd.api.types.is_numeric_dtype(df[c])},
        "verification": verification(score.to_numpy(dtype=float), (df["status"] == "ok").to_numpy(),
                                     df["key"].isin(set(sel["key"])).to_numpy()),
    }
    neg = top_negative(df)
    if neg is not None:
        stats["top_negative_counts"] = {str(k): int(v) for k, v in neg.dropna().value_counts().items()}
    stats.update(extra_stats or {})
    assert stats["ok"] + stats["skipped"] + stats["failed"] == stats["inputs"], "a sample lost its status"
    write_json(out / "stats.json", stats)
    log.info("selected %d of %d ok inputs (%s, cut-off %s)%s", len(sel), stats["ok"], scorer,
             "none" if cutoff is None else f"{cutoff:.4f}", f", splits {split_counts}" if split_counts else "")
    return sel, stats


def write_scores(path: Path, df: pd.DataFrame, meta: dict[str, Any]) -> None:
    """``scores.parquet`` with ``meta`` (JSON) in the schema metadata, written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"relight_stream": json.dumps(meta, default=str).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write(str(path), sink.getvalue().to_pybytes())


def read_scores(path: str) -> pd.DataFrame:
    """A ``scores.parquet`` (a file, or a folder holding one); ``ValueError`` when missing or not one of ours."""
    p = Path(path)
    p = p / "scores.parquet" if p.is_dir() else p
    if not p.is_file():
        raise ValueError(f"--from-scores: {p} not found")
    import pyarrow.parquet as pq

    df = pq.read_table(p).to_pandas()
    missing = [c for c in ("key", "path", "status") if c not in df.columns]
    if missing:
        raise ValueError(f"--from-scores: {p} is not a filter scores table (no {missing} columns)")
    return df


def sheet_rows(ranked: pd.DataFrame, cut_index: int, per_row: int) -> dict[str, pd.DataFrame]:
    """The rows of a contact sheet: ``top``, ``cut-off`` (centred on ``cut_index``) and ``bottom``."""
    n = len(ranked)
    half = per_row // 2
    start = min(max(0, cut_index - half), max(0, n - per_row))
    return {"top": ranked.head(per_row), "cut-off": ranked.iloc[start: start + per_row],
            "bottom": ranked.tail(per_row).iloc[::-1]}


def contact_sheet(path: Path, bands: dict[str, pd.DataFrame], load: Any, *, thumb: int = 128,
                  selected: set[str] | None = None) -> int:
    """Write a JPEG grid: one labelled band per entry of ``bands``, each thumbnail captioned with its score.

    Args:
        path: Output file (``contact_sheet.jpg``).
        bands: Band label -> rows with ``key`` and ``lighting_score``.
        load: ``load(row) -> HxWx3 uint8 | None``; None (unreadable now) leaves a grey tile.
        thumb: Thumbnail side in pixels.
        selected: Keys that were selected: their caption is green, the others' red (shows the cut).

    Returns:
        The number of thumbnails drawn.
    """
    from PIL import Image, ImageDraw

    per_row = max((len(b) for b in bands.values()), default=0)
    if per_row == 0:
        return 0
    label_h, cap_h = 18, 14
    sheet = Image.new("RGB", (per_row * thumb, len(bands) * (label_h + thumb + cap_h)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    drawn = 0
    for b, (label, rows) in enumerate(bands.items()):
        y0 = b * (label_h + thumb + cap_h)
        draw.text((4, y0 + 3), label, fill=(255, 255, 255))
        for j, (_, r) in enumerate(rows.iterrows()):
            img = load(r)
            tile = Image.new("RGB", (thumb, thumb), (128, 128, 128))
            if img is not None:
                im = Image.fromarray(np.ascontiguousarray(img))
                im.thumbnail((thumb, thumb))
                tile.paste(im, ((thumb - im.width) // 2, (thumb - im.height) // 2))
                drawn += 1
            sheet.paste(tile, (j * thumb, y0 + label_h))
            key = r["key"] if len(r["key"]) <= 14 else ".." + r["key"][-12:]
            colour = (220, 220, 220) if selected is None else (120, 230, 120) if r["key"] in selected \
                else (240, 110, 110)
            draw.text((j * thumb + 2, y0 + label_h + thumb + 1), f"{r['lighting_score']:.3f} {key}", fill=colour)
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=90)
    atomic_write(str(path), buf.getvalue())
    return drawn


__all__ = ["ranking_score", "select", "assign_splits", "write_selection", "contact_sheet", "sheet_rows",
           "top_negative", "quantiles"]
