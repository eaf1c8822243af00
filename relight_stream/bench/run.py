"""``relight-stream bench TARGET``: dispatch to ``relight_stream.bench.<target>:bench_<target>(cfg, run)``.

Targets: decode, kernels, albedo, filter, generate, train, engines, example (against the diffusers example
script; needs ``--example-script``), and ``all`` (every target whose module exists;
missing ones are skipped with a note). A target returns ``{"target": name, "rows": [...], ...summary}``; each row
is a flat dict, by convention ``name`` (what was timed), ``batch``, ``ms`` (median per call, synchronised GPU
timing after warm-up), ``images_per_s`` and optional ``util_pct`` (achieved FLOP/s against the device's peak).
The dispatcher adds wall time and peak host/device memory per target (``peak_host_scope``: ``"target"`` where the
peak RSS could be reset before the target, else ``"process"``, the peak so far) and the machine description (with
library ``versions``), prints a human table per target, then ONE JSON line, always the last line of stdout.

``--compare A,B`` runs the target twice in one process, with two configs, and prints the ratio B/A of the
throughput of each matching row (``speedup`` > 1: B is faster). ``A`` and ``B`` are each either a backend name
(``eager,compile``; set as ``cfg.backend``, interpreted by the target: engines take eager|compile|onnxruntime|
tensorrt, decode takes dali|pil, kernels numpy|cupy) or ``+``-joined ``field=value`` overrides of the bench config
(``precision=fp32,precision=bf16`` or ``backend=eager+precision=bf16,backend=compile+precision=bf16``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relight_stream.bench.timing import (
    format_table,
    json_line,
    machine_info,
    peak_host_mb,
    peak_host_scope,
    reset_peak_host,
)
from relight_stream.config import BenchConfig, coerce, config_to_dict
from relight_stream.fileio import atomic_write

log = logging.getLogger(__name__)
TARGETS = ("decode", "kernels", "albedo", "filter", "generate", "train", "engines", "example")
RESULTS_DIR = Path("bench/results")
NOT_IMPLEMENTED = 2


def load_target(name: str) -> Callable[[BenchConfig, Any], dict[str, Any]] | None:
    """``bench_<name>`` from ``relight_stream.bench.<name>``, or ``None`` when that module does not exist yet."""
    modname = f"relight_stream.bench.{name}"
    try:
        module = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name == modname:
            return None
        raise
    return getattr(module, f"bench_{name}", None)


def parse_compare(spec: str, base: BenchConfig) -> list[tuple[str, BenchConfig]]:
    """``"A,B"`` -> two (label, config) pairs; see the module docstring for the syntax."""
    labels = [s.strip() for s in spec.split(",")]
    if len(labels) != 2 or not all(labels):
        raise ValueError(f"--compare takes exactly two comma-separated configs A,B; got {spec!r}")
    hints = typing.get_type_hints(BenchConfig)
    out = []
    for label in labels:
        changes: dict[str, Any] = {}
        for item in label.split("+"):
            field, sep, value = item.partition("=")
            if not sep:
                field, value = "backend", item
            if field not in hints or field in ("compare", "target"):
                valid = sorted(set(hints) - {"compare", "target"})
                raise ValueError(f"--compare: unknown bench field {field!r}; valid: {valid}")
            changes[field] = coerce(_literal(value), hints[field], f"compare.{field}")
        out.append((label, dataclasses.replace(base, compare=None, **changes)))
    return out


def _literal(text: str) -> Any:
    """``"true"``/``"3"``/``"[1,4]"`` -> Python values (JSON), anything else stays a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _run_one(fn: Callable[..., dict[str, Any]], cfg: BenchConfig, run: Any) -> dict[str, Any]:
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    reset_peak_host()
    t0 = time.perf_counter()
    result = fn(cfg, run)
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise TypeError(f"{getattr(fn, '__name__', fn)} must return a dict with a 'rows' list, got {type(result)}")
    result = dict(result)
    result["wall_s"] = round(time.perf_counter() - t0, 3)
    result["peak_host_mb"] = round(peak_host_mb(), 1)
    result["peak_host_scope"] = peak_host_scope("target")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        result["peak_device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _throughput(row: dict[str, Any]) -> tuple[str, float] | None:
    for key, value in row.items():
        if key.endswith("_per_s") and isinstance(value, (int, float)) and value > 0:
            return key, float(value)
    for key in ("ms", "median_ms"):
        if isinstance(row.get(key), (int, float)) and row[key] > 0:
            return key, 1e3 / float(row[key])
    return None


_NOT_IDENTITY = {"backend", "precision", "device", "repeats", "warmup", "peak_host_scope"}


def _row_id(row: dict[str, Any]) -> tuple:
    """What a row measures: its str/int/bool fields, minus the ones two compared configs may change."""
    return tuple(
        (k, v) for k, v in row.items()
        if k not in _NOT_IDENTITY and (v is None or isinstance(v, (str, bool, int)))
    )


def compare_results(a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str]) -> list[dict[str, Any]]:
    """Rows matched by identity (see ``_row_id``) with both throughputs and ``speedup`` = B/A."""
    b_rows = {_row_id(r): r for r in b["rows"]}
    rows = []
    for ra in a["rows"]:
        rb = b_rows.get(_row_id(ra))
        ta, tb = _throughput(ra), (_throughput(rb) if rb else None)
        if ta is None or tb is None:
            continue
        row = dict(_row_id(ra))
        unit = "per_s" if ta[0].endswith("_per_s") else "calls_per_s"
        row[f"{labels[0]} {unit}"], row[f"{labels[1]} {unit}"] = ta[1], tb[1]
        row["speedup"] = tb[1] / ta[1]
        rows.append(row)
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and not isinstance(r[k], (dict, list))]
    return cols


def _show(cfg: BenchConfig, title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    if not (cfg.json or os.environ.get("RELIGHT_BENCH_JSON_ONLY") == "1"):  # the CLI's --json sets either
        print(title)
        print(format_table(rows, columns or _columns(rows)))


def _save(result: dict[str, Any], cfg: BenchConfig) -> Path:
    out = Path(cfg.out) if cfg.out else RESULTS_DIR
    if out.suffix != ".json":
        m = result.get("machine", {})
        where = re.sub(r"[^a-z0-9]+", "-", str(m.get("gpu") or f"cpu{m.get('cores', '')}").lower()).strip("-")
        tags = [result["target"], "tiny" if cfg.tiny else "full", cfg.backend, cfg.precision, where]
        if cfg.compare:
            tags[2] = "compare-" + re.sub(r"[^A-Za-z0-9]+", "-", cfg.compare)
        out = out / ("-".join(tags) + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(out), (json.dumps(result, indent=1, sort_keys=True, default=str) + "\n").encode("utf-8"))
    return out


def run_bench(cfg: BenchConfig, run: Any) -> int:
    """Entry point of ``relight-stream bench``; see the module docstring. Returns 0, 1 (a target failed) or 2
    (the one target asked for is not implemented yet)."""
    if cfg.target != "all" and cfg.target not in TARGETS:
        raise ValueError(f"unknown bench target {cfg.target!r}; valid: {['all', *TARGETS]}")
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ValueError(f"bench: need repeats >= 1 and warmup >= 0, got {cfg.repeats}, {cfg.warmup}")
    configs = parse_compare(cfg.compare, cfg) if cfg.compare else [(cfg.backend, cfg)]
    targets = list(TARGETS) if cfg.target == "all" else [cfg.target]
    results: dict[str, Any] = {}
    skipped, failed = [], {}
    for target in targets:
        fn = load_target(target)
        if fn is None:
            if cfg.target != "all":
                print(f"bench target {target!r} is not implemented yet (no relight_stream/bench/{target}.py)",
                      file=sys.stderr)
                return NOT_IMPLEMENTED
            log.warning("skipping bench target %r: not implemented yet", target)
            skipped.append(target)
            continue
        try:
            runs = [(label, _run_one(fn, c, run)) for label, c in configs]
        except Exception as exc:
            if cfg.target != "all":
                raise
            log.exception("bench target %s failed", target)
            failed[target] = f"{type(exc).__name__}: {exc}"
            continue
        for label, res in runs:
            title = f"== {target}" + (f" [{label}]" if cfg.compare else "") + f" ({res['wall_s']:.1f} s)"
            _show(cfg, title, res["rows"], res.get("columns"))
        if cfg.compare:
            (la, ra), (lb, rb) = runs
            ratio = compare_results(ra, rb, (la, lb))
            _show(cfg, f"== {target}: {lb} vs {la} (speedup = {lb} / {la} throughput)", ratio)
            results[target] = {"target": target, "compare": [la, lb], "a": ra, "b": rb, "rows": ratio}
        else:
            results[target] = runs[0][1]
    summary: dict[str, Any]
    if cfg.target != "all":
        summary = dict(results[cfg.target])
    else:
        summary = {"target": "all", "results": results, "skipped": skipped, "failed": failed,
                   "rows": [{"target": t, "wall_s": r.get("wall_s", r.get("a", {}).get("wall_s"))}
                            for t, r in results.items()]}
    summary["machine"] = machine_info()
    summary["config"] = config_to_dict(cfg)
    summary["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if cfg.save or cfg.out:
        log.info("saved %s", _save(summary, cfg))
    print(json_line(summary))
    return 1 if failed else 0
