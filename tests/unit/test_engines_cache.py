"""Engine cache keying and the refusal of stale or foreign ONNX graphs / TensorRT plans."""

from __future__ import annotations

import dataclasses
import json

import pytest

from relight_stream.engines.cache import EngineCacheMiss, EngineKey, cache_root, check_artefact, lookup, write_sidecar

KEY = EngineKey(kind="depth", flavor="tiny", part="net", precision="fp16", input_shapes=((-1, 3, 56, 56),),
                batch="1-32", weights="random:seed0", fmt="tensorrt", runtime="trt10.3.0", device="sm_90")


def _plan(root, key: EngineKey = KEY):
    path = key.path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"plan")
    write_sidecar(path, key, {"build_s": 1.0})
    return path


def test_every_key_field_changes_the_digest() -> None:
    changes = {"kind": "clip", "flavor": "depth-anything-v2-s", "part": "encoder", "precision": "bf16",
               "input_shapes": ((-1, 3, 518, 518),), "batch": "8", "weights": "hf:org/x@abc",
               "fmt": "onnx", "runtime": "trt10.4.0", "device": "sm_80"}
    digests = {KEY.digest()}
    for field, value in changes.items():
        digests.add(dataclasses.replace(KEY, **{field: value}).digest())
    assert len(digests) == len(changes) + 1
    assert KEY.digest() == dataclasses.replace(KEY).digest()  # stable for equal keys


def test_layout_and_root(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    path = KEY.path()
    assert path.parent == tmp_path / "depth" / "tiny" and path.suffix == ".plan" and KEY.digest() in path.name
    assert cache_root(tmp_path / "other") == tmp_path / "other"


def test_valid_plan_is_found_with_any_batch_range(tmp_path) -> None:
    path = _plan(tmp_path)
    assert check_artefact(path, KEY)["build_s"] == 1.0
    assert lookup(dataclasses.replace(KEY, batch="*"), tmp_path, ignore=("batch",)) == path


@pytest.mark.parametrize(
    ("field", "value"),
    [("runtime", "trt10.0.1"), ("device", "sm_80"), ("weights", "hf:org/x@abc"), ("precision", "fp32")],
)
def test_stale_or_foreign_plan_is_refused_with_the_rebuild_command(tmp_path, field: str, value: str) -> None:
    _plan(tmp_path, dataclasses.replace(KEY, **{field: value}))  # built elsewhere / for something else
    with pytest.raises(EngineCacheMiss) as info:
        lookup(KEY, tmp_path, ignore=("batch",))
    msg = str(info.value)
    assert field in msg and repr(value) in msg
    assert "relight-stream build-engines --kind depth --flavor tiny --backend tensorrt --precision fp16" in msg


def test_tampered_sidecar_and_missing_sidecar_are_refused(tmp_path) -> None:
    path = _plan(tmp_path)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    meta["key"]["device"] = "sm_75"  # the plan at this key's path claims another GPU
    side.write_text(json.dumps(meta))
    with pytest.raises(EngineCacheMiss, match="sm_75"):
        check_artefact(path, KEY)
    side.unlink()
    with pytest.raises(EngineCacheMiss, match="no JSON sidecar"):
        check_artefact(path, KEY)


def test_missing_engine_says_how_to_build_it(tmp_path) -> None:
    with pytest.raises(EngineCacheMiss, match="build-engines --kind depth"):
        lookup(KEY, tmp_path)
    assert issubclass(EngineCacheMiss, ValueError)


def test_tensorrt_backend_refuses_foreign_plans_before_building(tmp_path, monkeypatch) -> None:
    """The TensorRT backend's early check, with this machine's TensorRT version and GPU given (no TensorRT here)."""
    from relight_stream.engines import get_spec
    from relight_stream.engines.backends import tensorrt as trt_backend
    from relight_stream.engines.spec import WeightsRef

    monkeypatch.setenv("RELIGHT_ENGINE_CACHE", str(tmp_path))
    monkeypatch.setattr(trt_backend, "trt_version", lambda: "10.3.0")
    monkeypatch.setattr(trt_backend, "compute_capability", lambda device=None: "sm_90")
    spec, weights = get_spec("depth", "tiny"), WeightsRef("random")
    _plan(tmp_path, dataclasses.replace(KEY, runtime="trt10.0.1", device="sm_80"))  # from another machine
    with pytest.raises(EngineCacheMiss, match="build-engines --kind depth --flavor tiny --backend tensorrt"):
        trt_backend.precheck(spec, weights, "fp16", None)
    _plan(tmp_path)  # built here: TensorRT 10.3.0 on sm_90
    trt_backend.precheck(spec, weights, "fp16", None)
    with pytest.raises(EngineCacheMiss, match="fp32"):
        trt_backend.precheck(spec, weights, "fp32", None)
