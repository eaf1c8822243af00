"""Kernel goldens: records drawn from fixed seeds and their renders stay what they were (reproducible meta.json).

After an intended change of kernel output, run ``python scripts/regen_goldens.py`` and commit the new goldens.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "tests" / "assets" / "goldens"


def _regen_module():
    spec = importlib.util.spec_from_file_location("regen_goldens", ROOT / "scripts" / "regen_goldens.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_records_match_goldens() -> None:
    expected = json.loads((GOLDENS / "kernels_records.json").read_text())
    current = json.loads(json.dumps(_regen_module().golden_records(), sort_keys=True))
    assert current.keys() == expected.keys()
    for name in expected:
        assert _same(current[name], expected[name]), f"record {name} changed; rerun regen_goldens.py if intended"


def _same(a, b) -> bool:
    """Equal structure and values; floats to 1e-12 relative (libm and SIMD paths may differ by an ulp across CPUs:
    any real change of a record is many orders larger)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-12 * max(
            abs(a), abs(b), 1e-300)
    return a == b


def test_renders_match_goldens() -> None:
    mod = _regen_module()
    expected = np.load(GOLDENS / "kernels_render.npz")
    current = mod.golden_renders(mod.golden_records())
    assert set(current) == set(expected.files)
    for name, img in current.items():
        diff = np.abs(img.astype(np.float32) - expected[name].astype(np.float32))
        assert diff.max() < 2e-3, f"{name}: max diff {diff.max():.2e}, mean {diff.mean():.2e}"


def test_patterns_match_goldens() -> None:
    expected = np.load(GOLDENS / "kernels_patterns.npz")
    current = _regen_module().golden_patterns()
    assert set(current) == set(expected.files)
    for kind, img in current.items():
        diff = np.abs(img.astype(np.float32) - expected[kind].astype(np.float32))
        assert diff.max() < 2e-3, f"pattern {kind}: max diff {diff.max():.2e}; regenerate the goldens if intended"
