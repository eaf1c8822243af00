"""``train`` under ``torchrun`` with 2 CPU processes, and SIGTERM on one rank (RELIABILITY.md E7, E4, F3)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import torch
from fixtures_faults import kill_group

from relight_stream.config import RunConfig, TrainConfig
from relight_stream.train import checkpoint as ckpt
from relight_stream.train.fixtures import write_synthetic_shards
from relight_stream.train.loop import run_train
from relight_stream.train.setup import EXIT_SIGTERM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_sigterm_on_one_rank_checkpoints_both(tmp_path, caplog):
    shards = write_synthetic_shards(tmp_path / "shards", num_samples=8, per_shard=4, resolution=32)
    (tmp_path / "c.yaml").write_text('mixed_precision: "no"\nnum_workers: 1\nlog_every: 1\n')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "relight_stream", "--seed", "0", "--device", "cpu", "train",
           str(tmp_path / "shards"), "--out", str(out), "--max-steps", "500", "--batch-size", "2", "--resolution", "32",
           "--checkpoint-every", "1000", "--config", str(tmp_path / "c.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RELIGHT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.time() + 240
            while "step=3 " not in log_path.read_text():
                assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            workers = psutil.Process(proc.pid).children(recursive=False)
            rank1 = [w for w in workers if w.environ().get("RANK") == "1"]
            assert len(rank1) == 1, [w.environ().get("RANK") for w in workers]
            rank1[0].send_signal(signal.SIGTERM)  # only rank 1: rank 0 must learn it through the all-reduce
            proc.wait(timeout=120)
        finally:
            kill_group(proc)
    text = log_path.read_text()
    assert proc.returncode != 0  # the ranks exit 143 so a scheduler requeues the job
    stats = json.loads((out / "stats.json").read_text())
    assert stats["exit_code"] == EXIT_SIGTERM and stats["world_size"] == 2
    ranks = sorted(stats["ranks"], key=lambda r: r["rank"])  # what each rank reported about itself
    assert [(r["rank"], r["world_size"], r["launcher"]) for r in ranks] == [(0, 2, "torchrun"), (1, 2, "torchrun")]
    assert ranks[0]["pid"] != ranks[1]["pid"] and ranks[0]["samples"] == ranks[1]["samples"] > 0
    (step, path), = ckpt.list_checkpoints(out / "checkpoints")[0]
    assert step == stats["step"] >= 3
    assert (path / "rank0.pt").is_file() and (path / "rank1.pt").is_file()
    assert "received signal 15" in text and "exitcode  : 143" in text
    assert text.count("Traceback") == 1 and "ChildFailedError" in text  # only torchrun's report, no rank crashed

    # Resume on one process: the world size changed, which must be said loudly (E4), and training goes on.
    torch.set_num_threads(1)
    cfg = TrainConfig(shards=shards, out=str(out), resolution=32, batch_size=2, max_steps=step + 2, num_workers=1,
                      mixed_precision="no", resume="latest", checkpoint_every=1000)
    with caplog.at_level(logging.WARNING):
        assert run_train(cfg, RunConfig(device="cpu")) == 0
    assert "world size 2 -> 1" in caplog.text
    assert json.loads((out / "stats.json").read_text())["step"] == step + 2
    assert (out / "final" / "model_index.json").is_file()
