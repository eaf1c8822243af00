"""RELIABILITY.md C8: a model OOM in the segment/geometry engines is retried in smaller chunks, then ``<stage>:oom``.

The real tiny engines (random weights, CPU) are wrapped in :class:`OOMProxy`, which raises
``torch.cuda.OutOfMemoryError`` when called with more than ``max_batch`` images or with a "huge" sample (here: a
red image); everything else is the real engine's answer, compared with an un-mocked run of the same batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from relight_stream.config import DecodeConfig, GenerateConfig, GeometryConfig, RunConfig, SegmentConfig, ShardConfig
from relight_stream.pipeline.geometry import GeometryStage
from relight_stream.pipeline.segment import SegmentStage
from relight_stream.sample import SampleBatch

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

RES = 64


def is_red(img_3HW) -> bool:
    """The "huge" sample: red dominates the image (the test's red disk photo, nothing else)."""
    return float(img_3HW[0].mean() - img_3HW[1].mean()) > 0.45


class OOMProxy:
    """A real engine that runs out of memory on more than ``max_batch`` images or on any ``poison`` image."""

    def __init__(self, engine, *, max_batch: int | None = None, poison=None) -> None:
        self.engine, self.max_batch, self.poison = engine, max_batch, poison
        self.supports_points = getattr(engine, "supports_points", False)
        self.sizes: list[int] = []

    def __call__(self, images, *args):
        self.sizes.append(int(images.shape[0]))
        if self.max_batch is not None and images.shape[0] > self.max_batch:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 9.00 GiB ({images.shape[0]})")
        if self.poison is not None and any(self.poison(img) for img in images):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB (huge sample)")
        return self.engine(images, *args)


def _disk(color: tuple[int, int, int], backdrop: tuple[int, int, int], n: int = RES) -> np.ndarray:
    img = np.full((n, n, 3), backdrop, np.uint8)
    cv2.circle(img, (n // 2, n // 2 + 3), n // 4, color, -1)
    return img


@pytest.fixture(scope="module")
def images(photos) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Keys, sRGB images ``[5,RES,RES,3]`` (index 2 is the red "huge" one, no faces anywhere) and disk masks."""
    small = [cv2.resize(photos[k], (RES, RES), interpolation=cv2.INTER_AREA) for k in ("coffee", "rocket")]
    rgb = np.stack([*small, _disk((250, 70, 70), (150, 10, 10)), _disk((210, 160, 110), (60, 90, 140)),
                    _disk((90, 200, 90), (40, 40, 60))])
    mask = np.zeros((RES, RES), np.float32)
    cv2.circle(mask, (RES // 2, RES // 2 + 3), RES // 4, 1.0, -1)
    return ["coffee", "rocket", "red", "disk", "green"], rgb, np.repeat(mask[None], len(rgb), 0)


def _batch(images) -> SampleBatch:
    keys, rgb, mask = images
    batch = SampleBatch(keys=list(keys))
    batch["rgb_BHW3"], batch["mask_BHW"] = rgb.copy(), mask.copy()
    return batch


@pytest.fixture(scope="module")
def engines():
    pytest.importorskip("sam2")
    from relight_stream.engines import create_engine

    torch.set_num_threads(1)
    return {"segment": create_engine("segmenter", "tiny", device="cpu"),
            "geometry": create_engine("depth", "tiny", device="cpu")}


def _stage(name: str, engine):
    if name == "segment":
        stage = SegmentStage(SegmentConfig(backend="sam2", flavor="tiny"), RunConfig(device="cpu"))
    else:
        stage = GeometryStage(GeometryConfig(backend="depth-anything", flavor="tiny"), RunConfig(device="cpu"))
    stage.engine = engine  # setup() keeps an engine that is already there
    return stage


def _outputs(name: str, batch: SampleBatch, i: int) -> list[np.ndarray]:
    return [batch["mask_BHW"][i]] if name == "segment" else [batch["depth_BHW"][i], batch["normals_BHW3"][i]]


@pytest.mark.parametrize("name", ["segment", "geometry"])
def test_an_oom_batch_is_retried_in_halves_with_unchanged_results(name, engines, images) -> None:
    plain = _stage(name, engines[name]).process(_batch(images))
    proxy = OOMProxy(engines[name], max_batch=1)
    mocked = _stage(name, proxy).process(_batch(images))
    if name == "segment":
        assert all(not m["segment"]["faces"] for m in mocked.meta), "face clicks would pad prompts per chunk"
    # 5 -> 3 + 2 -> (2 + 1) + (1 + 1) -> ... every sample ends up alone, and only then runs
    assert proxy.sizes[:3] == [5, 3, 2] and proxy.sizes.count(1) >= 5, proxy.sizes
    assert mocked.drop_reason == plain.drop_reason and not any(r and r.endswith(":oom") for r in mocked.drop_reason)
    for i in range(len(mocked)):
        for a, b in zip(_outputs(name, mocked, i), _outputs(name, plain, i)):
            np.testing.assert_allclose(a, b, atol=2e-4, err_msg=f"{name}: sample {i} changed by the retry")


@pytest.mark.parametrize("name", ["segment", "geometry"])
def test_a_sample_that_always_runs_out_of_memory_is_dropped_as_oom(name, engines, images) -> None:
    plain = _stage(name, engines[name]).process(_batch(images))
    proxy = OOMProxy(engines[name], max_batch=2, poison=is_red)
    mocked = _stage(name, proxy).process(_batch(images))
    red = images[0].index("red")
    assert mocked.drop_reason[red] == f"{name}:oom" and mocked.failed_B[red]
    assert "out of memory" in mocked.meta[red]["drop_detail"]
    others = [i for i in range(len(mocked)) if i != red]
    assert [mocked.drop_reason[i] for i in others] == [plain.drop_reason[i] for i in others]
    assert not any(mocked.drop_reason[i] == f"{name}:oom" for i in others)
    for i in others:
        for a, b in zip(_outputs(name, mocked, i), _outputs(name, plain, i)):
            np.testing.assert_allclose(a, b, atol=2e-4, err_msg=f"{name}: sample {i} changed by the retry")
    if name == "geometry":  # the geometry stage keeps every disk but the red one
        assert mocked.keep_B.tolist() == [i != red for i in range(len(mocked))]


def test_other_engine_errors_still_drop_the_chunk_as_error(engines, images) -> None:
    def broken(images_, *args):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")

    batch = _stage("geometry", broken).process(_batch(images))
    assert set(batch.drop_reason) == {"geometry:error"} and batch.failed_B.all()


def test_generate_commits_the_shard_with_the_oom_sample_recorded(engines, images, tmp_path: Path,
                                                                 monkeypatch) -> None:
    import relight_stream.engines as eng
    from relight_stream.pipeline.recipes import run_generate

    src = tmp_path / "in"
    src.mkdir()
    keys, rgb, _ = images
    for k, img in zip(keys, rgb):
        cv2.imwrite(str(src / f"{k}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    proxies: list[OOMProxy] = []

    def create(kind, flavor, **kw):  # the stages build their engine in setup(): hand them the wrapped tiny one
        assert kind == "depth" and flavor == "tiny"
        proxies.append(OOMProxy(engines["geometry"], max_batch=2, poison=is_red))
        return proxies[-1]

    monkeypatch.setattr(eng, "create_engine", create)
    out = tmp_path / "out"
    cfg = GenerateConfig(inputs=[str(src)], out=str(out), decode=DecodeConfig(resolution=RES, batch_size=5,
                         backend="pil", min_size=16), shard=ShardConfig(samples_per_shard=5),
                         segment=SegmentConfig(backend="classical"),
                         geometry=GeometryConfig(backend="depth-anything", flavor="tiny"))
    assert run_generate(cfg, RunConfig(seed=3, device="cpu")) == 0
    assert proxies and any(n > 2 for n in proxies[0].sizes), "the stage never called the engine on a full batch"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["inputs"] == 5 and stats["ok"] + stats["skipped"] + stats["failed"] == 5, stats
    assert stats["drops"].get("geometry:oom") == 1 and stats["ok"] >= 1, stats
    records = [json.loads(p.read_text()) for p in sorted(out.glob("shard-*.json"))]
    assert records and all((out / r["tar"]["name"]).exists() for r in records)
    rows = [r for rec in records for r in rec["rows"]]
    oom = [r for r in rows if r["reason"] == "geometry:oom"]
    assert len(oom) == 1 and oom[0]["key"].endswith("red") and oom[0]["status"] == "failed", oom
    assert "out of memory" in oom[0]["detail"]
