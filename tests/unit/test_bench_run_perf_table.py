"""``scripts/perf_table.py``: docs/performance.md is generated from bench/results JSON (and is up to date)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _perf_table():
    spec = importlib.util.spec_from_file_location("perf_table", ROOT / "scripts" / "perf_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_tables_machine_and_rerun_command(tmp_path) -> None:
    result = {
        "target": "engines", "time": "2026-01-01T00:00:00Z",
        "machine": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "cuda": "13.0"},
        "config": {"target": "engines", "tiny": False, "compare": "eager,compile", "precision": "bf16",
                   "batch_sizes": [1, 8], "repeats": 5, "warmup": 1, "backend": "auto"},
        "rows": [{"name": "clip/image", "batch": 8, "eager per_s": 900.0, "compile per_s": 1500.0, "speedup": 1.6667}],
    }
    (tmp_path / "engines-full.json").write_text(json.dumps(result))
    text = _perf_table().render(tmp_path)
    assert "NVIDIA H100 80GB HBM3; torch 2.11.0, cuda 13.0" in text
    cmd = "relight-stream bench engines --compare eager,compile  # with config: precision=bf16, batch_sizes=[1, 8]"
    assert f"rerun: `{cmd}`" in text  # no OMP_NUM_THREADS prefix on a GPU machine
    assert "| name | batch | speedup | eager per_s | compile per_s |" in text
    assert "| clip/image | 8 | 1.67 | 900 | 1.5e+03 |" in text or "| clip/image | 8 | 1.67 | 900 | 1,500 |" in text


def test_committed_doc_matches_committed_results() -> None:
    module = _perf_table()
    assert module.main(["--results", str(ROOT / "bench" / "results"), "--out", str(ROOT / "docs" / "performance.md"),
                        "--check"]) == 0, "run: python scripts/perf_table.py"


def test_the_summary_gives_each_file_its_headline_figures(tmp_path) -> None:
    pt = _perf_table()
    rows = [{"name": "a", "resolution": 512, "images_per_s": 10.0},
            {"name": "b", "resolution": 1024, "images_per_s": 2.5}]
    (tmp_path / "x.json").write_text(json.dumps({"target": "generate", "rows": rows, "machine": {"cores": 2},
                                                 "config": {}, "e2e_images_per_s_512": 12.3, "meets_target": True}))
    (tmp_path / "y.json").write_text(json.dumps({"target": "decode", "rows": rows, "machine": {"gpu": "H100"},
                                                 "config": {"tiny": True}}))
    text = pt.render(tmp_path)
    summary = text[text.index("## Summary"):text.index("## generate")]
    assert "| generate | CPU, 2 cores | e2e_images_per_s_512 12.3, meets_target True | `x.json` |" in summary
    assert "| decode tiny | H100 | 2 rows; fastest a 512² 10 img/s, slowest b 1024² 2.5 img/s | `y.json` |" in summary
