"""NumPy / CuPy parity of every kernel (GPU only; skipped without CUDA). Prints max/mean differences on failure."""

from __future__ import annotations

import numpy as np
import pytest

from relight_stream.kernels import color, lights, normals, render, retinex, shading, shadows, specular
from relight_stream.kernels.pattern_sampling import sample_pattern
from relight_stream.kernels.patterns import PATTERNS, pattern_transmission

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_cupy")]


def close(a, b, atol: float) -> None:
    import cupy

    b = cupy.asnumpy(b)
    diff = np.abs(np.asarray(a, np.float64) - b)
    assert diff.max() <= atol, f"max diff {diff.max():.3e}, mean {diff.mean():.3e}"


@pytest.fixture(scope="module")
def inputs(photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    img = photos["astronaut"][::4, ::4]
    lin = color.srgb_to_linear(img)
    m = np.zeros(img.shape[:2], np.uint8)
    m[10:120, 20:110] = 255
    depth, nrm = normals.normals_from_mask(m, lin)
    return {"rgb": img, "lin": lin, "mask": m, "depth": depth, "normals": nrm}


def test_kernels_match_on_numpy_and_cupy(inputs: dict[str, np.ndarray]) -> None:
    import cupy

    g = {k: cupy.asarray(v) for k, v in inputs.items()}
    close(color.srgb_to_linear(inputs["rgb"]), color.srgb_to_linear(g["rgb"]), 1e-6)
    close(color.linear_to_srgb_u8(inputs["lin"]), color.linear_to_srgb_u8(g["lin"]), 0)
    close(normals.normals_from_depth(inputs["depth"], inputs["mask"]),
          normals.normals_from_depth(g["depth"], g["mask"]), 1e-4)
    d_np, n_np = normals.normals_from_mask(inputs["mask"], inputs["lin"])
    d_cp, n_cp = normals.normals_from_mask(g["mask"], g["lin"])
    close(d_np, d_cp, 1e-3)
    close(n_np, n_cp, 1e-2)
    for method in retinex.METHODS:
        a_np, s_np = retinex.estimate_albedo(inputs["lin"], inputs["mask"], method=method)
        a_cp, s_cp = retinex.estimate_albedo(g["lin"], g["mask"], method=method)
        close(s_np, s_cp, 1e-3 * float(s_np.max()))
        close(a_np, a_cp, 2e-3 * float(a_np.max()))
    d = shading.light_direction(30, 40)
    close(shadows.cast_shadow(inputs["depth"], d, size_deg=2), shadows.cast_shadow(g["depth"], d, size_deg=2), 1e-3)
    for model in specular.MODELS:
        close(specular.specular(inputs["normals"], d, model=model),
              specular.specular(g["normals"], d, model=model), 1e-3)
    for kind in PATTERNS:
        rec = sample_pattern(np.random.default_rng(0), kind)
        close(pattern_transmission(rec, (128, 128), depth=inputs["depth"], direction=d),
              pattern_transmission(rec, (128, 128), depth=g["depth"], direction=d), 1e-3)
    for kind in lights.DEGRADATIONS:
        rec = lights.sample_relight(np.random.default_rng(1), degradation=kind)
        r_np, _ = render.render_relight(inputs["lin"], inputs["normals"], inputs["depth"], inputs["mask"], rec)
        r_cp, _ = render.render_relight(g["lin"], g["normals"], g["depth"], g["mask"], rec)
        close(r_np, r_cp, 1e-3)

