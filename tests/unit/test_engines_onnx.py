"""ONNX half of the engine backends: per-kind parity (onnxruntime vs eager torch), build-engines, cache reuse."""

from __future__ import annotations

import json

import pytest
import torch

from relight_stream.config import BuildEnginesConfig, RunConfig
from relight_stream.engines import create_engine
from relight_stream.engines.build import run_build_engines

pytest.importorskip("onnxruntime", reason="the onnx extra (onnx, onnxruntime) is not installed")


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "engine-cache"))
    monkeypatch.delenv("RELIGHT_BACKEND", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-4) -> None:
    err = (a - b).abs()
    assert a.shape == b.shape, what
    assert float(err.max()) <= tol, f"{what}: max abs {float(err.max()):.3g}, mean {float(err.mean()):.3g}"


# batch 3 differs from the traced batch (2): a batch axis frozen into the graph would fail here
@pytest.mark.parametrize(("kind", "flavor"), [("clip", "tiny"), ("depth", "tiny"), ("depth", "midas-dpt-tiny"),
                                             ("segmenter", "tiny"), ("vae", "tiny")])
def test_onnxruntime_matches_eager(kind: str, flavor: str) -> None:
    ort_engine = create_engine(kind, flavor, backend="onnxruntime", device="cpu")
    eager = create_engine(kind, flavor, backend="eager", device="cpu")
    assert ort_engine.backend == "onnxruntime"
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 48, 40, generator=g)
    if kind == "clip":
        _assert_close(ort_engine.encode_image(images), eager.encode_image(images), "clip image")
        texts = ["soft light from the left", "harsh noon sun", "a dim room"]
        _assert_close(ort_engine.encode_text(texts), eager.encode_text(texts), "clip text")
    elif kind == "segmenter":
        boxes = torch.tensor([[2.0, 3.0, 30.0, 40.0], [10.0, 5.0, 38.0, 44.0], [0.0, 0.0, 40.0, 48.0]])
        _assert_close(ort_engine(images, boxes), eager(images, boxes), "segmenter masks")
    elif kind == "vae":
        _assert_close(ort_engine.encode(images * 2 - 1), eager.encode(images * 2 - 1), "vae latents")
    else:
        _assert_close(ort_engine(images), eager(images), "depth")


def test_build_engines_reports_parity_and_is_reused(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "engines"
    rc = run_build_engines(BuildEnginesConfig(kind="segmenter", flavor="tiny", out=str(out)), RunConfig())
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    result = json.loads(lines[-1])
    assert result["ok"] and {p["part"] for p in result["parts"]} == {"image_encoder", "mask_decoder"}
    for part in result["parts"]:
        assert part["max_abs"] < 1e-4 and part["max_rel"] < 1e-4
        sidecar = json.loads(open(part["path"].replace(".onnx", ".json")).read())
        assert sidecar["key"]["part"] == part["part"] and sidecar["parity"]["max_abs"] == part["max_abs"]
    assert "max_abs" in lines[0] and "max_rel" in lines[0]  # the human table comes first
    # the runtime finds the built graphs through RELIGHT_ENGINE_CACHE and does not export again
    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(out))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.onnx")}
    seg = create_engine("segmenter", "tiny", backend="onnxruntime", device="cpu")
    assert seg(torch.rand(1, 3, 64, 64), torch.tensor([[4.0, 4.0, 60.0, 60.0]])).shape == (1, 64, 64)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.onnx")} == before


def test_build_engines_fixed_batch_fp16(tmp_path, capsys) -> None:
    cfg = BuildEnginesConfig(kind="depth", flavor="tiny", out=str(tmp_path), precision="fp16", dynamic_batch=False,
                             batch_size=2)
    assert run_build_engines(cfg, RunConfig()) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (part,) = result["parts"]
    assert part["precision"] == "fp16" and part["max_rel"] < 2e-2
    assert json.loads(open(part["path"].replace(".onnx", ".json")).read())["key"]["batch"] == "2"


def test_build_engines_refuses_bad_requests_before_building(tmp_path) -> None:
    run = RunConfig()
    with pytest.raises(ValueError, match="bf16"):
        run_build_engines(BuildEnginesConfig(kind="clip", flavor="tiny", out=str(tmp_path), precision="bf16"), run)
    with pytest.raises(ValueError, match="valid flavors"):
        run_build_engines(BuildEnginesConfig(kind="clip", flavor="vit-h", out=str(tmp_path)), run)
    with pytest.raises(ValueError, match="pin a revision"):
        run_build_engines(BuildEnginesConfig(kind="depth", flavor="depth-anything-v2-s", out=str(tmp_path),
                                             weights="depth-anything/Depth-Anything-V2-Small-hf"), run)
    with pytest.raises(ValueError, match="batch_size"):
        run_build_engines(BuildEnginesConfig(kind="depth", flavor="tiny", out=str(tmp_path), batch_size=8,
                                             max_batch=4), run)
    assert not any(tmp_path.iterdir())


def test_onnxruntime_precision_limits() -> None:
    with pytest.raises(ValueError, match="bf16"):
        create_engine("depth", "tiny", backend="onnxruntime", device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="CUDA only"):
        create_engine("depth", "tiny", backend="onnxruntime", device="cpu", precision="fp16")


@pytest.mark.parametrize("kind", ["clip", "segmenter", "vae"])
def test_build_engines_fp16_checks_every_kind_in_onnxruntime(kind, tmp_path, capsys) -> None:
    # CLIP's fp16 graphs crashed onnxruntime's CPU provider (SIGSEGV) under its full fusion set
    cfg = BuildEnginesConfig(kind=kind, flavor="tiny", out=str(tmp_path), precision="fp16")
    assert run_build_engines(cfg, RunConfig()) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["parts"] and all(p["parity"] == "ok" and p["max_rel"] < 2e-2 for p in result["parts"])
