"""Engine registry: kinds × flavors, argument validation, backend resolution (auto, env override, extras)."""

from __future__ import annotations

import logging

import pytest

from relight_stream.engines import EngineSpec, backends, create_engine, get_spec, list_engines, register_engine
from relight_stream.engines.spec import parse_weights


@pytest.fixture(autouse=True)
def _fresh_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELIGHT_BACKEND", raising=False)
    backends.reset_auto()
    yield
    backends.reset_auto()


def test_list_engines_has_every_kind_with_tiny_and_real_ids() -> None:
    engines = list_engines()
    assert {"clip", "segmenter", "depth", "vae"} <= set(engines)
    for kind, flavors in engines.items():
        if kind in ("clip", "segmenter", "depth", "vae"):
            assert "tiny" in flavors and "base" in flavors, kind
    # full-size flavors record where their real weights live (a hub id; the revision comes from the user)
    for kind, flavor in [("clip", "vit-l-14"), ("segmenter", "hiera-s"), ("depth", "depth-anything-v2-s"),
                         ("depth", "midas-dpt-hybrid"), ("vae", "sd15")]:
        spec = get_spec(kind, flavor)
        assert spec.hf_id and "/" in spec.hf_id and "@" not in spec.hf_id


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"valid kinds: .*clip.*depth"):
        create_engine("nope", "tiny")
    with pytest.raises(ValueError, match=r"valid flavors: .*tiny"):
        create_engine("depth", "huge")
    with pytest.raises(ValueError, match=r"valid backends: .*onnxruntime"):
        create_engine("depth", "tiny", backend="tvm")
    with pytest.raises(ValueError, match=r"valid: .*bf16"):
        create_engine("depth", "tiny", precision="int4")


def test_weights_must_be_pinned_or_local(tmp_path) -> None:
    spec = get_spec("depth", "depth-anything-v2-s")
    with pytest.raises(ValueError, match="pin a revision"):
        parse_weights("depth-anything/Depth-Anything-V2-Small-hf", spec)
    with pytest.raises(ValueError, match="neither an existing local path"):
        parse_weights("openai", spec)
    ref = parse_weights("depth-anything/Depth-Anything-V2-Small-hf@0123abc", spec)
    assert (ref.source, ref.repo, ref.revision) == ("hf", "depth-anything/Depth-Anything-V2-Small-hf", "0123abc")
    local = tmp_path / "w.pt"
    local.write_bytes(b"x")
    assert parse_weights(local, spec).source == "local"
    assert parse_weights(None, spec).ident.startswith("random")


def test_auto_is_eager_on_cpu_logged_once_with_reason(caplog: pytest.LogCaptureFixture) -> None:
    import torch

    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="relight_stream.engines.backends"):
        assert backends.resolve_backend("auto", cpu) == "eager"
        assert backends.resolve_backend("auto", cpu) == "eager"
    msgs = [r.getMessage() for r in caplog.records if "auto ->" in r.getMessage()]
    assert len(msgs) == 1 and "eager" in msgs[0] and "compil" in msgs[0]


def test_env_override_counts_as_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("RELIGHT_BACKEND", "onnxruntime")
    assert backends.resolve_backend("auto", torch.device("cpu")) == "onnxruntime"
    monkeypatch.setenv("RELIGHT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="valid backends"):
        backends.resolve_backend("auto", torch.device("cpu"))


def test_unavailable_backend_names_the_pip_extra() -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(ValueError, match=r"relight-stream\[tensorrt\]"):
        create_engine("depth", "tiny", backend="tensorrt", device="cpu")


def test_register_engine_adds_a_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    from relight_stream.engines import registry

    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))  # keep "toy" out of other tests
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))
    calls = []

    @register_engine("toy")
    def toy_flavors() -> dict[str, EngineSpec]:
        calls.append(1)
        return {"tiny": get_spec("depth", "tiny")}

    assert list_engines()["toy"] == ["tiny"]
    assert get_spec("toy", "tiny").kind == "depth" and calls == [1]
