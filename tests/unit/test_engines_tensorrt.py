"""TensorRT backend: plan build + parity against eager. Needs TensorRT and a GPU; skipped elsewhere."""

from __future__ import annotations

import json

import pytest
import torch

from relight_stream.config import BuildEnginesConfig, RunConfig
from relight_stream.engines import create_engine
from relight_stream.engines.build import run_build_engines

pytest.importorskip("tensorrt", reason="TensorRT is not installed here (`import tensorrt` fails; extra: tensorrt)")
pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


@pytest.mark.parametrize("kind", ["depth", "segmenter"])
def test_tensorrt_plan_matches_eager(kind: str, tmp_path, monkeypatch, capsys) -> None:
    cfg = BuildEnginesConfig(kind=kind, flavor="tiny", out=str(tmp_path), backend="tensorrt", max_batch=4)
    assert run_build_engines(cfg, RunConfig(device="cuda")) == 0
    parts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["parts"]
    assert any(p["format"] == "tensorrt" for p in parts)
    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(tmp_path))
    trt = create_engine(kind, "tiny", backend="tensorrt", device="cuda")
    eager = create_engine(kind, "tiny", backend="eager", device="cuda")
    images = torch.rand(6, 3, 64, 64, device="cuda")  # 6 > max_batch: the runner splits the batch
    args = (images, torch.tensor([[4.0, 4.0, 60.0, 60.0]], device="cuda").repeat(6, 1)) if kind == "segmenter" else (
        images,)
    err = (trt(*args) - eager(*args)).abs().max().item()
    assert err < 1e-2, f"TensorRT vs eager max abs {err:.3g}"


def test_plan_for_another_precision_is_refused(tmp_path, monkeypatch) -> None:
    cfg = BuildEnginesConfig(kind="depth", flavor="tiny", out=str(tmp_path), backend="tensorrt", precision="fp16")
    assert run_build_engines(cfg, RunConfig(device="cuda")) == 0
    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="build-engines --kind depth --flavor tiny --backend tensorrt"):
        create_engine("depth", "tiny", backend="tensorrt", device="cuda", precision="fp32")
