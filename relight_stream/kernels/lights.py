"""Light sampling: a per-sample ``numpy.random.Generator`` -> a JSON-able relighting record.

Writes the record that ``render.render_relight`` renders and that goes verbatim into ``meta.json``::

    {"version": 1, "degradation": "shadow", "variant": "...", "depth_scale": 0.5,
     "ambient": {"intensity": a, "kelvin": K, "rgb": [r, g, b]},
     "sh": null | 9 x 3 radiance coefficients,
     "lights": [{"role": "key", "azimuth": deg, "elevation": deg, "direction": [x, y, z], "intensity": I,
                 "kelvin": K | null, "color": [r, g, b], "size": deg, "cast_shadows": bool,
                 "pattern": null | {...}, "specular": null | {"model", "roughness", "f0", "strength"}}, ...]}

Degradation kinds (the ``mix`` keys of ``RelightConfig``): ``soft`` (one directional light, Lambert + ambient;
includes frontal and flat/ambient variants and coloured lights), ``shadow`` (cast shadows, hard or soft by light
size), ``pattern`` (an occluder pattern on the light), ``specular`` (GGX or Blinn-Phong highlights), ``sh``
(low-order environment light) and ``multi`` (key/fill/rim rig: fill opposite the key, rim from behind the subject
at negative elevation, each with its own colour temperature or gel). Light colours have luminance 1; the key's
intensity is about ``1 - ambient`` so lit regions reach about 1 (the albedo's white point).
"""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np

from relight_stream.kernels.color import kelvin_to_rgb, srgb_to_linear
from relight_stream.kernels.pattern_sampling import sample_pattern
from relight_stream.kernels.shading import light_direction, sh_add_ambient, sh_from_directional, sh_min_irradiance

DEGRADATIONS = ("soft", "shadow", "pattern", "specular", "sh", "multi")
RECORD_VERSION = 1


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def gel_color(hue: float, saturation: float) -> list[float]:
    """A coloured (gel) light: sRGB hue/saturation at full value -> linear RGB with luminance 1."""
    srgb = np.asarray(colorsys.hsv_to_rgb(hue % 1.0, saturation, 1.0), np.float32)
    lin = srgb_to_linear(srgb).astype(np.float64)
    lum = float(lin[0]) * 0.2126 + float(lin[1]) * 0.7152 + float(lin[2]) * 0.0722  # not BLAS: see kelvin_to_rgb
    return [float(c) for c in lin / max(lum, 1e-6)]


def make_light(azimuth: float, elevation: float, *, intensity: float = 1.0, kelvin: float | None = 6500.0,
               color: list[float] | None = None, size: float = 0.0, cast_shadows: bool = False,
               pattern: dict[str, Any] | None = None, specular: dict[str, Any] | None = None,
               role: str = "key") -> dict[str, Any]:
    """One directional light record (angles in degrees; ``color`` overrides ``kelvin``; ``size`` = angular radius)."""
    rgb = color if color is not None else (kelvin_to_rgb(kelvin) if kelvin is not None else [1.0, 1.0, 1.0])
    return {
        "role": role, "azimuth": float(azimuth % 360.0), "elevation": float(elevation),
        "direction": light_direction(azimuth, elevation), "intensity": float(intensity),
        "kelvin": None if color is not None or kelvin is None else float(kelvin), "color": [float(c) for c in rgb],
        "size": float(size), "cast_shadows": bool(cast_shadows), "pattern": pattern, "specular": specular,
    }


def _ambient(rng: np.random.Generator, lo_hi: tuple[float, float]) -> dict[str, Any]:
    a = _u(rng, *lo_hi)
    kelvin = _u(rng, 5500, 10000) if rng.random() < 0.5 else 6500.0
    return {"intensity": a, "kelvin": kelvin, "rgb": [a * c for c in kelvin_to_rgb(kelvin)]}


def _key_kelvin(rng: np.random.Generator) -> float:
    return _u(rng, 2700, 7500) if rng.random() < 0.6 else 6500.0


def _sample_soft(rng, a):
    variant = str(rng.choice(["directional", "frontal", "flat"], p=[0.8, 0.15, 0.05]))
    el = {"directional": _u(rng, 10, 70), "frontal": _u(rng, 65, 90), "flat": 90.0}[variant]
    color = gel_color(rng.random(), _u(rng, 0.2, 0.6)) if rng.random() < 0.1 else None
    light = make_light(_u(rng, 0, 360), el, intensity=(1 - a) * _u(rng, 0.85, 1.15), kelvin=_key_kelvin(rng),
                       color=color, size=_u(rng, 5, 20))
    return variant, [light]


def _sample_shadow(rng, a):
    hard = rng.random() < 0.5
    size = _u(rng, 0.25, 1.5) if hard else _u(rng, 2, 10)
    light = make_light(_u(rng, 0, 360), _u(rng, 10, 60), intensity=(1 - a) * _u(rng, 0.9, 1.2),
                       kelvin=_key_kelvin(rng), size=size, cast_shadows=True)
    return ("hard" if hard else "soft"), [light]


def _sample_pattern(rng, a):
    pat = sample_pattern(rng)
    light = make_light(_u(rng, 0, 360), _u(rng, 15, 70), intensity=(1 - a) * _u(rng, 0.9, 1.25),
                       kelvin=_key_kelvin(rng), size=_u(rng, 0.5, 4), cast_shadows=bool(rng.random() < 0.5),
                       pattern=pat)
    return pat["type"], [light]


def _sample_specular(rng, a):
    spec = {"model": "ggx" if rng.random() < 0.6 else "blinn_phong", "roughness": _u(rng, 0.15, 0.6),
            "f0": _u(rng, 0.02, 0.06), "strength": _u(rng, 0.5, 2.0)}
    light = make_light(_u(rng, 0, 360), _u(rng, 15, 80), intensity=(1 - a) * _u(rng, 0.85, 1.15),
                       kelvin=_key_kelvin(rng), size=_u(rng, 0.5, 3), cast_shadows=bool(rng.random() < 0.3),
                       specular=spec)
    return spec["model"], [light]


def _sample_multi(rng, a):
    key_az = _u(rng, 0, 360)
    key_k = _u(rng, 3000, 5600)
    key_i = (1 - a) * _u(rng, 0.7, 1.0)
    gel = rng.random() < 0.3
    key = make_light(key_az, _u(rng, 15, 60), intensity=key_i, kelvin=key_k, size=_u(rng, 1, 8),
                     cast_shadows=bool(rng.random() < 0.5), role="key")
    fill_color = gel_color(rng.random(), _u(rng, 0.4, 0.9)) if gel and rng.random() < 0.5 else None
    fill = make_light(key_az + 180 + _u(rng, -40, 40), _u(rng, 0, 30), intensity=key_i * _u(rng, 0.15, 0.5),
                      kelvin=_u(rng, 4500, 8000), color=fill_color, size=_u(rng, 10, 25), role="fill")
    rim_color = gel_color(rng.random(), _u(rng, 0.4, 0.9)) if gel and fill_color is None else None
    rim = make_light(key_az + 180 + _u(rng, -60, 60), _u(rng, -60, -15), intensity=key_i * _u(rng, 0.6, 1.5),
                     kelvin=_u(rng, 5000, 9000), color=rim_color, size=_u(rng, 1, 5), role="rim")
    return ("gel" if gel else "three_point"), [key, fill, rim]


def _sample_sh(rng, a):
    coeffs = np.zeros((9, 3))
    n = int(rng.integers(2, 5))
    weights = rng.dirichlet(np.ones(n)) * (1 - a) * _u(rng, 0.9, 1.2)
    for wgt in weights:
        d = light_direction(_u(rng, 0, 360), _u(rng, -30, 90))
        coeffs += np.asarray(sh_from_directional(d, kelvin_to_rgb(_u(rng, 2500, 10000)), float(wgt)))
    lift = np.maximum(-sh_min_irradiance(coeffs), 0.0)  # keep the irradiance >= 0 everywhere
    return "env", sh_add_ambient(coeffs, lift)


def sample_relight(rng: np.random.Generator, mix: dict[str, float] | None = None, *,
                   ambient: tuple[float, float] = (0.05, 0.35), degradation: str | None = None,
                   depth_scale: float = 0.5) -> dict[str, Any]:
    """Draw one relighting record (module docstring).

    Args:
        rng: The sample's generator (``keys.sample_rng``); the only source of randomness.
        mix: Weights per degradation kind (``RelightConfig.mix``); normalised; zero weights allowed.
        ambient: Range of the ambient intensity.
        degradation: Force one kind instead of drawing from ``mix``.
        depth_scale: Depth extent of [0, 1] depth as a fraction of the image side (recorded for rendering).

    Raises:
        ValueError: unknown kind in ``mix``/``degradation``, negative weights, or all weights zero.
    """
    if degradation is None:
        mix = dict(mix or {k: 1.0 for k in DEGRADATIONS})
        bad = sorted(set(mix) - set(DEGRADATIONS))
        if bad:
            raise ValueError(f"unknown degradation kind(s) {bad} in mix; valid: {list(DEGRADATIONS)}")
        kinds = [k for k in DEGRADATIONS if k in mix]
        w = np.asarray([float(mix[k]) for k in kinds])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"relight mix weights must be >= 0 and not all zero, got {mix}")
        degradation = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    elif degradation not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {degradation!r}; valid: {list(DEGRADATIONS)}")
    amb = _ambient(rng, ambient)
    a = amb["intensity"]
    sh = None
    if degradation == "sh":
        variant, sh = _sample_sh(rng, a)
        lights: list[dict[str, Any]] = []
    else:
        sampler = {"soft": _sample_soft, "shadow": _sample_shadow, "pattern": _sample_pattern,
                   "specular": _sample_specular, "multi": _sample_multi}[degradation]
        variant, lights = sampler(rng, a)
    if degradation == "soft" and variant == "flat":
        amb = {"intensity": 0.6, "kelvin": amb["kelvin"], "rgb": [0.6 / max(a, 1e-6) * c for c in amb["rgb"]]}
        lights[0]["intensity"] = 0.4
    return {"version": RECORD_VERSION, "degradation": degradation, "variant": variant,
            "depth_scale": float(depth_scale), "ambient": amb, "sh": sh, "lights": lights}


def combine_lights(p1: dict[str, Any], p2: dict[str, Any]) -> dict[str, Any]:
    """The record of both lightings at once (lights concatenated, ambient and SH summed): L1 + L2.

    Raises:
        ValueError: the records use different ``depth_scale`` values.
    """
    if abs(p1.get("depth_scale", 0.5) - p2.get("depth_scale", 0.5)) > 1e-9:
        raise ValueError("cannot combine lightings with different depth_scale")
    a1, a2 = p1["ambient"], p2["ambient"]
    sh = None
    if p1.get("sh") is not None or p2.get("sh") is not None:
        z = np.zeros((9, 3))
        sh = (np.asarray(p1.get("sh") if p1.get("sh") is not None else z)
              + np.asarray(p2.get("sh") if p2.get("sh") is not None else z)).tolist()
    return {"version": RECORD_VERSION, "degradation": "sum", "variant": f"{p1['degradation']}+{p2['degradation']}",
            "depth_scale": p1.get("depth_scale", 0.5),
            "ambient": {"intensity": a1["intensity"] + a2["intensity"], "kelvin": None,
                        "rgb": [x + y for x, y in zip(a1["rgb"], a2["rgb"])]},
            "sh": sh, "lights": list(p1["lights"]) + list(p2["lights"])}
