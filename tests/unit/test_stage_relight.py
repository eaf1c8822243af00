"""Relight stage: seeded light records, linear rendering composited on grey, consistency (L1, L2, L1+L2)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from relight_stream.config import GeometryConfig, RelightConfig, RunConfig
from relight_stream.kernels.color import srgb_to_linear
from relight_stream.pipeline.geometry import GeometryStage
from relight_stream.pipeline.relight import RelightStage
from relight_stream.sample import SampleBatch


def _batch(n: int = 96, b: int = 6, keys: list[str] | None = None) -> SampleBatch:
    mask = np.zeros((n, n), np.float32)
    cv2.circle(mask, (n // 2, n // 2), int(0.35 * n), 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)
    rng = np.random.default_rng(0)
    albedo = np.clip(0.45 + 0.05 * rng.standard_normal((n, n, 3)), 0, 1).astype(np.float32) * [1.0, 0.8, 0.7]
    batch = SampleBatch(keys=keys or [f"img{i}" for i in range(b)])
    b = len(batch)
    batch["rgb_BHW3"] = np.full((b, n, n, 3), 120, np.uint8)
    batch["mask_BHW"] = np.repeat(mask[None], b, 0)
    GeometryStage(GeometryConfig(detail=0.0)).process(batch)
    batch["albedo_BHW3"] = np.repeat(albedo[None].astype(np.float32), b, 0)
    return batch


def _relight(batch: SampleBatch, seed: int = 0, **cfg) -> SampleBatch:
    return RelightStage(RelightConfig(**cfg), RunConfig(seed=seed)).process(batch)


def test_inputs_are_relit_on_neutral_grey_and_recorded() -> None:
    batch = _relight(_batch())
    assert batch.keep_B.all(), batch.drop_reason
    inp, mask = batch["input_BHW3"], batch["mask_BHW"]
    assert inp.dtype == np.uint8 and inp.shape == batch["rgb_BHW3"].shape
    assert (inp[:, 0, 0] == 128).all() and (inp[mask == 0] == 128).all(), "background must be sRGB grey 128"
    for i in range(len(batch)):
        rec = batch.meta[i]["relight"]
        assert rec["degradation"] in RelightConfig().mix and rec["seed"].isdigit()
        assert rec["lights"] or rec["sh"] is not None
    shading = batch["shading_BHW3"]
    assert shading.dtype == np.float32 and (shading[mask == 0] == 0).all() and shading[mask > 0.99].min() > 0
    # Different samples get different lights: the foregrounds differ.
    fg = mask > 0.99
    assert len({round(float(inp[i][fg[i]].mean()), 1) for i in range(len(batch))}) > 3


def test_same_seed_same_bytes_other_seed_other_light() -> None:
    a = _relight(_batch(b=3), seed=5)
    b = _relight(_batch(b=3), seed=5)
    c = _relight(_batch(b=3), seed=6)
    assert np.array_equal(a["input_BHW3"], b["input_BHW3"])
    assert a.meta[0]["relight"] == b.meta[0]["relight"]
    assert a.meta[0]["relight"]["seed"] != c.meta[0]["relight"]["seed"]
    assert not np.array_equal(a["input_BHW3"], c["input_BHW3"])


@pytest.mark.parametrize("kind", ["soft", "shadow", "pattern", "specular", "sh", "multi"])
def test_each_degradation_can_be_forced_by_the_mix(kind: str) -> None:
    batch = _relight(_batch(b=2), mix={kind: 1.0})
    assert batch.keep_B.all(), batch.meta[0].get("drop_detail")
    assert all(batch.meta[i]["relight"]["degradation"] == kind for i in range(2))


def test_consistency_inputs_add_up_in_linear_light() -> None:
    batch = _relight(_batch(b=3), consistency=True, ambient=(0.02, 0.05))
    assert batch.keep_B.all(), batch.drop_reason
    fg = batch["mask_BHW"] > 0.999
    l1, l2, l12 = (srgb_to_linear(batch[f]) for f in ("input_l1_BHW3", "input_l2_BHW3", "input_l12_BHW3"))
    assert np.array_equal(batch["input_BHW3"], batch["input_l1_BHW3"])
    ok = fg[..., None] & (l12 < 0.95)  # unclipped foreground pixels
    err = np.abs(l12 - (l1 + l2))[ok]
    assert ok.sum() > 1000 and np.median(err) < 0.01 and np.percentile(err, 99) < 0.03, (np.median(err), err.max())
    rec = batch.meta[0]["relight"]["consistency"]
    assert rec["l2"]["seed"] != batch.meta[0]["relight"]["seed"]


def test_bad_mix_and_ambient_raise() -> None:
    with pytest.raises(ValueError):
        RelightStage(RelightConfig(mix={"lasers": 1.0}))
    with pytest.raises(ValueError):
        RelightStage(RelightConfig(mix={"soft": 0.0}))
    with pytest.raises(ValueError):
        RelightStage(RelightConfig(ambient=(0.5, 0.2)))


def test_exposure_is_matched_to_the_target_and_recorded() -> None:
    from relight_stream.kernels.color import luminance

    batch = _relight(_batch(b=8), seed=3)
    fg = batch["mask_BHW"] > 0.99
    for i in range(len(batch)):
        t = luminance(srgb_to_linear(batch["rgb_BHW3"][i]))[fg[i]].mean()
        x = luminance(srgb_to_linear(batch["input_BHW3"][i]))[fg[i]].mean()
        assert 0.7 < x / t < 1.4, (i, x / t, batch.meta[i]["relight"]["degradation"])
        assert batch.meta[i]["relight"]["exposure"] > 0
    off = _relight(_batch(b=2), seed=3, match_exposure=False)
    assert off.meta[0]["relight"]["exposure"] == 1.0


def test_meta_record_reproduces_the_render() -> None:
    """Every random parameter is in meta: re-rendering from the record alone gives the same input bytes."""
    from relight_stream.kernels.render import composite, render_relight
    from relight_stream.kernels.color import linear_to_srgb_u8, tonemap

    batch = _relight(_batch(n=64, b=3), seed=11, work_resolution=64)
    for i in range(3):
        rec = batch.meta[i]["relight"]
        relit, _ = render_relight(batch["albedo_BHW3"][i], batch["normals_BHW3"][i], batch["depth_BHW"][i],
                                  batch["mask_BHW"][i], rec)
        again = linear_to_srgb_u8(composite(tonemap(relit * np.float32(rec["exposure"])), batch["mask_BHW"][i]))
        assert np.abs(again.astype(int) - batch["input_BHW3"][i]).max() <= 1


def test_nonfinite_shading_or_relit_is_dropped_as_nonfinite_output(monkeypatch) -> None:
    """C9: NaN shading (a broken kernel) or an inf relit image drops only that sample as
    ``relight:nonfinite_output``; the other samples come out exactly as in a clean run."""
    import relight_stream.pipeline.relight as R

    clean = _relight(_batch(n=64, b=3))
    real_draw, real_render = RelightStage.draw, R.render_shading

    def draw(self, key, depth_scale, stream="relight"):  # tags the lights of img1 for the poisoned kernel
        return {**real_draw(self, key, depth_scale, stream), "_poison": key == "img1"}

    def render_shading(n, d, params):
        sh, spec = real_render(n, d, params)
        return (sh * np.float32(np.nan), spec) if params.get("_poison") else (sh, spec)

    monkeypatch.setattr(RelightStage, "draw", draw)
    monkeypatch.setattr(R, "render_shading", render_shading)
    batch = _relight(_batch(n=64, b=3))
    assert batch.drop_reason == [None, "relight:nonfinite_output", None]
    assert batch.status(1) == "failed" and batch.meta[1]["drop_detail"] == "shading_BHW3"
    assert "relight" not in batch.meta[1]
    for i in (0, 2):
        assert np.array_equal(batch["input_BHW3"][i], clean["input_BHW3"][i])
        assert np.array_equal(batch["shading_BHW3"][i], clean["shading_BHW3"][i])

    monkeypatch.undo()
    batch = _batch(n=64, b=3)
    batch["albedo_BHW3"][2, 30:34, 30:34] = np.inf  # finite shading, non-finite relit image
    batch = _relight(batch)
    assert batch.drop_reason == [None, None, "relight:nonfinite_output"]
    assert batch.meta[2]["drop_detail"] == "input_BHW3"
    assert np.array_equal(batch["input_BHW3"][:2], clean["input_BHW3"][:2])
