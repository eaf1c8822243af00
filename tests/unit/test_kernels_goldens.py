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
        assert current[name] == expected[name], f"record {name} changed; rerun scripts/regen_goldens.py if intended"


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
