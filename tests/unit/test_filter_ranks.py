"""Multi-rank filter plumbing and the CPU thread default: parts of another run never merge; threads per rank."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from relight_stream.log import rank_device
from relight_stream.pipeline.filter_ranks import wait_and_merge
from relight_stream.pipeline.filter_stages import configure_threads
from relight_stream.pipeline.selection import write_scores


def test_merge_waits_only_for_parts_of_this_run(tmp_path):
    df = pd.DataFrame({"key": ["a"], "path": ["a.jpg"], "status": ["ok"]})
    write_scores(tmp_path / "scores-rank000.parquet", df, {"part": {"fingerprint": "this", "run": {}}})
    write_scores(tmp_path / "scores-rank001.parquet", df, {"part": {"fingerprint": "an-older-run", "run": {}}})
    with pytest.raises(TimeoutError, match="scores-rank001"):
        wait_and_merge(tmp_path, 2, "this", timeout_s=0.2)
    write_scores(tmp_path / "scores-rank001.parquet", df.assign(key=["b"]), {"part": {"fingerprint": "this",
                                                                                      "run": {"ok": 1}}})
    tables, embs, metas = wait_and_merge(tmp_path, 2, "this", timeout_s=5)
    assert [list(t["key"]) for t in tables] == [["a"], ["b"]] and embs == [None, None] and metas[1]["run"] == {"ok": 1}
    with pytest.raises(KeyboardInterrupt):
        wait_and_merge(tmp_path, 3, "this", timeout_s=5, should_stop=lambda: True)


def test_cpu_threads_leave_cores_to_decode_unless_the_user_chose(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        cores = len(os.sched_getaffinity(0))
        assert configure_threads("cpu", decode_workers=1) == max(1, cores - 1) == torch.get_num_threads()
        assert configure_threads("cpu", decode_workers=cores + 4) == 1 == torch.get_num_threads()
        assert configure_threads("cpu", decode_workers=1, asked=3) == 3 == torch.get_num_threads()
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # every core has its own rank: one thread each
        assert configure_threads("cpu", decode_workers=0) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert configure_threads("cpu", decode_workers=1) is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_each_local_rank_gets_its_own_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert rank_device("cpu") == "cpu" and rank_device("cuda:0") == "cuda:0"  # an explicit device is kept
    if torch.cuda.is_available():
        assert rank_device("auto") == f"cuda:{1 % torch.cuda.device_count()}"
    else:
        assert rank_device("auto") == "auto"
    monkeypatch.delenv("LOCAL_RANK")
    assert rank_device("auto") == "auto"
