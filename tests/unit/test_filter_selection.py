"""Selection: ranking, top/threshold, seeded disjoint splits, CSV/stats outputs and the contact sheet."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest

from relight_stream.pipeline.selection import (
    assign_splits, contact_sheet, ranking_score, select, sheet_rows, top_negative, write_selection,
)


def table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "key": [f"img/{i:04d}" for i in range(n)], "path": [f"/data/img/{i:04d}.jpg" for i in range(n)],
        "member": None, "status": "ok", "reason": None, "detail": None,
        "photo_score": rng.random(n), "clip_score": rng.random(n),
    })
    df.loc[3, ["status", "reason", "photo_score", "clip_score"]] = ["skipped", "decode:truncated", np.nan, np.nan]
    df.loc[7, ["status", "reason", "photo_score", "clip_score"]] = ["failed", "clip:nonfinite_output", np.nan, np.nan]
    return df


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_top_and_threshold_keep_the_best_ok_rows_with_a_key_tiebreak():
    df = table()
    df.loc[[10, 11], "photo_score"] = 2.0  # a tie at the top: broken by key, not by input order
    score = ranking_score(df, "photometric")
    top, cut = select(df.iloc[::-1], score.iloc[::-1], top=5)
    assert list(top["key"][:2]) == ["img/0010", "img/0011"]
    assert len(top) == 5 and cut == top["lighting_score"].min()
    assert top["lighting_score"].is_monotonic_decreasing
    thr, _ = select(df, score, threshold=0.5)
    assert (thr["lighting_score"] >= 0.5).all() and (thr["status"] == "ok").all()
    assert len(thr) == int(((score >= 0.5) & (df["status"] == "ok")).sum())
    everything, _ = select(df, score)
    assert len(everything) == len(df) - 2  # the skipped and the failed row are never selected


def test_ranking_scores_per_scorer_and_missing_columns():
    df = table()
    np.testing.assert_allclose(ranking_score(df, "combined"), np.sqrt(df["photo_score"] * df["clip_score"]))
    df["head_score"] = df["clip_score"] * 10
    np.testing.assert_allclose(ranking_score(df, "clip"), df["head_score"])  # a trained head outranks prompts
    with pytest.raises(ValueError, match="clip_score"):
        ranking_score(df.drop(columns=["clip_score"]), "combined")
    with pytest.raises(ValueError, match="unknown scorer"):
        ranking_score(df, "aesthetic")


def test_splits_are_disjoint_reproducible_and_stable_under_reselection():
    keys = [f"k{i:05d}" for i in range(2000)]
    a = assign_splits(keys, (0.8, 0.1, 0.1), seed=7)
    assert a == assign_splits(keys, (0.8, 0.1, 0.1), seed=7)
    assert a != assign_splits(keys, (0.8, 0.1, 0.1), seed=8)
    shuffled = list(np.random.default_rng(0).permutation(keys))
    assert dict(zip(shuffled, assign_splits(shuffled, (0.8, 0.1, 0.1), 7))) == dict(zip(keys, a))
    subset = keys[::3]  # a stricter selection keeps each remaining key in the same split
    assert assign_splits(subset, (0.8, 0.1, 0.1), 7) == a[::3]
    counts = {s: a.count(s) for s in ("train", "val", "test")}
    assert 1520 < counts["train"] < 1680 and 140 < counts["val"] < 260 and 140 < counts["test"] < 260
    with pytest.raises(ValueError, match="three"):
        assign_splits(keys, (0.5, 0.5), seed=0)


def test_write_selection_outputs(tmp_path):
    df = table()
    sel, stats = write_selection(tmp_path, df, scorer="combined", top=20, threshold=None, splits=(0.6, 0.2, 0.2),
                                 seed=3)
    rows = read_csv(tmp_path / "selected.csv")
    assert rows[0] == ["image_path", "lighting_score"] and len(rows) == 21
    assert [r[0] for r in rows[1:]] == list(sel["path"])
    assert [float(r[1]) for r in rows[1:]] == sorted((float(r[1]) for r in rows[1:]), reverse=True)
    split_paths = [{r[0] for r in read_csv(tmp_path / f"{s}.csv")[1:]} for s in ("train", "val", "test")]
    assert sum(map(len, split_paths)) == 20 and set.union(*split_paths) == {r[0] for r in rows[1:]}
    on_disk = json.loads((tmp_path / "stats.json").read_text())
    assert on_disk["ok"] + on_disk["skipped"] + on_disk["failed"] == on_disk["inputs"] == 40
    assert on_disk["reasons"] == {"decode:truncated": 1, "clip:nonfinite_output": 1}
    assert on_disk["selected"] == 20 and on_disk["cutoff"] == pytest.approx(sel["lighting_score"].min())
    assert sum(on_disk["split_counts"].values()) == 20
    # re-selecting without splits removes the stale split files of the earlier run
    write_selection(tmp_path, df, scorer="combined", top=5, threshold=None, splits=None, seed=3)
    assert not (tmp_path / "train.csv").exists() and len(read_csv(tmp_path / "selected.csv")) == 6


def test_top_negative_names_the_strongest_failure_group():
    df = pd.DataFrame({"clip_g_good": [0.1, 0.2, np.nan], "clip_g_harsh": [0.6, 0.1, np.nan],
                       "clip_g_flat": [0.3, 0.7, np.nan]})
    assert list(top_negative(df)) == ["harsh", "flat", None]


def test_contact_sheet_draws_top_cutoff_and_bottom(tmp_path, photos):
    df = table()
    ranked, _ = select(df, ranking_score(df, "photometric"))
    bands = sheet_rows(ranked, cut_index=19, per_row=4)
    assert list(bands) == ["top", "cut-off", "bottom"]
    assert list(bands["top"]["key"]) == list(ranked["key"][:4])
    assert list(bands["cut-off"]["key"]) == list(ranked["key"][17:21])
    assert bands["bottom"]["key"].iloc[0] == ranked["key"].iloc[-1]
    img = photos["coffee"]
    n = contact_sheet(tmp_path / "sheet.jpg", bands, lambda r: None if r["key"].endswith("5") else img, thumb=32)
    expected = sum(not k.endswith("5") for b in bands.values() for k in b["key"])
    assert n == expected and (tmp_path / "sheet.jpg").stat().st_size > 0
    from PIL import Image

    assert Image.open(tmp_path / "sheet.jpg").size == (4 * 32, 3 * (18 + 32 + 14))
