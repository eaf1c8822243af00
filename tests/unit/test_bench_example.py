"""``bench example``: the pieces of the comparison against the diffusers example script.

The script itself lives in the diffusers repository (not in the wheel), so CI cannot run it; these tests check
what both trainers are given — a 4-channel base model folder both can load, the parquet export with the script's
column names — and the start-up-cancelling step arithmetic.
"""

from __future__ import annotations

import json

import pytest

from relight_stream.bench.example import _steps_row, bench_example, export_parquet, save_base_model
from relight_stream.config import BenchConfig, RunConfig


def test_without_a_script_the_target_is_skipped_in_all_and_an_error_by_name():
    result = bench_example(BenchConfig(target="all"), RunConfig(device="cpu"))
    assert result["rows"] == [] and "--example-script" in result["summary"]["skipped"]
    with pytest.raises(ValueError, match="no --example-script PATH"):  # asked for by name
        bench_example(BenchConfig(target="example"), RunConfig(device="cpu"))
    with pytest.raises(ValueError, match="is not a file"):
        bench_example(BenchConfig(example_script="/nonexistent/train_instruct_pix2pix.py"), RunConfig(device="cpu"))


def test_step_time_cancels_the_fixed_costs():
    # 7 s of start-up, loading and saving plus 0.25 s per step: the row must see only the 0.25 s
    row = _steps_row("x", lambda k: (7.0 + 0.25 * k, 100.0 + k), (4, 20), bsz=8, res=64, device="cpu")
    assert row["ms"] == 250.0 and row["samples_per_s"] == 32.0
    assert row["wall_s"] == [8.0, 12.0] and row["peak_rss_mb"] == 120.0


def test_base_model_is_a_4_channel_sd_folder_that_both_trainers_load(tmp_path):
    from diffusers import UNet2DConditionModel

    from relight_stream.train.model import load_model

    folder = save_base_model(tmp_path / "base", full_size=False)
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir(), sub
    # the example script widens conv_in itself, so the folder must hold the base (4-channel) UNet
    assert UNet2DConditionModel.from_pretrained(folder, subfolder="unet").config.in_channels == 4
    model = load_model(str(folder))
    assert model.unet.config.in_channels == 8 and model.unet.conv_in.weight[:, 4:].abs().max() == 0


def test_sdxl_base_model_has_both_text_encoders_and_loads_as_sdxl(tmp_path):
    from relight_stream.bench.example import is_sdxl_script
    from relight_stream.train.model import load_model

    folder = save_base_model(tmp_path / "base", full_size=False, sdxl=True)
    for sub in ("text_encoder_2", "tokenizer_2"):
        assert (folder / sub).is_dir(), sub
    model = load_model(str(folder))
    assert model.kind == "sdxl" and len(model.text_encoders) == 2 and model.unet.config.in_channels == 8
    script = tmp_path / "train_instruct_pix2pix_sdxl.py"
    script.write_text("pipeline = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(base)\n")
    assert is_sdxl_script(str(script))
    script.write_text("pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(base)\n")
    assert not is_sdxl_script(str(script))


def test_parquet_export_has_the_example_scripts_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    from relight_stream.train.fixtures import write_synthetic_shards

    shards = [str(p) for p in write_synthetic_shards(tmp_path / "shards", num_samples=6, per_shard=4,
                                                     resolution=32)]
    out = export_parquet(shards, tmp_path / "hf", tmp_path / "cache")
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"]
    assert ds.column_names == ["input_image", "edit_prompt", "edited_image"] and len(ds) == 6
    assert ds[0]["input_image"].size == (32, 32) and ds[0]["edit_prompt"]


def test_our_rows_command_trains_on_the_base_folder(tmp_path):
    """The exact command line of our rows (flags and config keys) runs: one step of the tiny base model."""
    import os
    import subprocess

    import yaml

    from relight_stream.bench.example import _ours_cmd
    from relight_stream.train.fixtures import write_synthetic_shards

    shards = [str(p) for p in write_synthetic_shards(tmp_path / "shards", num_samples=4, per_shard=4,
                                                     resolution=32)]
    base = save_base_model(tmp_path / "base", full_size=False)
    conf = tmp_path / "ours.yaml"
    conf.write_text(yaml.safe_dump({"ema": False, "num_workers": 0, "checkpoint_every": 10**6, "validate_every": 0}))
    cmd = _ours_cmd(shards, base, tmp_path / "out", conf, steps=1, res=32, bsz=2, mp="no", compile=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((tmp_path / "out" / "final" / "training_stats.json").read_text())
    assert stats["step"] == 1 and stats["resolution"] == 32


def test_unequal_fixed_costs_are_an_error_not_a_number():
    walls = iter([60.0, 20.0])  # a cold compile cache in the first run, a warm one in the second
    with pytest.raises(RuntimeError, match="fixed costs"):
        _steps_row("x", lambda k: (next(walls), 1.0), (4, 20), bsz=8, res=64, device="cpu")
    calls = []
    row = _steps_row("x", lambda k: (calls.append(k) or 7.0 + 0.25 * k, 1.0), (4, 20), bsz=8, res=64, device="cpu",
                     warm=True)
    assert calls == [4, 4, 20] and row["ms"] == 250.0  # warm: one unmeasured run first
