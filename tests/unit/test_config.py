"""Config precedence (defaults < YAML < flags) and errors that name the bad key."""

from __future__ import annotations

import pytest
import yaml

from relight_stream import config as C


def test_defaults_then_yaml_then_flags(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"decode": {"resolution": 1024, "batch_size": 8}, "shard": {"samples_per_shard": 64}}))
    cfg = C.load_config(C.GenerateConfig, f, {"decode.resolution": 256, "preview": None})
    assert cfg.decode.resolution == 256  # flag beats file
    assert cfg.decode.batch_size == 8  # file beats default
    assert cfg.shard.samples_per_shard == 64
    assert cfg.preview == 0  # a flag that was not given (None) leaves the default
    assert cfg.decode.max_aspect_ratio == C.DecodeConfig().max_aspect_ratio


def test_unknown_key_names_closest(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"decode": {"resolutoin": 512}}))
    with pytest.raises(ValueError, match=r"decode\.resolutoin.*did you mean 'resolution'"):
        C.load_config(C.GenerateConfig, f)
    with pytest.raises(ValueError, match="did you mean 'samples_per_shard'"):
        C.load_config(C.GenerateConfig, None, {"shard.samples_per_shrd": 3})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"decode": {"resolution": "big"}}, "decode.resolution: expected an integer"),
        ({"decode": {"resolution": True}}, "expected an integer"),
        ({"decode": {"backend": "magic"}}, "not one of"),
        ({"shard": {"write_artifacts": "yes"}}, "expected true/false"),
        ({"decode": {"background": [1, 2]}}, "expected 3 items"),
        ({"decode": 5}, "expected a mapping"),
    ],
)
def test_bad_types_are_errors(values, message):
    with pytest.raises(ValueError, match=message):
        C.build_config(C.GenerateConfig, values)


def test_post_init_validation():
    with pytest.raises(ValueError, match="--top or --threshold"):
        C.build_config(C.FilterConfig, {"top": 3, "threshold": 0.5})
    with pytest.raises(ValueError, match="summing to 1"):
        C.build_config(C.FilterConfig, {"splits": [0.5, 0.1, 0.1]})
    # prompts only steer SAM 3; on another segmenter they would be ignored without a word
    with pytest.raises(ValueError, match="read only by the sam3 backend"):
        C.build_config(C.GenerateConfig, {"segment": {"prompts": ["dog"]}})
    cfg = C.build_config(C.GenerateConfig, {"segment": {"backend": "sam3", "prompts": ["dog"]}})
    assert cfg.segment.prompts == ("dog",)


def test_lists_become_tuples_and_ints_floats():
    cfg = C.build_config(C.GenerateConfig, {"albedo": {"sigmas": [1, 2]}, "relight": {"mix": {"soft": 1}}})
    assert cfg.albedo.sigmas == (1.0, 2.0) and all(isinstance(s, float) for s in cfg.albedo.sigmas)
    assert cfg.relight.mix == {"soft": 1.0}


def test_dump_roundtrip(tmp_path):
    cfg = C.build_config(C.GenerateConfig, {"inputs": ["a"], "decode": {"resolution": 128}})
    C.dump_config(cfg, tmp_path / "config.yaml", run=C.RunConfig(seed=3))
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert data["run"]["seed"] == 3
    run = data.pop("run")
    assert run["offline"] is False
    again = C.build_config(C.GenerateConfig, data)
    assert again == cfg


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        C.load_config(C.GenerateConfig, tmp_path / "nope.yaml")
