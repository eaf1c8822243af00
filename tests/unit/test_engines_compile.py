"""torch.compile backend: per-block compilation (cheap structural check here; parity runs on GPU or --run-slow)."""

from __future__ import annotations

import pytest
import torch

from relight_stream.engines import create_engine
from relight_stream.engines.backends.compile import compile_blocks


def test_repeated_blocks_are_compiled_one_by_one() -> None:
    clip = create_engine("clip", "tiny", backend="compile", device="cpu")
    assert clip.backend == "compile"
    # open_clip's ViT keeps its residual blocks in a ModuleList; each becomes a compiled module (lazily)
    blocks = clip._image.module.visual.transformer.resblocks
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in blocks)
    assert compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2))) == 0  # nothing repeated: nothing compiled


def _parity(device: str) -> None:
    images = torch.rand(2, 3, 56, 56, device=device)
    eager = create_engine("depth", "tiny", backend="eager", device=device)(images)
    compiled = create_engine("depth", "tiny", backend="compile", device=device)(images)
    err = (compiled - eager).abs().max().item()
    assert err < 1e-3, f"compile vs eager max abs {err:.3g}"


@pytest.mark.slow
def test_compile_matches_eager_cpu() -> None:
    _parity("cpu")


@pytest.mark.gpu
def test_compile_matches_eager_gpu() -> None:
    _parity("cuda")


def test_many_blocks_raise_dynamo_s_recompile_limit_so_none_falls_back_to_eager(monkeypatch) -> None:
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(cfg, name, 8)
    widths = [4, 8, 16, 32] * 3  # 12 blocks of one class, 4 widths: one graph per width and stride
    blocks = torch.nn.ModuleList(torch.nn.Linear(w, w) for w in widths)
    assert compile_blocks(torch.nn.Sequential(blocks)) == 12
    assert getattr(cfg, name) >= 12 + 8
