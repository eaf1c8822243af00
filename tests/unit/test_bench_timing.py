"""``bench/timing.py``: per-row peak host memory (VmHWM reset) and the library versions in ``machine_info()``."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from relight_stream.bench import timing
from relight_stream.bench.run import _run_one
from relight_stream.config import BenchConfig, RunConfig

BIG_MB = 160  # the first "row" touches this much; the second only ~1 MiB
needs_clear_refs = pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK),
    reason="/proc/self/clear_refs is not writable here (not Linux, or a restricted /proc): the peak RSS cannot be "
           "reset, peak_host_mb() is the process-lifetime peak",
)


def _touch(mb: int) -> float:
    """Allocate and write ``mb`` MiB (so it is resident), free it; returns the sum so the work is not elided."""
    a = np.ones(mb * 2**20 // 8, dtype=np.float64)
    total = float(a[:: 4096].sum())
    del a
    return total


@needs_clear_refs
def test_second_row_peak_excludes_first_rows_big_array():
    assert timing.reset_peak_host()
    _touch(BIG_MB)
    peak1 = timing.peak_host_mb()
    assert timing.peak_host_scope("row") == "row"

    assert timing.reset_peak_host()
    _touch(1)
    peak2 = timing.peak_host_mb()

    assert peak1 - peak2 > 0.75 * BIG_MB, (peak1, peak2)  # row 2 did not inherit row 1's peak


@needs_clear_refs
def test_bench_dispatcher_peak_is_per_target():
    def big(cfg, run):
        _touch(BIG_MB)
        return {"target": "big", "rows": []}

    def small(cfg, run):
        _touch(1)
        return {"target": "small", "rows": []}

    cfg, run = BenchConfig(), RunConfig(device="cpu")
    first, second = _run_one(big, cfg, run), _run_one(small, cfg, run)
    assert first["peak_host_scope"] == second["peak_host_scope"] == "target"
    assert first["peak_host_mb"] - second["peak_host_mb"] > 0.75 * BIG_MB, (first, second)


def test_without_proc_the_peak_is_the_process_lifetime_one(monkeypatch, tmp_path):
    monkeypatch.setattr(timing, "_CLEAR_REFS", str(tmp_path / "missing" / "clear_refs"))
    monkeypatch.setattr(timing, "_STATUS", str(tmp_path / "missing" / "status"))
    assert timing.reset_peak_host() is False
    assert timing.peak_host_scope("row") == "process"
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert timing.peak_host_mb() == pytest.approx(lifetime, abs=1.0)


def test_machine_info_versions_match_the_installed_libraries_without_importing_them():
    code = (
        "import json, sys; from relight_stream.bench.timing import machine_info; info = machine_info(); "
        "heavy = ['onnxruntime', 'onnx', 'diffusers', 'transformers', 'accelerate', 'open_clip', 'cv2', "
        "'nvidia.dali', 'cupy', 'tensorrt', 'webdataset']; "
        "print(json.dumps({'info': info, 'imported': [m for m in heavy if m in sys.modules]}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    info, versions = got["info"], got["info"]["versions"]
    assert got["imported"] == []
    for key in ("host", "platform", "python", "cpu", "cores", "numpy", "torch", "torch_threads"):
        assert key in info  # the keys committed results and scripts/perf_table.py read stay as they were
    assert all(isinstance(v, str) and v for v in versions.values())

    import onnxruntime

    assert versions["onnxruntime"] == onnxruntime.__version__  # the eager-vs-onnxruntime rows say which one
    for mod, dist in (("onnx", "onnx"), ("diffusers", "diffusers"), ("transformers", "transformers"),
                      ("webdataset", "webdataset")):
        if importlib.util.find_spec(mod) is not None:
            assert versions[dist] == __import__(mod).__version__
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        opencv = [v for k, v in versions.items() if k.startswith("opencv")]
        assert opencv and all(v.startswith(cv2.__version__) for v in opencv)
    for mod, prefix in (("cupy", "cupy"), ("tensorrt", "tensorrt")):
        if importlib.util.find_spec(mod) is None:
            assert not [k for k in versions if k.startswith(prefix)]  # absent libraries are omitted
