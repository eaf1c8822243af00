"""The CLI through click's runner: help for every command, global options, errors and exit codes."""

from __future__ import annotations

import os

import pytest
import yaml
from click.testing import CliRunner

from relight_stream import cli as cli_mod
from relight_stream.cli import ENTRY_POINTS, cli
from relight_stream.cli_options import OFFLINE_VARS
from relight_stream.train.setup import TrainOutOfMemory

COMMANDS = ["filter", "generate", "verify", "cache-latents", "train", "infer", "bench", "build-engines", "demo"]


def test_every_product_command_exists_with_help():
    assert sorted(ENTRY_POINTS) == sorted(COMMANDS)
    runner = CliRunner()
    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Reads" in result.output or "Writes" in result.output, f"{name} --help must say what it reads/writes"


def test_unbuilt_command_exits_2_not_implemented(monkeypatch):
    monkeypatch.setitem(ENTRY_POINTS, "train", "relight_stream.train.no_such_module:run_train")
    result = CliRunner().invoke(cli, ["train", "x.tar", "--out", "o"])
    assert result.exit_code == 2
    assert "not implemented yet" in result.output


def test_missing_function_exits_2(monkeypatch):
    monkeypatch.setitem(ENTRY_POINTS, "verify", "relight_stream.keys:run_verify")
    result = CliRunner().invoke(cli, ["verify", "somewhere"])
    assert result.exit_code == 2 and "not implemented yet" in result.output


def _capture(monkeypatch, command):
    seen = {}

    def fake_entry(cmd):
        assert cmd == command

        def run(cfg, run):
            seen["cfg"], seen["run"] = cfg, run
            return 0

        return run

    monkeypatch.setattr(cli_mod, "resolve_entry", fake_entry)
    return seen


def test_flags_override_config_file(tmp_path, monkeypatch):
    seen = _capture(monkeypatch, "generate")
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump({"decode": {"resolution": 1024}, "shard": {"samples_per_shard": 32}}))
    result = CliRunner().invoke(
        cli, ["--seed", "5", "generate", "in_dir", "--out", "o", "--resolution", "128", "--mix", "soft=1,shadow=0.5",
              "--config", str(f)]
    )
    assert result.exit_code == 0, result.output
    cfg, run = seen["cfg"], seen["run"]
    assert cfg.decode.resolution == 128 and cfg.shard.samples_per_shard == 32
    assert cfg.relight.mix == {"soft": 1.0, "shadow": 0.5}
    assert cfg.inputs == ["in_dir"] and run.seed == 5


def test_every_generate_flag_reaches_its_config_key(monkeypatch):
    seen = _capture(monkeypatch, "generate")
    args = ["generate", "a", "b", "--out", "o", "--resolution", "96", "--samples-per-shard", "7", "--segmenter", "sam2",
            "--segmenter-flavor", "tiny", "--segmenter-weights", "random", "--depth", "dpt", "--depth-flavor", "large",
            "--depth-weights", "/w", "--albedo", "lab", "--preview", "3", "--consistency", "--overwrite", "--new-run",
            "--keep-alpha", "--batch-size", "5", "--decode-backend", "pil", "--skip-bad-input-shards",
            "--fast-dev-run", "--workers", "2", "--dry-run"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.inputs == ["a", "b"] and cfg.out == "o" and cfg.preview == 3 and cfg.workers == 2
    decode = (cfg.decode.resolution, cfg.decode.batch_size, cfg.decode.backend, cfg.decode.keep_alpha)
    assert decode == (96, 5, "pil", True)
    assert (cfg.segment.backend, cfg.segment.flavor, cfg.segment.weights) == ("sam2", "tiny", "random")
    assert (cfg.geometry.backend, cfg.geometry.flavor, cfg.geometry.weights) == ("dpt", "large", "/w")
    assert cfg.albedo.method == "lab" and cfg.relight.consistency and cfg.fast_dev_run and cfg.dry_run
    assert (cfg.shard.samples_per_shard, cfg.shard.overwrite, cfg.shard.new_run, cfg.shard.skip_bad_input_shards) == (
        7, True, True, True)
    seen = _capture(monkeypatch, "filter")
    assert CliRunner().invoke(cli, ["filter", "a", "--out", "o", "--batch-size", "16"]).exit_code == 0
    assert seen["cfg"].clip.batch_size == 16


def test_segment_prompt_reaches_sam3_and_is_refused_for_other_segmenters(monkeypatch):
    seen = _capture(monkeypatch, "generate")
    ok = ["generate", "a", "--out", "o", "--segmenter", "sam3", "--segment-prompt", "person, dog"]
    assert CliRunner().invoke(cli, ok).exit_code == 0
    assert seen["cfg"].segment.prompts == ("person", "dog")
    for segmenter in ("classical", "sam2"):  # even the default prompt: the flag would be silently ignored
        result = CliRunner().invoke(cli, ["generate", "a", "--out", "o", "--segmenter", segmenter,
                                          "--segment-prompt", "person"])
        assert result.exit_code == 2 and "only --segmenter sam3 reads prompts" in result.output


def test_unknown_yaml_key_is_a_clear_error(tmp_path, monkeypatch):
    _capture(monkeypatch, "generate")
    f = tmp_path / "g.yaml"
    f.write_text("shard:\n  sample_per_shard: 3\n")
    result = CliRunner().invoke(cli, ["generate", "x", "--out", "o", "--config", str(f)])
    assert result.exit_code == 2
    assert "shard.sample_per_shard" in result.output and "samples_per_shard" in result.output


def test_bad_mix_flag():
    result = CliRunner().invoke(cli, ["generate", "x", "--out", "o", "--mix", "soft"])
    assert result.exit_code == 2 and "name=weight" in result.output


@pytest.mark.parametrize("command, error, code", [
    (["generate", "/nowhere", "--out", "o"], ValueError("no inputs found under /nowhere"), 2),  # a bad run
    (["train", "s.tar", "--out", "o"],  # an environment fault with advice (GPU memory): no traceback
     TrainOutOfMemory("train: out of GPU memory in step 3 (...): --batch-size 4 with `grad_accum: 2`"), 1),
])
def test_errors_from_a_run_are_a_message_and_an_exit_code(monkeypatch, command, error, code):
    def fake_entry(cmd):
        def run(cfg, run):
            raise error

        return run

    monkeypatch.setattr(cli_mod, "resolve_entry", fake_entry)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == code and str(error) in result.output and "Traceback" not in result.output


def test_nonzero_code_is_propagated(monkeypatch):
    monkeypatch.setattr(cli_mod, "resolve_entry", lambda cmd: (lambda cfg, run: 3))
    assert CliRunner().invoke(cli, ["verify", "d"]).exit_code == 3


def test_offline_sets_hub_variables(monkeypatch):
    for var in OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    _capture(monkeypatch, "verify")
    result = CliRunner().invoke(cli, ["--offline", "verify", "d"])
    assert result.exit_code == 0
    assert all(os.environ[v] == "1" for v in OFFLINE_VARS)


def test_bad_log_level():
    result = CliRunner().invoke(cli, ["--log-level", "LOUD", "verify", "d"])
    assert result.exit_code == 2 and "unknown log level" in result.output


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_top_level(args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and ("relight-stream" in result.output or "0.1.0" in result.output)
