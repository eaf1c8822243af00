"""The filter's outputs after scoring: selection, splits, stats, contact sheet and score histogram.

Reads a finished scores table (:mod:`relight_stream.pipeline.filter_scores`, or ``--from-scores``) and, for the
contact sheet, re-reads the inputs; writes into ``--out`` ``selected.csv`` (+ ``train/val/test.csv``) and
``stats.json`` (:func:`relight_stream.pipeline.selection.write_selection`), ``contact_sheet.jpg`` (128 px thumbnails:
the top, the images around the cut-off and the bottom) and ``score_histogram.png``
(:mod:`relight_stream.pipeline.filter_report`). Used by :func:`relight_stream.pipeline.filter_run.run_filter`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from relight_stream.config import FilterConfig
from relight_stream.pipeline.filter_report import score_label, write_histogram
from relight_stream.pipeline.selection import contact_sheet, ranking_score, select, sheet_rows, write_selection

log = logging.getLogger(__name__)


def _thumbnail_loader(items: dict[str, Any] | None, side: int = 128):
    """``load(row) -> uint8 image | None``: re-reads the input (file or tar member) and decodes it small."""
    from relight_stream.config import DecodeConfig
    from relight_stream.pipeline.decode import decode_image
    from relight_stream.pipeline.sources import InputItem

    dcfg = DecodeConfig(resolution=side, min_size=1, max_aspect_ratio=1e9)

    def load(row: Any) -> np.ndarray | None:
        try:
            it = (items or {}).get(row["key"])
            if it is None:
                member = row.get("member")
                it = InputItem(row["key"], row["path"], member=member if isinstance(member, str) else None,
                               offset=int(row.get("offset", -1)), size=int(row.get("size", -1)))
            return decode_image(it.read(), dcfg, ext=it.ext)[0]
        except Exception as exc:  # the sheet is a preview: an input gone since scoring leaves a grey tile
            log.debug("contact sheet: cannot reload %s: %s", row["key"], exc)
            return None

    return load


def write_outputs(cfg: FilterConfig, out: Path, df: pd.DataFrame, seed: int, items: dict[str, Any] | None,
                  extra: dict[str, Any]) -> None:
    """Select from the scores table ``df`` and write the selection, splits, stats, contact sheet and histogram.

    Args:
        cfg: ``scorer``, ``top``/``threshold``, ``splits`` and ``contact_sheet`` (thumbnail count; 0 removes a stale
            sheet).
        out: The ``--out`` folder.
        df: The normalised scores table, one row per input.
        seed: The run's global seed (the splits depend only on it, the keys and the scores).
        items: The planned inputs by key, to reload thumbnails (None: rebuilt from the table's path/member columns).
        extra: Extra ``stats.json`` fields (``run``, ``ignored``, ``from_scores``, ...).
    """
    sel, stats = write_selection(out, df, scorer=cfg.scorer, top=cfg.top, threshold=cfg.threshold,
                                 splits=cfg.splits, seed=seed, extra_stats=extra)
    if cfg.contact_sheet > 0:
        ranked, _ = select(df, ranking_score(df, cfg.scorer))
        n = contact_sheet(out / "contact_sheet.jpg", sheet_rows(ranked, max(0, len(sel) - 1), cfg.contact_sheet),
                          _thumbnail_loader(items), selected=set(sel["key"]))
        log.info("contact sheet: %s (%d thumbnails)", out / "contact_sheet.jpg", n)
    else:
        (out / "contact_sheet.jpg").unlink(missing_ok=True)  # a stale sheet would show another selection
    write_histogram(out, df["key"], df["status"], ranking_score(df, cfg.scorer), set(sel["key"]), stats["cutoff"],
                    score_label(df, cfg.scorer))
    log.info("filter done: %d inputs, %d ok, %d skipped, %d failed; %d selected -> %s", stats["inputs"], stats["ok"],
             stats["skipped"], stats["failed"], stats["selected"], out)
