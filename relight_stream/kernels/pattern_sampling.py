"""Random occluder-pattern records: every parameter drawn from a per-sample ``numpy.random.Generator``.

Writes JSON-able dicts (Python floats, ints and lists only) that ``patterns.pattern_transmission`` renders. All
lengths are fractions of the image side (centred coordinates, +y up); angles in degrees; ``softness`` is the
penumbra width; ``opacity`` the fraction of the light the occluder blocks (leaves and curtains are translucent).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from relight_stream.kernels.patterns import PATTERNS


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _branch_segments(rng: np.random.Generator, depth: int = 3) -> list[list[float]]:
    """A small random tree entering the frame from its border: ``[ax, ay, bx, by, radius]`` per segment."""
    start = _u(rng, 0, 2 * math.pi)
    ax, ay = 0.75 * math.cos(start), 0.75 * math.sin(start)
    heading = start + math.pi + _u(rng, -0.5, 0.5)
    segs: list[list[float]] = []
    stack = [(ax, ay, heading, _u(rng, 0.45, 0.65), _u(rng, 0.012, 0.025), 0)]
    while stack:
        x, y, hd, length, r, d = stack.pop()
        bx, by = x + length * math.cos(hd), y + length * math.sin(hd)
        segs.append([x, y, bx, by, r])
        if d < depth:
            for sign in (-1.0, 1.0):
                stack.append((bx, by, hd + sign * _u(rng, 0.3, 0.8), length * _u(rng, 0.55, 0.8), r * 0.62, d + 1))
    return [[float(c) for c in s] for s in segs]


def sample_pattern(rng: np.random.Generator, kind: str | None = None) -> dict[str, Any]:
    """Draw a pattern record (``kind`` uniform over ``PATTERNS`` when None).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind is None:
        kind = str(rng.choice(PATTERNS))
    if kind not in PATTERNS:
        raise ValueError(f"unknown pattern {kind!r}; choose one of {PATTERNS}")
    p: dict[str, Any] = {
        "type": kind,
        "angle": _u(rng, -180, 180),
        "offset": [_u(rng, -0.5, 0.5), _u(rng, -0.5, 0.5)],
        "opacity": _u(rng, 0.6, 0.95),
        "softness": float(np.exp(rng.uniform(np.log(0.003), np.log(0.03)))),
        "seed": int(rng.integers(0, 2**31 - 1)),
    }
    if kind == "blinds":
        p.update(angle=_u(rng, -20, 20), period=_u(rng, 0.03, 0.12), blocked=_u(rng, 0.3, 0.65), phase=_u(rng, 0, 1))
    elif kind == "window":
        p.update(angle=_u(rng, -15, 15), half_size=[_u(rng, 0.2, 0.5), _u(rng, 0.25, 0.6)],
                 panes=[int(rng.integers(1, 4)), int(rng.integers(1, 4))], bar=_u(rng, 0.01, 0.04),
                 offset=[_u(rng, -0.25, 0.25), _u(rng, -0.2, 0.2)])
    elif kind == "fence":
        p.update(angle=_u(rng, -10, 10), period=_u(rng, 0.05, 0.15), blocked=_u(rng, 0.35, 0.7), phase=_u(rng, 0, 1),
                 rails=[_u(rng, -0.4, -0.1), _u(rng, 0.1, 0.4)], bar=_u(rng, 0.02, 0.05))
    elif kind == "chainlink":
        p.update(period=_u(rng, 0.03, 0.07), bar=_u(rng, 0.003, 0.008), opacity=_u(rng, 0.5, 0.8))
    elif kind == "lattice":
        p.update(angle=_u(rng, -10, 10), period=_u(rng, 0.08, 0.2), bar=_u(rng, 0.015, 0.05))
    elif kind == "grille":
        p.update(angle=_u(rng, -8, 8), period=_u(rng, 0.08, 0.2), bar=_u(rng, 0.01, 0.035),
                 crossbar=bool(rng.random() < 0.5))
    elif kind == "screen":
        p.update(period=_u(rng, 0.02, 0.06), hole=_u(rng, 0.4, 0.85))
    elif kind == "clouds":
        p.update(scale=_u(rng, 0.2, 0.6), threshold=_u(rng, 0.4, 0.6), contrast=_u(rng, 0.08, 0.3),
                 opacity=_u(rng, 0.4, 0.85))
    elif kind == "curtain":
        p.update(angle=_u(rng, -10, 10), period=_u(rng, 0.06, 0.2), wobble=_u(rng, 0.0, 0.4), sway=_u(rng, 0.5, 2.0),
                 floor=_u(rng, 0.2, 0.6), sharpness=_u(rng, 0.6, 3.0), opacity=_u(rng, 0.3, 0.7))
    elif kind == "foliage":
        p.update(cell=_u(rng, 0.05, 0.12), density=_u(rng, 0.6, 0.95), leaf_len=_u(rng, 0.35, 0.55),
                 leaf_aspect=_u(rng, 0.35, 0.6), gap_scale=_u(rng, 0.2, 0.5), gaps=_u(rng, 0.3, 0.6))
    elif kind == "dapple":
        p.update(cell=_u(rng, 0.05, 0.12), density=_u(rng, 0.3, 0.7), leaf_len=_u(rng, 0.2, 0.4),
                 leaf_aspect=_u(rng, 0.6, 1.0))
    elif kind == "voronoi":
        p.update(cell=_u(rng, 0.08, 0.2), bar=_u(rng, 0.005, 0.02))
    elif kind == "branches":
        p.update(segments=_branch_segments(rng, depth=int(rng.integers(2, 4))), opacity=_u(rng, 0.6, 0.9))
    return p
