"""Colour: exact sRGB <-> linear transfer, luminance, colour temperature, tone mapping.

Reads sRGB (uint8 0-255 or float 0-1) or linear RGB float arrays of any shape (``(..., 3)`` where a colour axis is
needed); writes float32 linear RGB or sRGB. All lighting maths in relight-stream happens in *linear* RGB (IEC
61966-2-1 primaries and D65 white); sRGB only at decode and encode (ARCHITECTURE.md §4).

The transfer functions are the exact piecewise IEC 61966-2-1 curves (linear toe below 0.04045 / 0.0031308, 2.4
power above). ``srgb_to_linear`` on uint8 input is a 256-entry table lookup (exact, and ~10x faster than the
power); ``linear_to_srgb_u8`` uses a 65,536-entry table on the linear value, which agrees with rounding the exact
curve everywhere except within 1/65535 of a rounding threshold (at most one code value off there; the test
checks every float32 near each of the 255 thresholds).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from relight_stream.kernels.ops import dot3
from relight_stream.kernels.xp import get_xp

try:
    import cv2 as _cv2
except ImportError:  # pragma: no cover
    _cv2 = None

log = logging.getLogger(__name__)

#: Rec. 709 / sRGB luminance weights for linear RGB.
LUMA = (0.2126, 0.7152, 0.0722)

_LUT16 = 65535


def _srgb_to_linear_exact(s, xp):
    s = s.astype(xp.float32, copy=False)
    lo = s / 12.92
    hi = ((xp.maximum(s, 0.04045) + 0.055) / 1.055) ** 2.4
    return xp.where(s <= 0.04045, lo, hi).astype(xp.float32, copy=False)


def _linear_to_srgb_exact(x, xp):
    x = xp.clip(x.astype(xp.float32, copy=False), 0.0, 1.0)
    lo = x * 12.92
    hi = 1.055 * xp.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055
    return xp.where(x <= 0.0031308, lo, hi).astype(xp.float32, copy=False)


@functools.cache
def _u8_to_linear_lut() -> np.ndarray:
    return _srgb_to_linear_exact(np.arange(256, dtype=np.float64) / 255.0, np).astype(np.float32)


@functools.cache
def _linear_to_u8_lut() -> np.ndarray:
    centres = (np.arange(_LUT16 + 1, dtype=np.float64)) / _LUT16
    s = np.where(centres <= 0.0031308, centres * 12.92, 1.055 * np.maximum(centres, 0.0031308) ** (1 / 2.4) - 0.055)
    return np.clip(np.round(s * 255.0), 0, 255).astype(np.uint8)


_TABLES = {"u8_to_linear": _u8_to_linear_lut, "linear_to_u8": _linear_to_u8_lut}


def _lut(name: str, xp) -> Any:
    """The named table on ``xp``'s current device (built once per process, module and GPU)."""
    return _lut_on(name, xp, 0 if xp is np else xp.cuda.runtime.getDevice())


@functools.cache
def _lut_on(name: str, xp, device: int) -> Any:
    table = _TABLES[name]()
    return table if xp is np else xp.asarray(table)


def srgb_to_linear(x: Any) -> Any:
    """sRGB -> linear RGB, float32.

    Args:
        x: uint8 (0-255) or float (0-1) sRGB values, any shape.

    Returns:
        Linear values in [0, 1] (float input outside [0, 1] follows the curve's formula), float32.
    """
    xp = get_xp(x)
    if x.dtype == np.uint8:
        if xp is np and _cv2 is not None and (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] <= 4)):
            # float32 table -> float32 output, without NumPy's int64 index temporaries
            return _cv2.LUT(x, _u8_to_linear_lut()).reshape(x.shape)
        return xp.take(_lut("u8_to_linear", xp), x)
    return _srgb_to_linear_exact(x, xp)


def linear_to_srgb(x: Any) -> Any:
    """Linear RGB -> sRGB float32 in [0, 1] (values are clipped to [0, 1] first)."""
    return _linear_to_srgb_exact(x, get_xp(x))


def linear_to_srgb_u8(x: Any) -> Any:
    """Linear RGB float -> sRGB uint8 (clipped to [0, 1]; table lookup, see module docstring).

    On NumPy float32/float64 input one OpenCV pass scales, rounds and saturates to a uint16 table index (NaN -> 255),
    then a uint16-indexed gather reads the table (the gather is most of the cost): 8.5 ms per 1024²x3 image instead
    of 13.3 ms for the int32 index path on a loaded 2-core CPU. OpenCV rounds half to even where the int32 path rounds half up, so the two differ by one index
    (at most one code value) on values within float rounding of an index midpoint (7 of 3M random values).
    """
    xp = get_xp(x)
    if xp is np and x.dtype in (np.float32, np.float64) and x.ndim >= 1 and x.size and _cv2 is not None:
        flat = np.ascontiguousarray(x).reshape(x.shape[0] if x.ndim > 1 else 1, -1)
        if not flat.max() <= 32767.0:  # OpenCV rounds via int32: clip huge values, +inf and NaN first (rare)
            flat = _cv2.min(flat, 1.0)
        idx = _cv2.addWeighted(flat, float(_LUT16), flat, 0.0, 0.0, dtype=_cv2.CV_16U)
        return _linear_to_u8_lut()[idx].reshape(x.shape)
    t = x * np.float32(_LUT16)
    t = xp.nan_to_num(t, copy=False, nan=float(_LUT16))  # NaN -> 255 as on the OpenCV path (a cast makes it 0)
    xp.clip(t, 0.0, float(_LUT16), out=t)
    t += np.float32(0.5)
    return xp.take(_lut("linear_to_u8", xp), t.astype(xp.int32))


def luminance(lin: Any) -> Any:
    """Relative luminance Y of linear RGB ``(..., 3)`` -> ``(...)`` float32 (Rec. 709 weights)."""
    return dot3(lin, LUMA)


def kelvin_to_rgb(kelvin: float) -> list[float]:
    """Colour of a black body at ``kelvin`` (1667-25000 K) as linear sRGB with luminance 1.

    Uses the Kim et al. (2002) cubic fit of the Planckian locus in CIE 1931 xy, then xyY -> XYZ -> linear sRGB
    (D65). 6500 K gives approximately white (1, 1, 1); lower is warmer (more red), higher is bluer. Negative
    components (outside the sRGB gamut, only at the extremes) are clipped to 0 and the result renormalised.

    Returns:
        ``[r, g, b]`` Python floats (JSON-able), luminance 1.
    """
    t = float(np.clip(kelvin, 1667.0, 25000.0))
    if t <= 4000:
        x = -0.2661239e9 / t**3 - 0.2343589e6 / t**2 + 0.8776956e3 / t + 0.179910
    else:
        x = -3.0258469e9 / t**3 + 2.1070379e6 / t**2 + 0.2226347e3 / t + 0.240390
    if t <= 2222:
        y = -1.1063814 * x**3 - 1.34811020 * x**2 + 2.18555832 * x - 0.20219683
    elif t <= 4000:
        y = -0.9549476 * x**3 - 1.37418593 * x**2 + 2.09137015 * x - 0.16748867
    else:
        y = 3.0817580 * x**3 - 5.87338670 * x**2 + 3.75112997 * x - 0.37001483
    X, Y, Z = x / y, 1.0, (1.0 - x - y) / y
    m = ((3.2404542, -1.5371385, -0.4985314), (-0.9692660, 1.8760108, 0.0415560), (0.0556434, -0.2040259, 1.0572252))
    # plain float arithmetic, not BLAS: OpenBLAS picks its kernel by CPU, and the records must not change by 1 ulp
    # between machines (meta.json reproduces a render; the kernel goldens compare records exactly)
    rgb = [max(0.0, r0 * X + r1 * Y + r2 * Z) for r0, r1, r2 in m]
    lum = rgb[0] * float(LUMA[0]) + rgb[1] * float(LUMA[1]) + rgb[2] * float(LUMA[2])
    return [c / lum for c in rgb]


def tonemap(lin: Any, *, mode: str = "clip", exposure: float = 1.0) -> Any:
    """Map linear HDR values into [0, 1] linear before sRGB encoding.

    Args:
        lin: Linear RGB, any shape, values >= 0 (may exceed 1).
        mode: ``clip`` (hard clip: keeps light transport linear below 1) or ``reinhard`` (x / (1 + x), per channel,
            rescaled so that 1 maps to 1 at ``white=4``).
        exposure: Multiplier applied first.
    """
    xp = get_xp(lin)
    x = lin * np.float32(exposure) if exposure != 1.0 else lin
    if mode == "clip":
        return xp.clip(x, 0.0, 1.0).astype(xp.float32, copy=False)
    if mode == "reinhard":
        white = 4.0
        x = xp.maximum(x, 0.0)
        return xp.clip(x * (1 + x / white**2) / (1 + x), 0.0, 1.0).astype(xp.float32, copy=False)
    raise ValueError(f"unknown tone-mapping mode {mode!r}; choose clip or reinhard")
