"""Instruct stage: words for directions, what was applied, what the target shows; phrasings; user captions."""

from __future__ import annotations

import numpy as np
import pytest

from relight_stream.config import InstructConfig, RunConfig
from relight_stream.kernels.color import linear_to_srgb_u8
from relight_stream.kernels.lights import make_light, sample_relight
from relight_stream.kernels.shading import light_direction
from relight_stream.pipeline.instruct import (
    InstructStage,
    describe_applied,
    direction_words,
    estimate_target_light,
)
from relight_stream.sample import SampleBatch


@pytest.mark.parametrize(
    "az, el, words",
    [(180, 10, "from the left"), (0, 10, "from the right"), (90, 20, "from above"), (135, 20, "from the upper left"),
     (30, 85, "from the front"), (0, -40, "from behind, right"), (180, 45, "from the front and left")],
)
def test_direction_words(az: float, el: float, words: str) -> None:
    assert direction_words(light_direction(az, el)) == words


def _sphere(n: int, direction: list[float]) -> tuple[np.ndarray, ...]:
    ys, xs = (np.mgrid[0:n, 0:n] + 0.5) / n * 2 - 1
    r2 = xs**2 + ys**2
    mask = (r2 < 0.8).astype(np.float32)
    z = np.sqrt(np.clip(1 - r2, 0, 1))
    normals = np.stack([xs, -ys, z], -1).astype(np.float32)  # rows run down: +y is up
    normals[mask < 0.5] = (0, 0, 1)
    albedo = np.full((n, n, 3), 0.6, np.float32)
    shade = 0.1 + np.maximum(0, normals @ np.asarray(direction, np.float32))
    rgb = linear_to_srgb_u8(albedo * shade[..., None])
    return rgb, albedo, normals, mask


@pytest.mark.parametrize("az, word", [(180, "left"), (0, "right"), (90, "above")])
def test_target_light_is_estimated_from_the_photo(az: float, word: str) -> None:
    rgb, albedo, normals, mask = _sphere(96, light_direction(az, 20))
    est = estimate_target_light(rgb, albedo, normals, mask)
    assert est["direction"] is not None and word in est["words"], est


def test_even_light_is_not_given_a_direction() -> None:
    rgb, albedo, normals, mask = _sphere(64, [0, 0, 1])
    flat = linear_to_srgb_u8(albedo * 0.5)
    est = estimate_target_light(flat, albedo, normals, mask)
    assert est["direction"] is None and "even" in est["words"]


def test_applied_description_names_direction_kind_and_pattern() -> None:
    rec = {"degradation": "shadow", "variant": "hard", "lights": [make_light(180, 20, kelvin=3000, cast_shadows=True)]}
    text = describe_applied(rec)
    assert "hard" in text and "warm" in text and "from the left" in text and "shadow" in text
    pat = sample_relight(np.random.default_rng(3), degradation="pattern")
    assert pat["lights"][0]["pattern"]["type"] and "broken up by" in describe_applied(pat)
    sh = sample_relight(np.random.default_rng(4), degradation="sh")
    assert "environment" in describe_applied(sh)
    multi = sample_relight(np.random.default_rng(5), degradation="multi")
    assert all(role in describe_applied(multi) for role in ("key", "fill", "rim"))


def _batch(keys: list[str]) -> SampleBatch:
    rgb, albedo, normals, mask = _sphere(64, light_direction(180, 20))
    b = SampleBatch(keys=keys)
    n = len(keys)
    b["rgb_BHW3"], b["albedo_BHW3"] = np.repeat(rgb[None], n, 0), np.repeat(albedo[None], n, 0)
    b["normals_BHW3"], b["mask_BHW"] = np.repeat(normals[None], n, 0), np.repeat(mask[None], n, 0)
    b["input_BHW3"] = b["rgb_BHW3"].copy()
    for i in range(n):
        b.meta[i]["relight"] = {"degradation": "soft", "variant": "directional", "lights": [make_light(0, 30)]}
    return b


def test_instructions_describe_both_ends_and_are_seeded(tmp_path) -> None:
    keys = [f"k{i}" for i in range(8)]
    a = InstructStage(InstructConfig(), RunConfig(seed=1)).process(_batch(keys))
    b = InstructStage(InstructConfig(), RunConfig(seed=1)).process(_batch(keys))
    assert a["instruction_B"] == b["instruction_B"]
    for i in range(8):
        rec = a.meta[i]["instruct"]
        assert a["instruction_B"][i] == rec["phrasings"][rec["template"]]
        assert "left" in rec["target"]["words"] and "from the right" in rec["applied"]
    assert len({a.meta[i]["instruct"]["template"] for i in range(8)}) > 1, "one phrasing for every sample"


def test_user_captions_are_appended_by_key(tmp_path) -> None:
    csv = tmp_path / "captions.csv"
    csv.write_text("key,caption\nk0,golden hour rim light\n")
    out = InstructStage(InstructConfig(captions=str(csv)), RunConfig()).process(_batch(["k0", "k1"]))
    assert out["instruction_B"][0].endswith("Target look: golden hour rim light.")
    assert "Target look" not in out["instruction_B"][1]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"key": "k1", "keywords": ["soft", "window light"]}\n')
    out = InstructStage(InstructConfig(captions=str(jsonl)), RunConfig()).process(_batch(["k1"]))
    assert out["instruction_B"][0].endswith("Target look: soft, window light.")
    with pytest.raises(ValueError):
        InstructStage(InstructConfig(captions=str(tmp_path / "missing.csv")))
