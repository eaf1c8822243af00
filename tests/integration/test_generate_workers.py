"""``generate --workers N``: N spawned local ranks write the one-process bytes, resume, stop and report as one run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_images import shard_outputs
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig, config_to_dict
from relight_stream.pipeline import shard as S
from relight_stream.pipeline.recipes import run_generate
from relight_stream.pipeline.sources import make_plan
from relight_stream.pipeline import workers as workers_mod
from relight_stream.pipeline.workers import MIN_INPUTS_PER_WORKER, resolve_workers

DEC = {"resolution": 32, "min_size": 16, "batch_size": 2, "backend": "pil", "num_workers": 1}
ROOT = Path(__file__).resolve().parents[2]


def _cfg(inputs, out, *, workers: int, sps: int = 2, **shard) -> GenerateConfig:
    return GenerateConfig(inputs=[str(i) for i in inputs], out=str(out), decode=DecodeConfig(**DEC),
                          shard=ShardConfig(samples_per_shard=sps, **shard), workers=workers)


def test_workers_write_the_one_process_bytes_and_resume_with_another_count(photos_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_generate(_cfg([photos_dir], ref, workers=1), RunConfig(seed=0), stages=[]) == 0
    assert run_generate(_cfg([photos_dir], out, workers=2), RunConfig(seed=0), stages=[]) == 0
    assert shard_outputs(out) == shard_outputs(ref) and len(shard_outputs(ref)) == 12
    stats = json.loads((out / "stats.json").read_text())
    assert stats["world"] == 2 and [r["rank"] for r in stats["ranks"]] == [0, 1]
    assert (stats["ok"], stats["skipped"], stats["failed"], stats["exit_code"]) == (10, 2, 0, 0)
    for name in ("shard-000001", "shard-000003", "shard-000004"):  # lost shards, redone by three workers
        (out / f"{name}.json").unlink()
    (out / "shard-000004.tar").unlink()
    assert run_generate(_cfg([photos_dir], out, workers=3), RunConfig(seed=0), stages=[]) == 0
    assert shard_outputs(out) == shard_outputs(ref)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["world"] == 3 and stats["shards_written"] == 3


def test_new_run_moves_the_old_outputs_aside_once_then_the_workers_start(photos_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_generate(_cfg([photos_dir], ref, workers=1), RunConfig(seed=0), stages=[]) == 0
    assert run_generate(_cfg([photos_dir], out, workers=1, sps=3), RunConfig(seed=0), stages=[]) == 0
    assert run_generate(_cfg([photos_dir], out, workers=2, new_run=True), RunConfig(seed=0), stages=[]) == 0
    assert shard_outputs(out) == shard_outputs(ref)
    (old,) = list(out.glob("previous-*"))
    assert len(shard_outputs(old)) == 8  # 12 inputs in shards of 3, untouched


def test_stale_outputs_fail_in_the_parent_before_any_worker_starts(photos_dir, tmp_path):
    out = tmp_path / "out"
    assert run_generate(_cfg([photos_dir], out, workers=1), RunConfig(seed=0), stages=[]) == 0
    with pytest.raises(ValueError, match="config .*changed"):
        run_generate(_cfg([photos_dir], out, workers=2), RunConfig(seed=1), stages=[])


def test_cli_workers_flag_runs_the_triplet_stages_and_does_not_change_the_config_hash(photos_dir, tmp_path):
    from click.testing import CliRunner

    from relight_stream.cli import cli

    a = _cfg([photos_dir], tmp_path / "a", workers=1)
    assert S.config_hash(config_to_dict(a), 0) == S.config_hash(config_to_dict(_cfg([photos_dir], "b", workers=4)), 0)
    yaml = tmp_path / "run.yaml"
    yaml.write_text("decode:\n  resolution: 64\n  min_size: 16\n  batch_size: 2\n  backend: pil\n"
                    "shard:\n  samples_per_shard: 3\n")
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"w{n}"
        res = CliRunner().invoke(cli, ["--seed", "3", "generate", str(photos_dir), "--out", str(out), "--workers", str(n),
                                       "--config", str(yaml)])
        assert res.exit_code == 0, res.output
        outs[n] = shard_outputs(out)
    assert outs[1] == outs[2] and len(outs[1]) == 8
    assert "workers: 2" in (tmp_path / "w2" / "config.yaml").read_text()


_SCRIPT = """
import json, sys
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig
from relight_stream.log import setup_logging
from relight_stream.pipeline.recipes import run_generate
from fixtures_stages import Hold

a = json.loads(sys.argv[1])
setup_logging("WARNING")
cfg = GenerateConfig(inputs=a["inputs"], out=a["out"], decode=DecodeConfig(**a["dec"]),
                     shard=ShardConfig(samples_per_shard=4), workers=2)
sys.exit(run_generate(cfg, RunConfig(seed=0), stages=[Hold(a["key"], a["marker"], a["hold"])]))
"""


def _spawn_held(photos_dir: Path, out: Path, marker: Path, hold: float) -> subprocess.Popen:
    """A 2-worker run whose rank 1 holds the first of shard-000001's two batches for ``hold`` s after creating
    ``marker``."""
    key = make_plan([str(photos_dir)], samples_per_shard=4).units[1].items[0].key
    arg = json.dumps({"inputs": [str(photos_dir)], "out": str(out), "dec": DEC, "key": key, "marker": str(marker),
                      "hold": hold})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, arg], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _wait_for(path: Path, p: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert p is None or p.poll() is None, p.stdout.read().decode()
        assert time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def test_sigterm_to_the_parent_stops_every_worker_cleanly_and_exits_143(photos_dir, tmp_path):
    out = tmp_path / "out"
    p = _spawn_held(photos_dir, out, tmp_path / "inside", hold=1.0)
    _wait_for(tmp_path / "inside", p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143, p.stdout.read().decode()
    assert not list(out.glob("*.tmp-*")) and not (out / "shard-000001.tar").exists()
    for tar in out.glob("shard-*.tar"):
        assert tar.with_suffix(".json").exists()
    rank1 = json.loads((out / "stats-rank001.json").read_text())
    assert rank1["interrupted_by"] == "SIGTERM" and rank1["exit_code"] == 143
    stats = json.loads((out / "stats.json").read_text())  # merged by a worker, or by the parent when a worker
    assert stats["exit_code"] == 143 and stats["world"] == 2  # was stopped before it could write its own
    assert 1 not in stats.get("missing_ranks", [])


def test_the_parent_merges_the_stats_of_the_workers_that_wrote_them(tmp_path):
    from relight_stream.pipeline.recipes_report import merge_rank_stats

    (tmp_path / "stats-rank000.json").write_text(json.dumps({"ok": 5, "inputs": 6, "wall_s": 2.0, "exit_code": 0}))
    since = time.time()
    os.utime(tmp_path / "stats-rank000.json", (since - 60, since - 60))  # an earlier run's file
    assert not merge_rank_stats(str(tmp_path), 2)  # a rank is missing: the ranks' own merge waits
    assert not merge_rank_stats(str(tmp_path), 2, since=since)  # rank 0's file is from an earlier run
    (tmp_path / "stats-rank001.json").write_text(json.dumps({"ok": 3, "inputs": 4, "wall_s": 1.0, "exit_code": 143}))
    # file times come from a coarse clock that can lag time.time() by a tick: date this run's file clearly after
    os.utime(tmp_path / "stats-rank001.json", (since + 1, since + 1))
    assert merge_rank_stats(str(tmp_path), 2, since=since, exit_code=143)
    merged = json.loads((tmp_path / "stats.json").read_text())
    assert (merged["ok"], merged["inputs"], merged["missing_ranks"], merged["exit_code"]) == (3, 4, [0], 143)


def test_a_worker_stops_by_itself_when_its_parent_is_killed(photos_dir, tmp_path):
    out = tmp_path / "out"
    p = _spawn_held(photos_dir, out, tmp_path / "inside", hold=1.0)
    _wait_for(tmp_path / "inside", p)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    _wait_for(out / "stats-rank001.json", timeout=30)  # the orphan wrote its stats and exited
    rank1 = json.loads((out / "stats-rank001.json").read_text())
    assert rank1["interrupted_by"] == "SIGTERM" and not (out / "shard-000001.tar").exists()


@pytest.mark.parametrize(("asked", "gpu", "inputs", "units", "expect"), [
    (2, False, 10, 5, 2),  # as asked
    (8, False, 10, 3, 3),  # never more workers than shards to write
    (4, True, 1000, 10, 4),  # asked for explicitly: also on a GPU
    (0, True, 10_000, 100, 1),  # auto on a GPU: one process (launch ranks per GPU instead)
    (0, False, MIN_INPUTS_PER_WORKER - 1, 10, 1),  # auto: too little work to pay for a process start
    (0, False, 10, 1, 1),  # one shard
])
def test_resolve_workers(asked, gpu, inputs, units, expect, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(workers_mod, "available_memory_bytes", lambda: 64 * 2**30)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers(asked, gpu=gpu, inputs_todo=inputs, units_todo=units) == expect


def test_resolve_workers_auto_uses_the_cores_and_refuses_a_negative_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(workers_mod, "available_memory_bytes", lambda: 64 * 2**30)  # not this host's memory
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers(0, gpu=False, inputs_todo=10 * MIN_INPUTS_PER_WORKER, units_todo=100) == 2  # 4 cores
    assert resolve_workers(0, gpu=False, inputs_todo=1 * MIN_INPUTS_PER_WORKER, units_todo=100) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert resolve_workers(0, gpu=False, inputs_todo=10 * MIN_INPUTS_PER_WORKER, units_todo=100) == 10  # inputs
    assert resolve_workers(0, gpu=False, inputs_todo=100 * MIN_INPUTS_PER_WORKER, units_todo=100) == 16  # cores
    monkeypatch.setattr(workers_mod, "available_memory_bytes", lambda: None)  # unreadable: cores and inputs decide
    assert resolve_workers(0, gpu=False, inputs_todo=100 * MIN_INPUTS_PER_WORKER, units_todo=100) == 16
    with pytest.raises(ValueError, match="workers must be >= 0"):
        resolve_workers(-1, gpu=False, inputs_todo=10, units_todo=10)
    monkeypatch.setenv("RELIGHT_GENERATE_WORKER", "1")  # inside a worker: never nested
    assert resolve_workers(4, gpu=False, inputs_todo=1000, units_todo=10) == 1


def test_a_worker_s_progress_reaches_the_channel(photos_dir):
    from relight_stream.log import progress, set_progress_channel

    got = []
    set_progress_channel(got.append)
    try:
        bar = progress(total=4)
        bar.update(2)
        bar.set_postfix(kept=1, dropped=1, img_s="3.0")
        bar.close()
    finally:
        set_progress_channel(None)
    assert got == [(2, None, None), (0, 1, 1)]


def test_a_stage_that_cannot_load_in_the_workers_is_a_bad_run_exit_2(photos_dir, tmp_path, caplog):
    from fixtures_stages import NoModel

    out = tmp_path / "out"
    assert run_generate(_cfg([photos_dir], out, workers=2), RunConfig(seed=0), stages=[NoModel()]) == 2
    assert not list(out.glob("shard-*"))


def test_a_gpu_machine_counts_as_gpu_only_for_what_would_run_there(monkeypatch):
    import relight_stream.kernels.xp as X
    import relight_stream.pipeline.decode_dali as D
    from relight_stream.config import GeometryConfig
    from relight_stream.pipeline.workers import uses_gpu

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr(D, "dali_available", lambda: (True, "ok"))
    monkeypatch.setattr(X, "has_cupy", lambda: True)
    classical = GenerateConfig()
    assert uses_gpu(classical, RunConfig(device="auto"))  # DALI decodes on the GPU, the kernels follow
    assert not uses_gpu(classical, RunConfig(device="cpu"))
    assert not uses_gpu(GenerateConfig(decode=DecodeConfig(backend="pil")), RunConfig(device="auto"))
    monkeypatch.setattr(X, "has_cupy", lambda: False)  # a CUDA decode without CuPy: kernels on the host
    assert not uses_gpu(classical, RunConfig(device="cuda"))
    neural = GenerateConfig(geometry=GeometryConfig(backend="depth-anything"))
    assert uses_gpu(neural, RunConfig(device="auto"))  # the depth model runs on CUDA


def test_under_an_outer_launch_every_rank_starts_the_same_number_of_workers():
    # ranks r*N+i of W*N tile the plan only if N is the same on every rank: no per-rank caps, auto is 1
    assert resolve_workers(0, gpu=False, inputs_todo=10_000, units_todo=100, world=2) == 1
    assert resolve_workers(4, gpu=False, inputs_todo=10, units_todo=1, world=2) == 4
    assert resolve_workers(4, gpu=False, inputs_todo=10, units_todo=1, world=1) == 1


def test_workers_under_two_outer_ranks_write_the_one_process_bytes(photos_dir, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert run_generate(_cfg([photos_dir], ref, workers=1), RunConfig(seed=0), stages=[]) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    for r in (1, 0):  # two "nodes", each with 2 workers: ranks 2, 3 then 0, 1 of 4
        monkeypatch.setenv("RANK", str(r))
        assert run_generate(_cfg([photos_dir], out, workers=2), RunConfig(seed=0), stages=[]) == 0
    assert shard_outputs(out) == shard_outputs(ref)
    assert json.loads((out / "stats.json").read_text())["world"] == 4


def test_the_auto_count_budgets_memory_by_resolution_and_batch(monkeypatch):
    from relight_stream.pipeline.workers import worker_memory_mb

    small = worker_memory_mb(GenerateConfig(decode=DecodeConfig(resolution=512, batch_size=16)))
    large = worker_memory_mb(GenerateConfig(decode=DecodeConfig(resolution=1024, batch_size=16)))
    assert 1300 < small < 1500 and 2700 < large < 3000  # the measured peak RSS: 1.41 and 2.85 GB
    capped = GenerateConfig(decode=DecodeConfig(resolution=1024, batch_size=32), shard=ShardConfig(samples_per_shard=8))
    assert worker_memory_mb(capped) < large  # a batch never crosses a shard of 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(workers_mod, "available_memory_bytes", lambda: 4 * 2**30)
    # 4 GiB available: two 2 GB workers, one 3 GB worker
    assert resolve_workers(0, gpu=False, inputs_todo=10_000, units_todo=100, mb_per_worker=2000.0) == 2
    assert resolve_workers(0, gpu=False, inputs_todo=10_000, units_todo=100, mb_per_worker=3000.0) == 1


def test_available_memory_counts_reclaimable_cache_and_a_container_limit(tmp_path, monkeypatch):
    import builtins

    files = {"/proc/meminfo": "MemTotal:  16000000 kB\nMemFree:  1000 kB\nMemAvailable:  8388608 kB\n",
             "/sys/fs/cgroup/memory.max": "max\n", "/sys/fs/cgroup/memory.current": "123\n",
             "/sys/fs/cgroup/memory.stat": None}
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        if path in files:
            if files[path] is None:
                raise FileNotFoundError(path)
            target = tmp_path / path.strip("/").replace("/", "_")
            target.write_text(files[path])
            return real_open(target, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    assert workers_mod.available_memory_bytes() == 8 * 2**30  # MemAvailable, not MemFree
    files["/sys/fs/cgroup/memory.max"] = f"{3 * 2**30}\n"
    files["/sys/fs/cgroup/memory.current"] = f"{2**30}\n"
    assert workers_mod.available_memory_bytes() == 2 * 2**30  # the container's limit less its usage
    files["/sys/fs/cgroup/memory.current"] = f"{int(2.75 * 2**30)}\n"  # it has just read its dataset:
    files["/sys/fs/cgroup/memory.stat"] = f"anon 1000\ninactive_file {int(2.5 * 2**30)}\nactive_file 10\n"
    assert workers_mod.available_memory_bytes() == int(2.75 * 2**30)  # the cache is reclaimable, not used
    files["/proc/meminfo"] = None
    files["/sys/fs/cgroup/memory.max"] = None
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_AVPHYS_PAGES": 2**18, "SC_PAGE_SIZE": 4096}[name])
    assert workers_mod.available_memory_bytes() == 2**30  # no /proc: sysconf's free pages
