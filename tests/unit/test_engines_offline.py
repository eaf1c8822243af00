"""Weights offline and partially downloaded (RELIABILITY.md D1, D2): an offline cache miss fails at once with the
pre-fetch command; local and cached weights load with every socket refused; a truncated safetensors file is a
clear error before any model is built."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import torch

from relight_stream.engines import create_engine, get_spec
from relight_stream.engines import registry
from relight_stream.engines.registry import build_model
from relight_stream.engines.spec import WeightsRef

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_env(tmp_path, monkeypatch) -> Path:
    """An empty ``HF_HOME``, offline mode on, and no socket may connect or resolve a name."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RELIGHT_BACKEND", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return home


@pytest.fixture
def no_build(monkeypatch) -> None:
    """Building any engine model fails the test: errors must come before the build."""

    def forbidden(spec, ref):
        raise AssertionError(f"{spec.kind}/{spec.flavor} was built before the weights were checked")

    monkeypatch.setattr(registry, "build_model", forbidden)


def _saved(kind: str, where: Path) -> Path:
    """Tiny ``kind`` weights perturbed away from the seeded init, saved as safetensors; returns the weights path."""
    model = build_model(get_spec(kind, "tiny"), WeightsRef("random")).extras["model"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    if kind == "vae":
        model.save_pretrained(where)  # config.json + diffusion_pytorch_model.safetensors
        return where
    from safetensors.torch import save_file

    where.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, where / "clip.safetensors")
    return where / "clip.safetensors"


def _safetensors_in(path: Path) -> Path:
    return path if path.is_file() else next(path.rglob("*.safetensors"))


def _truncate(path: Path, nbytes: int = 300) -> Path:
    f = _safetensors_in(path)
    data = f.read_bytes()
    f.write_bytes(data[:-nbytes])
    return f


def _encode(engine, kind: str) -> torch.Tensor:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return engine.encode(images * 2 - 1) if kind == "vae" else engine.encode_image(images)


@pytest.mark.parametrize(("kind", "flavor", "filename"), [("depth", "tiny", None),
                                                         ("clip", "vit-b-32", "open_clip_model.safetensors")])
def test_offline_empty_cache_fails_fast_naming_id_revision_and_command(kind, flavor, filename, offline_env,
                                                                       no_build) -> None:
    repo = "someorg/some-model"
    import huggingface_hub  # noqa: F401  (imports are not what is timed: a loaded CI machine takes seconds for them)

    get_spec(kind, flavor)
    start = time.perf_counter()
    with pytest.raises(ValueError) as info:
        create_engine(kind, flavor, backend="eager", device="cpu", weights=f"{repo}@{REV}")
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"offline cache miss took {elapsed:.1f} s"
    msg = str(info.value)
    assert f"{repo}@{REV}" in msg
    cmd = f"hf download {repo}{' ' + filename if filename else ''} --revision {REV}"
    assert cmd in msg and str(offline_env) in msg  # the pre-fetch command and HF_HOME


def test_offline_train_model_cache_miss_names_prefetch(offline_env) -> None:
    from relight_stream.train.model import ALIASES, load_model

    repo, rev = ALIASES["sd15"]
    with pytest.raises(ValueError) as info:
        load_model("sd15")
    assert f"hf download {repo} --revision {rev}" in str(info.value) and str(offline_env) in str(info.value)


@pytest.mark.parametrize("kind", ["vae", "clip"])
def test_local_weights_load_with_network_blocked(kind, tmp_path, offline_env) -> None:
    weights = _saved(kind, tmp_path / "w")
    loaded = create_engine(kind, "tiny", backend="eager", device="cpu", weights=str(weights))
    random = create_engine(kind, "tiny", backend="eager", device="cpu")
    assert loaded.weights.startswith("local:")
    assert not torch.allclose(_encode(loaded, kind), _encode(random, kind))  # the checkpoint is in use


@pytest.mark.parametrize("kind", ["vae", "clip"])
def test_truncated_local_safetensors_is_a_clear_error(kind, tmp_path, offline_env, monkeypatch) -> None:
    weights = _saved(kind, tmp_path / "w")
    bad = _truncate(weights)
    with monkeypatch.context() as m:
        m.setattr(registry, "build_model", lambda spec, ref: pytest.fail("built before the weights were checked"))
        with pytest.raises(ValueError, match="incomplete safetensors") as info:
            create_engine(kind, "tiny", backend="eager", device="cpu", weights=str(weights))
    assert str(bad) in str(info.value) and "re-download" in str(info.value)


def test_cached_hub_snapshot_loads_offline_and_truncation_names_refetch(tmp_path, offline_env) -> None:
    snapshot = offline_env / "hub" / "models--someorg--tiny-vae" / "snapshots" / REV
    shutil.copytree(_saved("vae", tmp_path / "w"), snapshot)
    engine = create_engine("vae", "tiny", backend="eager", device="cpu", weights=f"someorg/tiny-vae@{REV}")
    assert engine.weights == f"hf:someorg/tiny-vae@{REV}"
    assert torch.isfinite(_encode(engine, "vae")).all()
    _truncate(snapshot)
    with pytest.raises(ValueError, match="incomplete safetensors") as info:
        create_engine("vae", "tiny", backend="eager", device="cpu", weights=f"someorg/tiny-vae@{REV}")
    assert f"hf download someorg/tiny-vae --revision {REV}" in str(info.value)


def test_online_a_truncated_cached_file_is_downloaded_again(tmp_path, monkeypatch) -> None:
    import huggingface_hub
    from safetensors.torch import save_file

    from relight_stream.engines.weights import resolve_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    good, cut = tmp_path / "good.safetensors", tmp_path / "cut.safetensors"
    save_file({"w": torch.ones(64)}, good)
    cut.write_bytes(good.read_bytes()[:-40])  # what an interrupted download leaves in the cache
    calls = []

    def fake_download(repo, filename, *, revision, cache_dir, force_download=False):  # the hub, without a network
        calls.append(force_download)
        return str(good if force_download else cut)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ref = WeightsRef("hf", repo="someorg/tiny", revision=REV)
    assert resolve_weights(ref, "model.safetensors") == good and calls == [False, True]
    cut_twice = lambda *a, **k: str(cut)  # noqa: E731
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cut_twice)
    with pytest.raises(ValueError, match="incomplete safetensors"):  # still cut after a fresh download: an error
        resolve_weights(ref, "model.safetensors")


def test_safetensors_longer_than_header_or_garbage_is_rejected(tmp_path) -> None:
    from safetensors.torch import save_file

    from relight_stream.engines.weights import check_safetensors

    f = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(4)}, f)
    check_safetensors(f)  # intact
    f.write_bytes(f.read_bytes() + b"\0" * 16)
    with pytest.raises(ValueError, match="corrupt safetensors"):
        check_safetensors(f)
    f.write_bytes(b"\x05")
    with pytest.raises(ValueError, match="incomplete safetensors"):
        check_safetensors(f)
    f.write_bytes((4).to_bytes(8, "little") + b"nope")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        check_safetensors(f)


def test_generate_stage_rejects_an_uncached_offline_model_before_building(tmp_path, monkeypatch):
    from relight_stream.config import GeometryConfig
    from relight_stream.pipeline.geometry import GeometryStage

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="hf download"):
        GeometryStage(GeometryConfig(backend="depth-anything", flavor="s",
                                     weights="depth-anything/Depth-Anything-V2-Small-hf@" + "a" * 40))
