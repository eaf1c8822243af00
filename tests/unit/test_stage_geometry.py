"""Geometry stage: classical mask-inflation normals and the depth engine path (tiny random weights)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from relight_stream.config import GeometryConfig, RunConfig
from relight_stream.pipeline.geometry import GeometryStage, depth_extent, normalise_depth
from relight_stream.sample import SampleBatch


def _disk_batch(n: int, *, radius: float = 0.3) -> SampleBatch:
    mask = np.zeros((n, n), np.float32)
    cv2.circle(mask, (n // 2, n // 2), int(radius * n), 1.0, -1)
    rgb = np.full((n, n, 3), 150, np.uint8)
    batch = SampleBatch(keys=["disk"])
    batch["rgb_BHW3"], batch["mask_BHW"] = rgb[None], mask[None]
    return batch


def _run(batch: SampleBatch, **cfg) -> SampleBatch:
    stage = GeometryStage(GeometryConfig(**cfg), RunConfig(device="cpu"))
    stage.setup()
    return stage.process(batch)


def test_classical_normals_follow_the_camera_frame_convention() -> None:
    n = 128
    batch = _run(_disk_batch(n), detail=0.0)
    assert batch.keep_B[0], batch.drop_reason
    normals, depth, mask = batch["normals_BHW3"][0], batch["depth_BHW"][0], batch["mask_BHW"][0]
    assert np.allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)
    assert np.allclose(normals[mask < 0.5], [0, 0, 1])
    c = n // 2
    assert normals[c, c, 2] > 0.95, "the centre of an inflated disk faces the camera"
    off = int(0.25 * n)
    assert normals[c, c - off, 0] < -0.4, "the left rim points left (-x)"
    assert normals[c, c + off, 0] > 0.4, "the right rim points right (+x)"
    assert normals[c - off, c, 1] > 0.4, "the top rim points up (+y, rows run down)"
    assert depth[mask < 0.5].max() == 0.0 and 0.95 < depth.max() <= 1.0
    assert depth[c, c] > depth[c, c + off], "larger depth = nearer: the centre bulges toward the viewer"
    assert batch.meta[0]["geometry"]["backend"] == "classical"
    assert abs(batch.meta[0]["geometry"]["depth_scale"] - 0.3) < 0.03


def test_classical_tilt_does_not_depend_on_resolution() -> None:
    tilts = []
    for n in (96, 192):
        batch = _run(_disk_batch(n), detail=0.0, work_resolution=512)
        nz = batch["normals_BHW3"][0][..., 2][batch["mask_BHW"][0] > 0.5]
        tilts.append(np.degrees(np.arccos(np.clip(nz, -1, 1))).mean())
    assert abs(tilts[0] - tilts[1]) < 3.0, tilts


def test_work_resolution_matches_full_resolution() -> None:
    full = _run(_disk_batch(256), detail=0.0, work_resolution=256)["normals_BHW3"][0]
    half = _run(_disk_batch(256), detail=0.0, work_resolution=128)["normals_BHW3"][0]
    inner = _disk_batch(256)["mask_BHW"][0]
    inner = cv2.erode(inner, np.ones((9, 9), np.uint8)) > 0.5
    ang = np.degrees(np.arccos(np.clip((full * half).sum(-1), -1, 1)))[inner]
    assert np.median(ang) < 2.0 and np.percentile(ang, 95) < 8.0, (np.median(ang), np.percentile(ang, 95))


def test_depth_engine_backend_runs_on_the_photo(photos) -> None:
    pytest.importorskip("transformers")
    import torch

    torch.set_num_threads(1)
    img = cv2.resize(photos["coffee"][:, 100:500], (64, 64), interpolation=cv2.INTER_AREA)
    batch = _disk_batch(64)
    batch["rgb_BHW3"] = img[None]
    batch = _run(batch, backend="depth-anything", flavor="tiny")
    assert batch.keep_B[0], (batch.drop_reason, batch.meta[0].get("drop_detail"))
    normals, depth, mask = batch["normals_BHW3"][0], batch["depth_BHW"][0], batch["mask_BHW"][0]
    assert np.allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)
    inside = depth[mask > 0.5]
    assert inside.min() >= 0.0 and inside.max() <= 1.0 and inside.max() - inside.min() > 0.5
    rec = batch.meta[0]["geometry"]
    assert rec["backend"] == "depth-anything" and rec["model"]["flavor"] == "tiny"


def test_dpt_tiny_runs_the_midas_dpt_engine_on_photos(photos) -> None:
    """``backend: dpt, flavor: tiny`` builds transformers' DPT (MiDaS) path, not the Depth Anything test model."""
    pytest.importorskip("transformers")
    import torch

    torch.set_num_threads(1)
    batch = SampleBatch(keys=["coffee", "chelsea"])
    batch["rgb_BHW3"] = np.stack([cv2.resize(photos[k], (64, 48), interpolation=cv2.INTER_AREA) for k in batch.keys])
    batch["mask_BHW"] = np.repeat(cv2.resize(_disk_batch(64)["mask_BHW"][0], (64, 48))[None], 2, 0)
    assert GeometryStage(GeometryConfig(backend="depth-anything", flavor="tiny")).engine_flavor == "tiny"
    stage = GeometryStage(GeometryConfig(backend="dpt", flavor="tiny"), RunConfig(device="cpu"))
    assert stage.engine_flavor == "midas-dpt-tiny"
    stage.setup()
    assert stage.engine.spec.flavor == "midas-dpt-tiny" and stage.engine.spec.config["arch"] == "dpt"
    stage.process(batch)
    assert list(batch.keep_B) == [True, True], (batch.drop_reason, [m.get("drop_detail") for m in batch.meta])
    for i in range(2):
        normals, mask = batch["normals_BHW3"][i], batch["mask_BHW"][i]
        assert np.isfinite(normals).all() and np.isfinite(batch["depth_BHW"][i]).all()
        assert np.allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)
        assert np.ptp(batch["depth_BHW"][i][mask > 0.5]) > 0.5
        rec = batch.meta[i]["geometry"]
        assert rec["backend"] == "dpt" and rec["model"]["flavor"] == "midas-dpt-tiny"


def test_flat_depth_is_an_error_not_a_silent_plane() -> None:
    with pytest.raises(ValueError):
        normalise_depth(np.ones((32, 32), np.float32), np.ones((32, 32), np.float32))
    assert depth_extent(np.zeros((32, 32), np.float32)) == pytest.approx(0.03)


def test_flavor_names_are_expanded_per_backend() -> None:
    def flavor(**kw) -> str:
        return GeometryStage(GeometryConfig(weights="random", **kw)).engine_flavor

    assert flavor(backend="dpt", flavor="hybrid") == "midas-dpt-hybrid"
    assert flavor(backend="depth-anything", flavor="s") == "depth-anything-v2-s"
    assert flavor(backend="depth-anything") == "depth-anything-v2-s"  # unset: the small model
    assert flavor(backend="dpt") == "midas-dpt-hybrid"  # unset: MiDaS 3.0 DPT-Hybrid
    with pytest.raises(ValueError):
        GeometryStage(GeometryConfig(detail=2.0))


def test_bad_engine_names_and_unpinned_weights_fail_before_any_model_loads() -> None:
    from relight_stream.config import SegmentConfig
    from relight_stream.pipeline.segment import SegmentStage

    with pytest.raises(ValueError, match="flavor"):
        GeometryStage(GeometryConfig(backend="dpt", flavor="gigantic"))
    with pytest.raises(ValueError, match="revision"):
        GeometryStage(GeometryConfig(backend="depth-anything", flavor="s",
                                     weights="depth-anything/Depth-Anything-V2-Small-hf"))
    with pytest.raises(ValueError, match="'main' is a branch or tag, which can move; pin a commit"):
        GeometryStage(GeometryConfig(backend="dpt", weights="Intel/dpt-hybrid-midas@main"))
    with pytest.raises(ValueError, match="flavor"):
        SegmentStage(SegmentConfig(backend="sam2", flavor="hiera-xxl", weights="random"))


def test_a_full_size_model_without_weights_is_a_bad_run_and_random_weights_warn(caplog, monkeypatch) -> None:
    from relight_stream import log as log_mod
    from relight_stream.config import SegmentConfig
    from relight_stream.pipeline.segment import SegmentStage

    # asking for SAM2 or a depth model must not quietly give untrained noise
    with pytest.raises(ValueError, match=r"facebook/sam2.1-hiera-small@<commit sha>"):
        SegmentStage(SegmentConfig(backend="sam2"))
    with pytest.raises(ValueError, match=r"Depth-Anything-V2-Small-hf@<commit sha>"):
        GeometryStage(GeometryConfig(backend="depth-anything"))
    with pytest.raises(ValueError, match=r"dpt-hybrid-midas@<commit sha>"):
        GeometryStage(GeometryConfig(backend="dpt"))
    monkeypatch.setattr(log_mod, "_WARNED", set())  # warn_once: earlier tests may have warned already
    with caplog.at_level("WARNING"):
        GeometryStage(GeometryConfig(backend="dpt", weights="random"))  # by name: the untrained architecture
        SegmentStage(SegmentConfig(backend="sam2", flavor="tiny"))  # the test model
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "depth midas-dpt-hybrid: random weights" in warned and "segmenter tiny: random weights" in warned


def test_nonfinite_depth_engine_output_is_dropped_as_nonfinite_output(photos) -> None:
    """C9: a depth engine returning NaN for one sample drops only that one, as ``geometry:nonfinite_output``."""
    pytest.importorskip("transformers")
    import torch

    torch.set_num_threads(1)
    img = cv2.resize(photos["coffee"][:, 100:500], (64, 64), interpolation=cv2.INTER_AREA)
    batch = SampleBatch(keys=["a", "b", "c"])
    batch["rgb_BHW3"] = np.repeat(img[None], 3, 0)
    batch["rgb_BHW3"][1, 0, 0] = (1, 2, 3)  # marks sample b for the poisoned engine
    batch["mask_BHW"] = np.repeat(_disk_batch(64)["mask_BHW"], 3, 0)
    stage = GeometryStage(GeometryConfig(backend="depth-anything", flavor="tiny"), RunConfig(device="cpu"))
    stage.setup()
    real = stage.engine
    marker = torch.tensor([1, 2, 3], dtype=torch.float32) / 255.0

    def poisoned(images):  # the real tiny engine; rows of the marked image come back NaN (an fp16 overflow)
        out = real(images)
        for j in range(images.shape[0]):
            if torch.allclose(images[j, :, 0, 0].cpu(), marker):
                out[j] = float("nan")
        return out

    stage.engine = poisoned
    stage.process(batch)
    assert batch.drop_reason == [None, "geometry:nonfinite_output", None]
    assert batch.status(1) == "failed" and batch.meta[1]["drop_detail"] == "depth_BHW"
    for i in (0, 2):
        assert np.isfinite(batch["depth_BHW"][i]).all() and batch["depth_BHW"][i].max() > 0.5
        assert batch.meta[i]["geometry"]["model"]["flavor"] == "tiny"


def test_normalise_depth_tells_nonfinite_from_empty_and_flat() -> None:
    from relight_stream.pipeline.stage import NonFiniteOutput

    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1.0
    raw = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    for bad in (np.nan, np.inf):
        poisoned = raw.copy()
        poisoned[0, 0] = bad  # outside the mask: still a broken model output
        with pytest.raises(NonFiniteOutput) as err:
            normalise_depth(poisoned, mask)
        assert err.value.field == "depth_BHW"
    with pytest.raises(ValueError, match="empty foreground"):
        normalise_depth(raw, np.zeros_like(mask))
    with pytest.raises(ValueError, match="flat"):
        normalise_depth(np.ones_like(raw), mask)
    d = normalise_depth(raw, mask)
    assert d.dtype == np.float32 and d[mask == 0].max() == 0.0 and d.max() == pytest.approx(1.0)
