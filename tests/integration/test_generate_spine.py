"""``generate`` as decode → shard on its own: records, resume, determinism, ranks, signals (RELIABILITY.md B/C/F)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fixtures_images as fx
from fixtures_images import shard_outputs as _outputs
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig
from relight_stream.pipeline import shard as S
from relight_stream.pipeline.recipes import run_generate
from relight_stream.pipeline.stage import Stage
from relight_stream.pipeline.verify import verify_dir

DEC = {"resolution": 32, "min_size": 16, "batch_size": 2, "backend": "pil", "num_workers": 2}
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, sys, time
from relight_stream.config import DecodeConfig, GenerateConfig, RunConfig, ShardConfig
from relight_stream.log import setup_logging
from relight_stream.pipeline import shard as S
from relight_stream.pipeline.recipes import run_generate
from relight_stream.pipeline.stage import Stage

class Hold(Stage):  # holds one batch of shard-000001 for a["hold"] s, after touching a["marker"]
    name = "hold"
    def process(self, batch):
        if batch.keys[0] == a["hold_key"]:
            open(a["marker"], "w").close()
            time.sleep(a["hold"])
        return batch

a = json.loads(sys.argv[1])
setup_logging("WARNING")
cfg = GenerateConfig(inputs=a["inputs"], out=a["out"], decode=DecodeConfig(**a["dec"]),
                     shard=ShardConfig(samples_per_shard=a["sps"]))
sys.exit(run_generate(cfg, RunConfig(seed=0), stages=[Hold()] if a["hold"] else []))
"""


def _cfg(inputs, out, sps: int = 4, **kw) -> GenerateConfig:
    shard = ShardConfig(samples_per_shard=sps, **kw.pop("shard", {}))
    return GenerateConfig(inputs=[str(i) for i in inputs], out=str(out), decode=DecodeConfig(**DEC), shard=shard, **kw)


def _gen(inputs, out, *, seed: int = 0, sps: int = 4, stages=None, **kw) -> int:
    return run_generate(_cfg(inputs, out, sps, **kw), RunConfig(seed=seed), stages=[] if stages is None else stages)


def _spawn(inputs, out, *, hold: float = 0.0, marker: Path | None = None, sps: int = 4, hold_at: int = 1,
           env: dict | None = None) -> subprocess.Popen:
    """``generate`` in a subprocess; with ``hold``, batch ``hold_at`` of shard-000001 waits ``hold`` s in a stage
    after creating ``marker`` (so a signal lands mid-shard, deterministically)."""
    hold_key = None
    if hold:
        from relight_stream.pipeline.sources import make_plan

        unit = make_plan([str(i) for i in inputs], samples_per_shard=sps).units[1]
        hold_key = unit.items[hold_at * DEC["batch_size"]].key
    arg = json.dumps({"inputs": [str(i) for i in inputs], "out": str(out), "dec": DEC, "sps": sps, "hold": hold,
                      "hold_key": hold_key, "marker": str(marker)})
    return subprocess.Popen([sys.executable, "-c", SCRIPT, arg], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(marker: Path, p: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not marker.exists():
        assert p.poll() is None, p.stdout.read().decode()
        assert time.time() < deadline, "the subprocess never reached the marker"
        time.sleep(0.02)


def test_generate_writes_verified_shards_records_config_and_stats(photos_dir, tmp_path):
    out = tmp_path / "out"
    assert _gen([photos_dir], out) == 0
    assert sorted(_outputs(out)) == [f"shard-00000{k}.{e}" for k in range(3) for e in ("json", "tar")]
    recs = [json.loads((out / f"shard-00000{k}.json").read_text()) for k in range(3)]
    rows = [r for rec in recs for r in rec["rows"]]
    assert len(rows) == 12 and [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    assert {r["key"]: r["reason"] for r in rows if r["status"] != "ok"} == {
        "00000/empty": "decode:empty_file", "00000/fake": "decode:unidentified"}
    for rec in recs:
        assert sum(rec["counts"].values()) == rec["num_inputs"] and rec["fields"] == ["meta.json", "target.jpg"]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["ok"], stats["skipped"], stats["failed"], stats["exit_code"]) == (10, 2, 0, 0)
    assert stats["drops"] == {"decode:empty_file": 1, "decode:unidentified": 1} and stats["samples_per_s"] > 0
    assert "resolution: 32" in (out / "config.yaml").read_text()
    problems, summary = verify_dir(str(out))
    assert problems == [] and summary["ok"] == 10
    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False).decode("rgb8")))
    assert sample["target.jpg"].shape == (32, 32, 3) and sample["meta.json"]["key"] == sample["__key__"]


def test_c5_c6_rerun_skips_refuses_changes_and_same_seed_gives_identical_bytes(photos_dir, tmp_path, caplog):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _gen([photos_dir], a) == 0 and _gen([photos_dir], b) == 0
    assert _outputs(a) == _outputs(b)  # C6: other folder, same bytes
    before = _outputs(a)
    with caplog.at_level("INFO"):
        assert _gen([photos_dir], a) == 0  # C5: complete output -> nothing to do, bytes untouched
    assert "0 to do, 3 already done" in caplog.text and _outputs(a) == before
    with pytest.raises(ValueError, match="config .*changed.*--overwrite"):
        _gen([photos_dir], a, sps=5)
    with pytest.raises(ValueError, match="config .*changed"):
        _gen([photos_dir], a, seed=1)
    assert _gen([photos_dir], a, sps=5, shard={"overwrite": True}) == 0
    assert len(_outputs(a)) == 6 and verify_dir(str(a))[0] == []
    # another seed changes only seed-dependent members (the spine has no random stage: meta.json only)
    assert _gen([photos_dir], c, seed=1) == 0
    import tarfile

    with tarfile.open(b / "shard-000000.tar") as t1, tarfile.open(c / "shard-000000.tar") as t2:
        m1 = {ti.name: t1.extractfile(ti).read() for ti in t1}
        m2 = {ti.name: t2.extractfile(ti).read() for ti in t2}
    assert m1.keys() == m2.keys()
    assert all(m1[k] == m2[k] for k in m1 if k.endswith(".jpg"))
    assert all(m1[k] != m2[k] for k in m1 if k.endswith(".json"))


def test_b8_an_input_replaced_between_runs_is_detected(photos_dir, tmp_path):
    out = tmp_path / "out"
    assert _gen([photos_dir], out) == 0
    p = photos_dir / "00000" / "00001.png"
    p.write_bytes(fx.png_bytes(fx.noise(64, 64, seed=99)))
    os.utime(p, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with pytest.raises(ValueError, match="input files changed"):
        _gen([photos_dir], out)


def test_b8_a_copy_that_keeps_size_and_mtime_is_still_detected(photos_dir, tmp_path):
    out = tmp_path / "out"
    assert _gen([photos_dir], out) == 0
    p = photos_dir / "00000" / "00001.png"
    st = p.stat()
    other = bytearray(p.read_bytes())
    other[-20] ^= 0xFF  # same size, other bytes: what `cp -p` or `rsync -t` of another file leaves behind
    p.write_bytes(bytes(other))
    while p.stat().st_ctime_ns == st.st_ctime_ns:  # file systems with coarse timestamps: wait for a new tick
        time.sleep(0.05)
        p.write_bytes(bytes(other))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored; only the ctime tells
    assert (p.stat().st_size, p.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(ValueError, match="input files changed"):
        _gen([photos_dir], out)


def test_c7_two_ranks_killed_then_three_ranks_equal_one_rank(photos_dir, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _gen([photos_dir], ref, sps=2) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert _gen([photos_dir], out, sps=2) == 0  # rank 1 "died" before writing anything
    (out / "shard-000002.json").unlink()  # and rank 0's last shard lost its record (orphan tar)
    monkeypatch.setenv("WORLD_SIZE", "3")
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        assert _gen([photos_dir], out, sps=2) == 0
    assert _outputs(out) == _outputs(ref)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["world"] == 3 and len(stats["ranks"]) == 3


def test_two_processes_equal_one_process(photos_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _gen([photos_dir], ref, sps=2) == 0
    procs = [_spawn([photos_dir], out, sps=2, env={"RANK": str(r), "WORLD_SIZE": "2"}) for r in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stdout.read().decode()
    assert _outputs(out) == _outputs(ref)


def test_c1_sigkill_mid_shard_then_resume_equals_an_uninterrupted_run(photos_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert _gen([photos_dir], ref) == 0
    p = _spawn([photos_dir], out, hold=60, marker=tmp_path / "inside")
    _wait_for(tmp_path / "inside", p)
    deadline = time.time() + 60  # the sink thread writes one batch behind the stages: let it commit shard 0
    while not ((out / "shard-000000.json").exists() and list(out.glob("shard-000001.tar.tmp-*"))):
        assert p.poll() is None and time.time() < deadline, "the sink never reached shard-000001"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)  # inside shard-000001, its first batch already in the temp tar
    p.wait(timeout=10)
    assert (out / "shard-000000.json").exists() and list(out.glob("shard-000001.tar.tmp-*"))
    for rec in out.glob("shard-*.json"):  # nothing committed without its tar
        assert (out / rec.name.replace(".json", ".tar")).exists()
    assert _gen([photos_dir], out) == 0
    assert _outputs(out) == _outputs(ref)
    assert not list(out.glob("*.tmp-*")) and verify_dir(str(out))[0] == []


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_c2_sigint_or_sigterm_discards_the_open_shard_and_exits_130_or_143(photos_dir, tmp_path, sig, code):
    out = tmp_path / "out"
    p = _spawn([photos_dir], out, hold=0.5, marker=tmp_path / "inside", hold_at=0)
    _wait_for(tmp_path / "inside", p)
    p.send_signal(sig)
    assert p.wait(timeout=20) == code, p.stdout.read().decode()
    stats = json.loads((out / "stats.json").read_text())
    assert stats["interrupted_by"] == sig.name and stats["exit_code"] == code
    # the signal came during shard-000001's first batch: that shard is discarded (its temp file removed)
    assert not list(out.glob("*.tmp-*"))
    assert sorted(x.name for x in out.glob("shard-*.tar")) == ["shard-000000.tar"] == sorted(
        x.name.replace(".json", ".tar") for x in out.glob("shard-*.json"))


def test_c10_a_second_run_on_the_same_folder_fails_fast_on_run_lock(photos_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from relight_stream.pipeline.shard import RunLock\n"
                               f"with RunLock({str(out)!r}, 0):\n print('locked', flush=True); sys.stdin.read()"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(ValueError, match="another run is writing"):
            _gen([photos_dir], out)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (out / f"shard-000001.tar.tmp-{S._tmp_suffix().split('-')[1]}-{dead.pid}").write_bytes(b"stale")
    assert _gen([photos_dir], out) == 0 and not list(out.glob("*.tmp-*"))


def test_f1_dry_run_prints_the_plan_and_writes_nothing(photos_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _gen([photos_dir], out, dry_run=True) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    for needle in ("inputs:       12", "shards:       3", "to do 3", "members:      meta.json, target.jpg",
                   "disk (est.)"):
        assert needle in text
    assert _gen([photos_dir], out) == 0
    listing = sorted(os.listdir(out))
    assert _gen([photos_dir], out, dry_run=True) == 0
    assert "to skip (done) 3" in capsys.readouterr().out and sorted(os.listdir(out)) == listing


class Boom(Stage):
    name = "boom"

    def process(self, batch):
        if "jpg/00000/00001" in batch.keys:
            raise RuntimeError("stage exploded")
        return batch


def test_f2_a_failed_shard_gives_nonzero_exit_with_stats_and_the_rest_committed(photos_dir, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert _gen([photos_dir], out, stages=[Boom()]) == 1
    stats = json.loads((out / "stats.json").read_text())
    assert stats["failed_shards"] == ["shard-000002"] and stats["shards_written"] == 2 and stats["exit_code"] == 1
    assert (stats["ok"], stats["skipped"]) == (6, 2) and stats["drops"] == {"decode:empty_file": 1,
                                                                            "decode:unidentified": 1}
    assert not (out / "shard-000002.tar").exists() and not list(out.glob("*.tmp-*"))
    assert "10 ok" not in caplog.records[-1].getMessage() and "exit 1" in caplog.records[-1].getMessage()
    assert _gen([photos_dir], out) == 0 and len(_outputs(out)) == 6  # the next run retries it


def test_b1_truncated_input_tar_marks_the_shard_and_fails_unless_allowed(tmp_path):
    members = []
    for i in range(8):
        members += [(f"{i:06d}.jpg", fx.jpeg_bytes(fx.noise(64, 64, seed=i)))]
    data = open(fx.write_tar(tmp_path / "full.tar", members), "rb").read()
    (tmp_path / "cut.tar").write_bytes(data[:10240])
    assert _gen([tmp_path / "cut.tar"], tmp_path / "o1", sps=100) == 1
    rec = json.loads((tmp_path / "o1" / "shard-000000.json").read_text())
    assert rec["partial_inputs"] == [str(tmp_path / "cut.tar")] and 0 < rec["counts"]["ok"] < 8
    assert _gen([tmp_path / "cut.tar"], tmp_path / "o2", sps=100, shard={"skip_bad_input_shards": True}) == 0


def test_fast_dev_run_writes_one_batch_of_the_first_shard(photos_dir, tmp_path):
    out = tmp_path / "out"
    assert _gen([photos_dir], out, fast_dev_run=True) == 0
    rec = json.loads((out / "shard-000000.json").read_text())
    assert rec["num_inputs"] == DEC["batch_size"] and len(_outputs(out)) == 2


def test_f2_a_bad_config_key_names_the_closest_one_and_a_stage_that_cannot_load_stops_the_run(photos_dir, tmp_path):
    from click.testing import CliRunner

    from relight_stream.cli import cli

    bad = tmp_path / "run.yaml"
    bad.write_text("decode:\n  resolutoin: 64\n")
    res = CliRunner().invoke(cli, ["generate", str(photos_dir), "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert res.exit_code == 2 and "resolutoin" in res.output and "'resolution'" in res.output
    assert not (tmp_path / "o").exists()

    class NoModel(Stage):
        name = "nomodel"

        def setup(self):
            raise OSError("weights not found")

    from relight_stream.pipeline.runner import StageSetupError

    with pytest.raises(StageSetupError, match="nomodel"):
        _gen([photos_dir], tmp_path / "o2", stages=[NoModel()])
    assert not list((tmp_path / "o2").glob("shard-*"))


def test_c4_disk_full_from_the_cli_is_a_clear_message_and_commits_nothing(photos_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from fixtures_faults import tiny_disk_open

    from relight_stream.cli import cli
    from relight_stream.pipeline import shard as S

    monkeypatch.setattr(S, "open", tiny_disk_open, raising=False)  # a file system with 4 KiB free
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["--device", "cpu", "generate", str(photos_dir), "--out", str(out), "--resolution",
                                   "64", "--workers", "1"])
    assert res.exit_code == 1, res.output
    assert "disk full at" in res.output and "shard-000000.tar" in res.output and "Traceback" not in res.output
    assert not list(out.glob("shard-*.tar")) and not list(out.glob("*.tmp-*"))


def test_c4_disk_full_in_worker_processes_is_the_same_message_and_exit(photos_dir, tmp_path, monkeypatch, capfd):
    from click.testing import CliRunner

    from relight_stream.cli import cli

    # the spawned workers start from scratch: a sitecustomize on their path gives them the 4 KiB disk too
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import relight_stream.pipeline.shard as S\n"
                                           "from fixtures_faults import tiny_disk_open\nS.open = tiny_disk_open\n")
    tests_dir = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), str(tests_dir), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["--device", "cpu", "generate", str(photos_dir), "--out", str(out), "--resolution",
                                   "64", "--samples-per-shard", "4", "--workers", "2"])
    assert res.exit_code == 1, res.output
    err = capfd.readouterr().err  # the workers log to the inherited stderr
    assert "disk full at" in err and "rerun to resume" in err and "Traceback" not in err + res.output
    assert not list(out.glob("shard-*.tar")) and not list(out.glob("*.tmp-*"))
