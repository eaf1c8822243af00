"""The filter's verification report: selected-vs-rejected summaries, the gap at the cut-off, the score histogram,
and the split-size report (empty-split warning, counts and fractions in stats.json)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from relight_stream.config import FilterConfig, RunConfig
from relight_stream.pipeline.filter_report import (
    CUTOFF_RGB,
    PLOT_BOX,
    REJECTED_RGB,
    SELECTED_RGB,
    histogram_edges,
    score_histogram,
    verification,
)
from relight_stream.pipeline.filter_run import run_filter
from relight_stream.pipeline.selection import assign_splits, write_scores, write_selection

SIZE = (640, 400)


def table(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "key": [f"img/{i:04d}" for i in range(n)], "path": [f"/nowhere/img/{i:04d}.jpg" for i in range(n)],
        "member": None, "status": "ok", "reason": None, "detail": None, "photo_score": rng.beta(4, 3, n),
    })
    df.loc[[3, 9], ["status", "reason", "photo_score"]] = ["skipped", "decode:truncated", np.nan]
    df.loc[5, ["status", "reason", "photo_score"]] = ["failed", "photo:nonfinite", np.nan]
    df.loc[11, "photo_score"] = np.nan  # ok but without a score: neither selected nor rejected
    return df


def numpy_summary(v: np.ndarray) -> dict:
    return {"count": len(v), "min": v.min(), "max": v.max(), "mean": v.mean(), "median": np.median(v),
            "std": np.sqrt(((v - v.mean()) ** 2).mean())}


def colour_mask(img: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return (img == np.array(rgb, np.uint8)).all(axis=-1)


def check_histogram(path, scores: np.ndarray, cutoff: float) -> None:
    """The PNG: its size, the red cut-off column where ``cutoff`` maps, selected bars right of it, rejected left."""
    img = np.asarray(Image.open(path).convert("RGB"))
    assert Image.open(path).format == "PNG" and img.shape == (SIZE[1], SIZE[0], 3)
    x0, y0, x1, y1 = PLOT_BOX[0], PLOT_BOX[1], SIZE[0] - PLOT_BOX[2], SIZE[1] - PLOT_BOX[3]
    edges = histogram_edges(scores, cutoff)
    assert edges[0] <= scores.min() and edges[-1] >= scores.max() and np.isclose(edges, cutoff, atol=1e-12).any()
    expected_x = round(x0 + (cutoff - edges[0]) / (edges[-1] - edges[0]) * (x1 - x0))
    red_cols = np.flatnonzero(colour_mask(img[y0:y1], CUTOFF_RGB).sum(axis=0) > (y1 - y0) // 2)
    assert list(red_cols) == [expected_x]
    green_cols = np.flatnonzero(colour_mask(img[y0:y1], SELECTED_RGB).any(axis=0))
    grey_cols = np.flatnonzero(colour_mask(img[y0:y1], REJECTED_RGB).any(axis=0))
    assert green_cols.min() > expected_x and grey_cols.max() < expected_x


def test_from_scores_report_matches_a_numpy_recomputation(tmp_path):
    df = table()
    write_scores(tmp_path / "scores.parquet", df, {})
    out = tmp_path / "sel"
    cfg = FilterConfig(from_scores=str(tmp_path / "scores.parquet"), out=str(out), top=12, contact_sheet=0)
    assert run_filter(cfg, RunConfig(seed=1)) == 0
    back = pd.read_parquet(tmp_path / "scores.parquet")
    s = back.loc[back["status"] == "ok", "photo_score"].to_numpy(float)
    s = np.sort(s[np.isfinite(s)])[::-1]
    sel, rej = s[:12], s[12:]
    ver = json.loads((out / "stats.json").read_text())["verification"]
    for name, v in (("selected", sel), ("rejected", rej)):
        assert ver[name] == pytest.approx(numpy_summary(v), rel=1e-12), name
    assert ver["gap_at_cutoff"] == pytest.approx(sel.min() - rej.max()) and ver["gap_at_cutoff"] > 0
    assert ver["unscored"] == 1
    assert ver["selected"]["count"] + ver["rejected"]["count"] + 1 == (df["status"] == "ok").sum()
    check_histogram(out / "score_histogram.png", s, sel.min())


def test_histogram_bar_heights_are_the_counts_per_bin(tmp_path):
    rng = np.random.default_rng(4)
    scores = rng.normal(0.5, 0.15, 200)
    cutoff = float(np.sort(scores)[-50])
    selected = scores >= cutoff
    layout = score_histogram(tmp_path / "h.png", scores, selected, cutoff, size=SIZE, bins=12)
    img = np.asarray(Image.open(tmp_path / "h.png").convert("RGB"))
    x0, y0, x1, y1 = layout["plot"]
    edges = layout["edges"]
    counts = np.histogram(scores, edges)[0]
    px = x0 + (edges - edges[0]) / (edges[-1] - edges[0]) * (x1 - x0)
    for i, c in enumerate(counts):  # the bar's coloured height at its centre column, in counts
        col = img[y0:y1, round((px[i] + px[i + 1]) / 2)]
        bar = colour_mask(col, SELECTED_RGB) | colour_mask(col, REJECTED_RGB)
        assert bar.sum() / (y1 - y0) * counts.max() == pytest.approx(c, abs=0.6), i
    check_histogram(tmp_path / "h.png", scores, cutoff)


def test_verification_edge_cases():
    s = np.array([0.9, 0.5, 0.5, 0.2, np.nan])
    ok = np.array([True, True, True, True, True])
    tie = verification(s, ok, np.array([True, True, False, False, False]))  # top 2 cuts through a tie
    assert tie["gap_at_cutoff"] == 0 and tie["rejected"]["count"] == 2 and tie["unscored"] == 1
    none = verification(s, ok, np.zeros(5, bool))
    assert none["selected"] == {"count": 0, "min": None, "max": None, "mean": None, "median": None, "std": None}
    assert none["gap_at_cutoff"] is None and none["rejected"]["count"] == 4
    assert verification(s, ok, np.ones(5, bool))["gap_at_cutoff"] is None


def test_no_scored_input_writes_no_histogram_and_removes_a_stale_one(tmp_path):
    df = table(12)
    df["status"], df["photo_score"] = "skipped", np.nan
    write_scores(tmp_path / "scores.parquet", df, {})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "score_histogram.png").write_bytes(b"stale")
    cfg = FilterConfig(from_scores=str(tmp_path), out=str(tmp_path / "out"), top=3, contact_sheet=0)
    assert run_filter(cfg, RunConfig()) == 0
    assert not (tmp_path / "out" / "score_histogram.png").exists()
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["verification"]["selected"]["count"] == 0


def test_an_empty_split_is_warned_about_and_recorded(tmp_path, caplog):
    df = table(12)
    df = df[df["status"] == "ok"].dropna(subset=["photo_score"]).head(4).reset_index(drop=True)
    fr = (0.8, 0.1, 0.1)
    seeds = {s: assign_splits(list(df["key"]), fr, s) for s in range(40)}
    empty_seed = next(s for s, a in seeds.items() if "val" not in a)  # P(no val) = 0.9^4 per seed
    full_seed = next(s for s, a in seeds.items() if {"train", "val", "test"} <= set(a))
    with caplog.at_level(logging.WARNING, logger="relight_stream.pipeline.selection"):
        write_selection(tmp_path, df, scorer="photometric", top=None, threshold=None, splits=fr,
                                   seed=empty_seed)
    expected_empty = [n for n in ("train", "val", "test") if n not in seeds[empty_seed]]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(n in warnings[0].getMessage() for n in expected_empty)
    on_disk = json.loads((tmp_path / "stats.json").read_text())
    assert on_disk["empty_splits"] == expected_empty
    assert on_disk["split_fractions"] == dict(zip(("train", "val", "test"), fr))
    assert on_disk["split_counts"] == {n: seeds[empty_seed].count(n) for n in ("train", "val", "test")}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="relight_stream.pipeline.selection"):
        write_selection(tmp_path, df, scorer="photometric", top=None, threshold=None, splits=fr, seed=full_seed)
        half = next(s for s in range(40) if {"train", "val"} <= set(assign_splits(list(df["key"]), (.5, .5, 0), s)))
        write_selection(tmp_path, df, scorer="photometric", top=None, threshold=None, splits=(.5, .5, 0), seed=half)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "a 0-fraction split may be empty"


def test_a_bin_of_one_among_thousands_is_still_drawn(tmp_path):
    scores = np.r_[np.full(5000, 0.5), 0.9]  # the lone best input: far below one pixel of the tallest bar
    layout = score_histogram(tmp_path / "h.png", scores, scores > 0.6, 0.9, size=SIZE, bins=10)
    img = np.asarray(Image.open(tmp_path / "h.png").convert("RGB"))
    _, y0, _, y1 = layout["plot"]
    green = np.flatnonzero(colour_mask(img[y0:y1], SELECTED_RGB).any(axis=0))
    assert len(green) and green.min() > layout["cutoff_x"]
