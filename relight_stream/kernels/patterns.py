"""Procedural occluder patterns (gobos): blinds, window frames, foliage, branches, fences, lattices, clouds, ...

Reads pattern parameters (a JSON-able dict from ``pattern_sampling.sample_pattern``), an output shape and
optionally the depth map and light direction; writes a transmission map ``(H, W)`` float32 in [0, 1] (1 = light
passes) that multiplies the direct term of the light that carries the pattern — so a pattern is part of one light
and light transport stays linear.

Every pattern is an analytic function of continuous coordinates measured in units of the image side (centred,
+y up), evaluated for all pixels at once — no per-pixel Python, no rasterised stencil — so its size is relative to
the image and it renders the same at any resolution. Edges are ramps of width ``softness`` (image-side units),
the penumbra of the occluder. With a depth map the pattern is projected along the light, so it shifts with the
surface height (parallax) instead of lying flat on the image like the reference's 2-D stencil. Randomness
inside a pattern (leaf positions, cell jitter) comes from an integer hash of lattice cells seeded by ``seed``,
so the same record renders the same pattern on CPU and GPU.

Evaluated at a working resolution (``work``, longest side) and upsampled bilinearly.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from relight_stream.kernels.filters import downsample, upsample, work_factor
from relight_stream.kernels.xp import get_xp

PATTERNS = ("blinds", "window", "foliage", "branches", "fence", "chainlink", "lattice", "clouds", "voronoi",
            "curtain", "screen", "grille", "dapple")


# ----------------------------------------------------------------------------------------------- helpers


def _ramp(d: Any, softness: float) -> Any:
    xp = get_xp(d)
    return xp.clip(d * np.float32(1.0 / max(softness, 1e-5)) + np.float32(0.5), 0.0, 1.0)


def _hash(ix: Any, iy: Any, seed: int, k: int = 0) -> Any:
    """Uniform [0, 1) float32 per integer lattice cell (lowbias32-style integer hash, wraps in uint32)."""
    xp = get_xp(ix)
    s = np.uint32((seed * 0x9E3779B1 + k * 0x85EBCA77) & 0xFFFFFFFF)
    h = ix.astype(xp.uint32) * np.uint32(0x8DA6B343) ^ iy.astype(xp.uint32) * np.uint32(0xD8163841) ^ s
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return (h >> np.uint32(8)).astype(xp.float32) * np.float32(1.0 / (1 << 24))


def _value_noise(u: Any, v: Any, seed: int) -> Any:
    xp = get_xp(u)
    iu, iv = xp.floor(u), xp.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    iu, iv = iu.astype(xp.int64), iv.astype(xp.int64)
    a, b = _hash(iu, iv, seed), _hash(iu + 1, iv, seed)
    c, d = _hash(iu, iv + 1, seed), _hash(iu + 1, iv + 1, seed)
    return (a + (b - a) * fu) * (1 - fv) + (c + (d - c) * fu) * fv


def fbm(u: Any, v: Any, seed: int, octaves: int = 4) -> Any:
    """Fractal value noise in [0, 1] (lattice spacing 1 at the first octave)."""
    acc, amp, tot = 0.0, 1.0, 0.0
    for o in range(octaves):
        acc = acc + amp * _value_noise(u * (2.0**o), v * (2.0**o), seed + 101 * o)
        tot += amp
        amp *= 0.5
    return acc / np.float32(tot)


def _stripes(s: Any, period: float, blocked: float, phase: float = 0.0) -> Any:
    """Signed distance (image-side units, > 0 = open) to periodic blocked bands covering ``blocked`` of a period."""
    xp = get_xp(s)
    t = xp.mod(s / np.float32(period) + np.float32(phase), 1.0)
    d = xp.where(t >= blocked, xp.minimum(t - blocked, 1 - t), -xp.minimum(t, blocked - t))
    return d * np.float32(period)


def _lines(s: Any, period: float, width: float) -> Any:
    """Signed distance to thin periodic lines of ``width`` (> 0 = open)."""
    xp = get_xp(s)
    t = xp.mod(s / np.float32(period) + 0.5, 1.0) - 0.5
    return xp.abs(t) * np.float32(period) - np.float32(width / 2)


def _cells(u: Any, v: Any, cell: float) -> tuple[Any, Any, Any, Any]:
    xp = get_xp(u)
    gu, gv = u / np.float32(cell), v / np.float32(cell)
    iu, iv = xp.floor(gu), xp.floor(gv)
    return iu.astype(xp.int64), iv.astype(xp.int64), gu - iu, gv - iv


# ---------------------------------------------------------------------------------------------- patterns


def _blinds(u, v, p, xp):
    return _ramp(_stripes(v, p["period"], p["blocked"], p["phase"]), p["softness"])


def _window(u, v, p, xp):
    ax, ay = p["half_size"]
    d_box = -xp.maximum(xp.abs(u) - np.float32(ax), xp.abs(v) - np.float32(ay))
    d = d_box
    nx, ny = p["panes"]
    if nx > 1:
        d = xp.minimum(d, _lines(u + np.float32(ax), 2 * ax / nx, p["bar"]))
    if ny > 1:
        d = xp.minimum(d, _lines(v + np.float32(ay), 2 * ay / ny, p["bar"]))
    return _ramp(d, p["softness"])


def _fence(u, v, p, xp):
    d = _stripes(u, p["period"], p["blocked"], p["phase"])
    for r in p["rails"]:
        d = xp.minimum(d, xp.abs(v - np.float32(r)) - np.float32(p["bar"] / 2))
    return _ramp(d, p["softness"])


def _crossed(u, v, p, xp):
    s1, s2 = (u + v) * np.float32(0.70710678), (u - v) * np.float32(0.70710678)
    d = xp.minimum(_lines(s1, p["period"], p["bar"]), _lines(s2, p["period"], p["bar"]))
    return _ramp(d, p["softness"])


def _grille(u, v, p, xp):
    d = _lines(u, p["period"], p["bar"])
    if p["crossbar"]:
        d = xp.minimum(d, _lines(v, p["period"] * 3, p["bar"]))
    return _ramp(d, p["softness"])


def _screen(u, v, p, xp):
    per = p["period"]
    row = xp.floor(v / np.float32(per))
    uu = u + xp.mod(row, 2) * np.float32(per / 2)  # hexagonal stagger
    du = (xp.mod(uu / np.float32(per), 1.0) - 0.5) * np.float32(per)
    dv = (xp.mod(v / np.float32(per), 1.0) - 0.5) * np.float32(per)
    return _ramp(np.float32(p["hole"] * per / 2) - xp.sqrt(du * du + dv * dv), p["softness"])


def _clouds(u, v, p, xp):
    n = fbm(u / np.float32(p["scale"]), v / np.float32(p["scale"]), p["seed"], octaves=5)
    return xp.clip((n - np.float32(p["threshold"])) / np.float32(p["contrast"]) + 0.5, 0.0, 1.0)


def _curtain(u, v, p, xp):
    wave = u / np.float32(p["period"]) + np.float32(p["wobble"]) * xp.sin(v * np.float32(2 * math.pi / p["sway"]))
    t = 0.5 + 0.5 * xp.cos(2 * math.pi * wave)
    return np.float32(p["floor"]) + np.float32(1 - p["floor"]) * t ** np.float32(p["sharpness"])


def _leaf_cover(u, v, p, xp, cell: float, salt: int):
    iu, iv, fu, fv = _cells(u, v, cell)
    cover = xp.zeros(u.shape, xp.float32)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            cu, cv = iu + du, iv + dv
            present = _hash(cu, cv, p["seed"], salt) < np.float32(p["density"])
            cx = np.float32(du) + _hash(cu, cv, p["seed"], salt + 1) - fu
            cy = np.float32(dv) + _hash(cu, cv, p["seed"], salt + 2) - fv
            ang = _hash(cu, cv, p["seed"], salt + 3) * np.float32(math.pi)
            ca, sa = xp.cos(ang), xp.sin(ang)
            a = np.float32(p["leaf_len"])
            b = np.float32(p["leaf_len"] * p["leaf_aspect"])
            qx, qy = (cx * ca + cy * sa) / a, (-cx * sa + cy * ca) / b
            inside = (1 - xp.sqrt(qx * qx + qy * qy)) * b * np.float32(cell)  # approx. signed distance, > 0 inside
            cover = xp.maximum(cover, _ramp(inside, p["softness"]) * present)
    return cover


def _foliage(u, v, p, xp):
    cover = xp.maximum(_leaf_cover(u, v, p, xp, p["cell"], 10), _leaf_cover(u, v, p, xp, p["cell"] * 0.55, 20))
    canopy = xp.clip((fbm(u / np.float32(p["gap_scale"]), v / np.float32(p["gap_scale"]), p["seed"] + 7, 3)
                      - np.float32(p["gaps"])) * 8 + 0.5, 0.0, 1.0)
    return 1 - cover * canopy


def _dapple(u, v, p, xp):
    return _leaf_cover(u, v, p, xp, p["cell"], 30)  # bright spots on shadow: pinhole images of the sun


def _voronoi(u, v, p, xp):
    """Cell borders as the exact distance to the nearest bisector (two passes over the 3x3 neighbourhood)."""
    iu, iv, fu, fv = _cells(u, v, p["cell"])

    def offset(du, dv):  # vector from the pixel to the feature point of neighbour cell (du, dv), in cell units
        cu, cv = iu + du, iv + dv
        # jitter kept within [0.1, 0.9] of the cell so the 3x3 neighbourhood always holds the nearest points
        return (np.float32(du + 0.1) + np.float32(0.8) * _hash(cu, cv, p["seed"], 1) - fu,
                np.float32(dv + 0.1) + np.float32(0.8) * _hash(cu, cv, p["seed"], 2) - fv)

    best = xp.full(u.shape, 9.0, xp.float32)
    nx = xp.zeros(u.shape, xp.float32)
    ny = xp.zeros(u.shape, xp.float32)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            ox, oy = offset(du, dv)
            d2 = ox * ox + oy * oy
            closer = d2 < best
            best = xp.where(closer, d2, best)
            nx, ny = xp.where(closer, ox, nx), xp.where(closer, oy, ny)
    edge = xp.full(u.shape, 9.0, xp.float32)
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            ox, oy = offset(du, dv)
            ex, ey = ox - nx, oy - ny
            len2 = ex * ex + ey * ey
            dist = ((nx + ox) * ex + (ny + oy) * ey) * np.float32(0.5) / xp.sqrt(xp.maximum(len2, 1e-12))
            edge = xp.where(len2 > 1e-8, xp.minimum(edge, dist), edge)
    return _ramp(edge * np.float32(p["cell"]) - np.float32(p["bar"] / 2), p["softness"])


def _branches(u, v, p, xp):
    d = xp.full(u.shape, 9.0, xp.float32)
    for (ax, ay, bx, by, r) in p["segments"]:
        bax, bay = bx - ax, by - ay
        pax, pay = u - np.float32(ax), v - np.float32(ay)
        inv_len2 = np.float32(1.0 / max(bax * bax + bay * bay, 1e-9))
        t = xp.clip((pax * np.float32(bax) + pay * np.float32(bay)) * inv_len2, 0.0, 1.0)
        ex, ey = pax - t * np.float32(bax), pay - t * np.float32(bay)
        d = xp.minimum(d, xp.sqrt(ex * ex + ey * ey) - np.float32(r))
    return _ramp(d, p["softness"])


#: The costly patterns (many neighbour-cell passes) run at half the working resolution; their features are
#: several working pixels wide even then.
_WORK_SCALE = {"foliage": 0.5, "dapple": 0.5, "clouds": 0.5, "curtain": 0.5, "voronoi": 0.5}

_FNS: dict[str, Callable[..., Any]] = {
    "blinds": _blinds, "window": _window, "foliage": _foliage, "branches": _branches, "fence": _fence,
    "chainlink": _crossed, "lattice": _crossed, "clouds": _clouds, "voronoi": _voronoi, "curtain": _curtain,
    "screen": _screen, "grille": _grille, "dapple": _dapple,
}


def pattern_transmission(params: dict[str, Any], shape: tuple[int, int], *, depth: Any = None, direction: Any = None,
                         depth_scale: float = 0.5, work: int = 512, xp: Any = None, fast: bool = True) -> Any:
    """Render a pattern record to a transmission map (module docstring).

    Args:
        params: Record from ``pattern_sampling.sample_pattern`` (``type``, ``angle``, ``offset``, ``opacity``,
            ``softness``, and the pattern's own sizes).
        shape: Output ``(H, W)``.
        depth: Optional ``(H, W)`` relative depth for parallax along ``direction``.
        direction: Unit vector toward the light (needed with ``depth``).
        depth_scale: Depth extent of [0, 1] as a fraction of the image side.
        work: Working resolution (longest side; halved for the soft organic patterns, see ``_WORK_SCALE``).
        xp: Array module when ``depth`` is None (default NumPy).

    Returns:
        ``(H, W)`` float32 in [0, 1]: ``1 - opacity * (1 - pattern)``.
    """
    kind = params["type"]
    if kind not in _FNS:
        raise ValueError(f"unknown pattern {kind!r}; choose one of {PATTERNS}")
    xp = get_xp(depth) if depth is not None else (xp or np)
    h, w = shape
    f = work_factor(max(h, w), int(work * _WORK_SCALE.get(kind, 1.0)))
    hs, ws = -(-h // f), -(-w // f)
    side = float(max(h, w))
    xs = xp.asarray(((np.arange(ws) + 0.5) * f - w / 2) / side, dtype=xp.float32)
    ys = xp.asarray(-((np.arange(hs) + 0.5) * f - h / 2) / side, dtype=xp.float32)
    x = xp.broadcast_to(xs[None, :], (hs, ws))
    y = xp.broadcast_to(ys[:, None], (hs, ws))
    if depth is not None and direction is not None:
        lx, ly, lz = (float(c) for c in direction)
        z = downsample(depth.astype(xp.float32, copy=False), f, fast=fast) * np.float32(depth_scale)
        k = 1.0 / max(lz, 0.25)
        x = x - z * np.float32(lx * k)
        y = y - z * np.float32(ly * k)
    a = math.radians(params.get("angle", 0.0))
    ox, oy = params.get("offset", (0.0, 0.0))
    ca, sa = np.float32(math.cos(a)), np.float32(math.sin(a))
    u = (x - np.float32(ox)) * ca + (y - np.float32(oy)) * sa
    v = -(x - np.float32(ox)) * sa + (y - np.float32(oy)) * ca
    t = _FNS[kind](u, v, params, xp).astype(xp.float32, copy=False)
    t = np.float32(1.0) - np.float32(params.get("opacity", 1.0)) * (np.float32(1.0) - t)
    if f > 1:
        t = upsample(t, (h, w), f, fast=fast)
    return xp.clip(t, 0.0, 1.0).astype(xp.float32, copy=False)
