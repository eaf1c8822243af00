"""SIGTERM to the whole process group of a ``train`` run with 2 DataLoader workers (RELIABILITY.md E7).

A scheduler (Slurm, Kubernetes) signals every process of the job, DataLoader workers included. The workers must
ignore it (``train/data.py``), and the main process checkpoints at the next step boundary and exits 143 so the
job is requeued; ``--resume latest`` then continues exactly from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import psutil
import torch

from relight_stream.config import RunConfig, TrainConfig
from relight_stream.train import checkpoint as ckpt
from relight_stream.train.fixtures import write_synthetic_shards
from relight_stream.train.loop import run_train


def _wait_for(proc: subprocess.Popen, log_path, text: str, timeout: float) -> None:
    """Poll the run's log until ``text`` appears (generous timeout: the CI box is a loaded 2-core machine)."""
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text():
        assert proc.poll() is None, f"train exited {proc.returncode} early:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.1)


def test_sigterm_to_process_group_with_two_workers_checkpoints_and_resumes(tmp_path, caplog):
    shards = write_synthetic_shards(tmp_path / "shards", num_samples=8, per_shard=4, resolution=32)
    (tmp_path / "c.yaml").write_text('mixed_precision: "no"\nnum_workers: 2\nlog_every: 1\nvalidate_every: 0\n')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "relight_stream", "--seed", "0", "--device", "cpu", "train", str(tmp_path / "shards"),
           "--out", str(out), "--max-steps", "10000", "--batch-size", "2", "--resolution", "32",
           "--checkpoint-every", "100000", "--config", str(tmp_path / "c.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RELIGHT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as err, open(tmp_path / "stdout.txt", "w") as so:
        # its own session = its own process group, like a batch job; the workers (forked) share it
        proc = subprocess.Popen(cmd, stdout=so, stderr=err, env=env, start_new_session=True)
        try:
            # step 2's batch comes from worker 1 (round-robin): both workers have run their init by now
            _wait_for(proc, stderr_path, "step=2 ", timeout=240)
            workers = psutil.Process(proc.pid).children(recursive=True)
            assert len(workers) == 2 and all(os.getpgid(w.pid) == proc.pid for w in workers), workers
            os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does: every process in the group
            rc = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = stderr_path.read_text()
    assert rc == 143, text[-3000:]  # 128 + SIGTERM: checkpointed, requeue me
    assert "received signal 15" in text
    assert "Traceback" not in text and "DataLoader worker" not in text, text[-3000:]  # no worker died of it
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)  # no orphans

    stats = json.loads((out / "stats.json").read_text())
    step = stats["step"]
    assert stats["exit_code"] == 143 and stats["last_checkpoint"] == step >= 2
    complete, partial = ckpt.list_checkpoints(out / "checkpoints")
    assert [s for s, _ in complete] == [step] and partial == []  # saved at the step boundary, committed
    path = complete[0][1]
    assert all((path / f).is_file() for f in ("COMPLETE", "train_state.json", "rank0.pt", "random_states_0.pkl"))
    assert json.loads((path / "train_state.json").read_text())["num_workers"] == 2

    # --resume latest continues from it, exactly: same workers, nothing reported as not restorable
    torch.set_num_threads(1)
    cfg = TrainConfig(shards=shards, out=str(out), resolution=32, batch_size=2, max_steps=step + 1, num_workers=2,
                      mixed_precision="no", validate_every=0, log_every=1, checkpoint_every=100000, resume="latest")
    with caplog.at_level(logging.INFO, logger=ckpt.__name__):
        assert run_train(cfg, RunConfig(device="cpu")) == 0
    assert f"resumed from {path} at step {step}" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    stats = json.loads((out / "stats.json").read_text())
    assert stats["step"] == step + 1 and stats["steps_this_run"] == 1 and stats["seed"] == 0  # the stored seed
    assert (out / "checkpoints" / f"checkpoint-{step + 1}" / "COMPLETE").is_file()
