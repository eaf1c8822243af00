"""``train`` under ``accelerate launch`` with 2 CPU processes, in both forms RELIABILITY.md F3 names.

``accelerate launch --no_python relight-stream train …`` (the console script) and
``accelerate launch -m relight_stream.cli train …``. Each launch takes ~15 s on 2 loaded CPU cores, nearly all of
it process start-up and imports (3 Python processes: the launcher and two ranks).
Accelerate gets its settings from a config file written here (not ``~/.cache/huggingface/accelerate/
default_config.yaml``; ``HF_HOME`` points into the test folder too); the rendezvous is on 127.0.0.1 and the model
is the tiny random one, so nothing touches the network. ``--multi_gpu`` is what makes accelerate start N
processes (through torch.distributed.run); ``--cpu`` would start one. ``--device cpu`` then makes each process a
gloo (MULTI_CPU) rank.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_faults import kill_group

from relight_stream.train import checkpoint as ckpt
from relight_stream.train.fixtures import write_synthetic_shards

BIN = Path(sys.executable).parent
ACCELERATE_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
machine_rank: 0
num_processes: 2
mixed_precision: 'no'
use_cpu: false
main_process_ip: 127.0.0.1
main_process_port: {port}
rdzv_backend: static
same_network: true
gpu_ids: all
"""
STEPS, BATCH = 2, 2  # 2 x 2 samples per rank: each rank reads exactly its own 4-sample shard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, form: str, shards: Path, train_yaml: Path) -> tuple[subprocess.Popen, Path, Path]:
    """Start one ``accelerate launch`` of ``train``; returns (process, out dir, log file)."""
    acc_yaml = tmp_path / f"accelerate-{form}.yaml"
    acc_yaml.write_text(ACCELERATE_CONFIG.format(port=_free_port()))
    target = ["--no_python", str(BIN / "relight-stream")] if form == "console" else ["-m", "relight_stream.cli"]
    out, log_path = tmp_path / f"out-{form}", tmp_path / f"log-{form}.txt"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(acc_yaml), *target, "--seed", "0", "--device",
           "cpu", "train", str(shards), "--out", str(out), "--max-steps", str(STEPS), "--batch-size", str(BATCH),
           "--resolution", "32", "--config", str(train_yaml)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RELIGHT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("ACCELERATE_CONFIG_FILE", None)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)  # its ranks share a process group: killed together
    return proc, out, log_path


@pytest.mark.parametrize("form", ["console", "module"])
def test_accelerate_launch_runs_two_ranks_with_correct_rank_and_world_size(tmp_path, form):
    for exe in ("accelerate", "relight-stream"):
        if not (BIN / exe).is_file():
            pytest.skip(f"{exe} is not installed next to {sys.executable}")
    write_synthetic_shards(tmp_path / "shards", num_samples=8, per_shard=4, resolution=32)
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text('mixed_precision: "no"\nnum_workers: 1\nlog_every: 1\nvalidate_every: 0\n')
    proc, out, log_path = _start(tmp_path, form, tmp_path / "shards", train_yaml)
    try:
        proc.wait(timeout=180)
    finally:
        kill_group(proc)
    text = log_path.read_text()
    assert proc.returncode == 0, text[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["exit_code"] == 0 and stats["step"] == STEPS and stats["world_size"] == 2
    ranks = sorted(stats["ranks"], key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1], ranks
    assert len({r["pid"] for r in ranks}) == 2, ranks  # two processes, not one rank reported twice
    for r in ranks:
        assert r["world_size"] == 2 and r["launcher"] == "accelerate", r
        assert r["distributed_type"] == "MULTI_CPU" and r["device"].startswith("cpu"), r
        assert r["samples"] == STEPS * BATCH, r  # equal batches on every rank
    assert not set(ranks[0]["first_keys"]) & set(ranks[1]["first_keys"]), ranks  # the data is split by rank
    complete, partial = ckpt.list_checkpoints(out / "checkpoints")
    (step, path), = complete
    assert not partial and step == STEPS
    assert (path / "rank0.pt").is_file() and (path / "rank1.pt").is_file()  # every rank saved its own state
    assert ":r0] " in text and ":r1] " in text  # both ranks logged with their rank prefix
    assert (out / "final" / "model_index.json").is_file()


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED", "MEGATRON_LM"])
def test_sharded_launches_are_refused_with_a_clear_error(kind):
    from accelerate.utils import DistributedType

    from relight_stream.train.loop import refuse_sharding

    with pytest.raises(ValueError, match=f"{kind} launches are not supported yet; use DDP"):
        refuse_sharding(DistributedType[kind])
    for ddp in ("NO", "MULTI_CPU", "MULTI_GPU"):
        refuse_sharding(DistributedType[ddp])  # data-parallel launches pass


def test_train_refuses_an_fsdp_launch_before_building_anything(tmp_path, monkeypatch):
    from relight_stream.config import RunConfig, TrainConfig
    from relight_stream.train.fixtures import write_synthetic_shards
    from relight_stream.train.loop import run_train

    shards = [str(p) for p in write_synthetic_shards(tmp_path / "shards", num_samples=2, per_shard=2, resolution=32)]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    cfg = TrainConfig(shards=shards, out=str(tmp_path / "out"), resolution=32, max_steps=1, batch_size=1)
    with pytest.raises(ValueError, match="FSDP launches are not supported yet"):
        run_train(cfg, RunConfig(device="cpu", seed=0))
    assert not (tmp_path / "out" / "checkpoints").exists()
