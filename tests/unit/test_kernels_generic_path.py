"""The generic array path (what CuPy runs) gives the same results as the NumPy/OpenCV fast path, checked on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from relight_stream.kernels import color, lights, normals, ops, render, retinex


@pytest.fixture(scope="module")
def inputs(photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    img = photos["astronaut"][::6, ::6][:80, :84]  # odd sizes exercise the padded pyramid
    lin = np.ascontiguousarray(color.srgb_to_linear(img))
    m = np.zeros(img.shape[:2], np.uint8)
    m[6:78, 10:70] = 255
    depth, nrm = normals.normals_from_mask(m, lin)
    return {"lin": lin, "mask": m, "depth": depth, "normals": nrm}


def _both(fn, monkeypatch: pytest.MonkeyPatch):
    fast = fn()
    monkeypatch.setattr(ops, "GENERIC", True)
    generic = fn()
    monkeypatch.setattr(ops, "GENERIC", False)
    return fast, generic


def _close(a, b, atol: float) -> None:
    a, b = (np.asarray(x, np.float64) for x in (a, b))
    d = np.abs(a - b)
    assert d.max() <= atol, f"max diff {d.max():.3e}, mean {d.mean():.3e}"


@pytest.mark.parametrize("method", retinex.METHODS)
def test_albedo_generic_path_matches(inputs: dict, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (a1, s1), (a2, s2) = _both(lambda: retinex.estimate_albedo(inputs["lin"], inputs["mask"], method=method),
                               monkeypatch)
    _close(s1, s2, 2e-3 * float(s1.max()))
    _close(a1, a2, 2e-3 * float(a1.max()))


def test_geometry_generic_path_matches(inputs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    (d1, n1), (d2, n2) = _both(lambda: normals.normals_from_mask(inputs["mask"], inputs["lin"]), monkeypatch)
    _close(d1, d2, 1e-3)
    _close(n1, n2, 1e-2)


@pytest.mark.parametrize("kind", lights.DEGRADATIONS)
def test_render_generic_path_matches(inputs: dict, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = lights.sample_relight(np.random.default_rng(4), degradation=kind)
    (r1, _), (r2, _) = _both(lambda: render.render_relight(inputs["lin"], inputs["normals"], inputs["depth"],
                                                           inputs["mask"], rec), monkeypatch)
    _close(r1, r2, 1e-3)
