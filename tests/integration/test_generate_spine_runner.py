"""The streaming runner and the decode iterator: pipeline check, teardown, drop counting, bounded look-ahead."""

from __future__ import annotations

import time

import numpy as np
import pytest

import fixtures_images as fx
from relight_stream.config import DecodeConfig
from relight_stream.pipeline.decode import decode_batches
from relight_stream.pipeline.runner import prefetch, run_stages
from relight_stream.pipeline.sources import discover
from relight_stream.pipeline.stage import Stage
from relight_stream.sample import SampleBatch


class Recorder(Stage):
    name = "rec"
    reads = ("rgb_BHW3",)
    writes = ("mean_B",)

    def __init__(self) -> None:
        self.events: list[str] = []

    def setup(self) -> None:
        self.events.append("setup")

    def process(self, batch: SampleBatch) -> SampleBatch:
        batch["mean_B"] = np.asarray(batch["rgb_BHW3"]).mean(axis=(1, 2, 3))
        for i in batch.kept():
            if batch.keys[i].endswith("3"):
                batch.drop(i, "rec:odd", failed=True)
        return batch

    def teardown(self) -> None:
        self.events.append("teardown")


def _batches(n: int, bs: int = 2):
    for s in range(0, n, bs):
        b = SampleBatch(keys=[f"k{i}" for i in range(s, min(n, s + bs))])
        b["rgb_BHW3"] = np.zeros((len(b), 4, 4, 3), np.uint8)
        if s == 0:
            b.drop(0, "decode:truncated")
        yield b


def test_run_stages_counts_every_sample_and_tears_down():
    st, seen = Recorder(), []
    stats = run_stages(_batches(7), [st], seen.append)
    assert st.events == ["setup", "teardown"] and sum(len(b) for b in seen) == 7
    assert (stats.ok, stats.skipped, stats.failed) == (5, 1, 1) and stats.inputs == 7
    assert stats.drops == {"decode:truncated": 1, "rec:odd": 1}
    d = stats.as_dict()
    assert d["stage_ms_per_batch"].keys() == {"rec"} and d["samples_per_s"] > 0


def test_pipeline_errors_come_before_setup_and_exceptions_still_tear_down():
    class Needs(Stage):
        name, reads = "needs", ("depth_BHW",)

    st = Recorder()
    with pytest.raises(ValueError, match="'needs' reads \\['depth_BHW'\\]"):
        run_stages(_batches(2), [st, Needs()], lambda b: None)
    assert st.events == []

    def bad_sink(b):
        raise RuntimeError("sink broke")

    with pytest.raises(RuntimeError, match="sink broke"):
        run_stages(_batches(4), [st], bad_sink)
    assert st.events == ["setup", "teardown"]


def test_should_stop_stops_between_batches():
    seen = []
    stats = run_stages(_batches(10), [], seen.append, should_stop=lambda: len(seen) >= 2)
    assert stats.interrupted and len(seen) == 2


def test_prefetch_is_bounded_and_reraises_source_errors():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    it = prefetch(source(), depth=3)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(pulled) <= 3 + 2  # queue depth + the item in hand + the one blocked on put
    it.close()

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(broken()))


def test_decode_batches_pulls_inputs_lazily(tmp_path):
    fx.write_tree(tmp_path, {f"{i:03d}.png": fx.png_bytes(fx.noise(32, 32, seed=i)) for i in range(40)})
    items, _, _ = discover([str(tmp_path)])
    pulled = []

    def lazy():
        for it in items:
            pulled.append(it.key)
            yield it

    gen = decode_batches(lazy(), DecodeConfig(resolution=32, min_size=16, batch_size=4, backend="pil"), prefetch=2)
    first = next(gen)
    assert len(first) == 4 and len(pulled) <= 4 * 3  # the batch in hand + `prefetch` batches in flight
    assert sum(len(b) for b in gen) == 36 and len(pulled) == 40


def test_a_sink_thread_sees_every_batch_in_order_and_overlaps_the_stages():
    import threading

    second_batch_started = threading.Event()

    class Mark(Stage):
        name = "mark"

        def process(self, batch):
            if batch.keys[0] == "k2":
                second_batch_started.set()
            return batch

    seen, overlapped = [], []

    def sink(b):
        if b.keys[0] == "k0":  # a synchronous sink would wait here in vain: batch k2 could not start
            overlapped.append(second_batch_started.wait(timeout=10))
        seen.append(b.keys[0])

    stats = run_stages(_batches(16), [Mark()], sink, sink_depth=1)
    assert overlapped == [True], "the stages did not run while the sink was writing"
    assert seen == [f"k{i}" for i in range(0, 16, 2)] and stats.ok + stats.skipped + stats.failed == 16
    assert stats.sink_s > 0 and stats.batches == 8  # the sink thread's busy time is reported


def test_a_sink_thread_writes_every_batch_before_a_stage_error_and_reraises_a_sink_error():
    class BoomAt(Stage):
        name = "boom"

        def process(self, batch):
            if batch.keys[0] == "k6":
                raise RuntimeError("stage exploded")
            return batch

    seen = []

    def slow_sink(b):
        time.sleep(0.05)  # still writing k4 when k6 fails
        seen.append(b.keys[0])

    with pytest.raises(RuntimeError, match="stage exploded"):
        run_stages(_batches(10), [BoomAt()], slow_sink, sink_depth=2)
    assert seen == ["k0", "k2", "k4"]

    calls = []

    def bad_sink(b):
        calls.append(b.keys[0])
        raise OSError("disk full")

    st = Recorder()
    with pytest.raises(OSError, match="disk full"):
        run_stages(_batches(20), [st], bad_sink, sink_depth=1)
    assert calls == ["k0"] and st.events == ["setup", "teardown"]  # nothing written after the failure


def test_a_stop_with_a_sink_thread_still_writes_the_batches_handed_over():
    seen = []
    stats = run_stages(_batches(20), [], lambda b: seen.append(b.keys[0]), sink_depth=1,
                       should_stop=lambda: len(seen) >= 2)
    assert stats.interrupted and 2 <= len(seen) < 10
    assert seen == [f"k{i}" for i in range(0, 2 * len(seen), 2)] and stats.batches == len(seen)
