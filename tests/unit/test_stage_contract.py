"""The stage contract: reads/writes checked at build time; per-sample failures recorded, not raised."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from relight_stream.log import DropCounter
from relight_stream.pipeline.stage import Stage, check_pipeline, describe_pipeline, per_sample
from relight_stream.sample import SampleBatch


class Square(Stage):
    name = "square"
    reads = ("x_B",)
    writes = ("y_B",)

    def process(self, batch):
        batch["y_B"] = np.zeros(len(batch))

        def one(i):
            if batch["x_B"][i] < 0:
                raise ArithmeticError("negative")
            batch["y_B"][i] = np.sqrt(batch["x_B"][i]) if batch["x_B"][i] != 4 else np.nan

        per_sample(self, batch, one, check=("y_B",))
        return batch


def test_check_pipeline_finds_missing_reads():
    check_pipeline(("x_B",), [Square()])
    with pytest.raises(ValueError, match="square.*reads \\['x_B'\\]"):
        check_pipeline(("rgb_BHW3",), [Square()])
    text = describe_pipeline("folder", ("x_B",), [Square()])
    assert "square" in text and "x_B -> writes y_B" in text


def test_per_sample_records_errors_and_nonfinite():
    batch = SampleBatch(keys=["a", "b", "c", "d"])
    batch["x_B"] = np.array([1.0, -1.0, 4.0, 9.0])
    batch.drop(3, "decode:truncated")
    Square().process(batch)
    assert [batch.status(i) for i in range(4)] == ["ok", "failed", "failed", "skipped"]
    assert batch.drop_reason == [None, "square:error", "square:nonfinite_output", "decode:truncated"]
    assert "negative" in batch.meta[1]["drop_detail"]
    assert batch["y_B"][3] == 0  # a dropped sample is not processed
    batch.drop(3, "later:reason")
    assert batch.drop_reason[3] == "decode:truncated"  # the first reason wins
    assert batch.num_kept == 1


def test_parallel_per_sample_records_in_index_order(monkeypatch):
    import relight_stream.pipeline.stage as stage_mod

    monkeypatch.setattr(stage_mod, "NUM_THREADS", 3)
    monkeypatch.setattr(stage_mod, "_POOL", None)
    batch = SampleBatch(keys=[f"k{i}" for i in range(6)])
    batch["x_B"] = np.array([1.0, -1.0, 4.0, 9.0, -2.0, 16.0])
    batch.drop(3, "decode:truncated")

    class ParallelSquare(Square):
        def process(self, batch):
            batch["y_B"] = np.zeros(len(batch))

            def one(i):
                if batch["x_B"][i] < 0:
                    raise ArithmeticError(f"negative {i}")
                batch["y_B"][i] = np.nan if batch["x_B"][i] == 4 else np.sqrt(batch["x_B"][i])

            per_sample(self, batch, one, check=("y_B",), parallel=True)
            return batch

    ParallelSquare().process(batch)
    assert stage_mod._POOL is not None  # the pool was used
    assert batch.drop_reason == [None, "square:error", "square:nonfinite_output", "decode:truncated", "square:error",
                                 None]
    assert "negative 4" in batch.meta[4]["drop_detail"]
    assert batch["y_B"].tolist()[5] == 4.0 and batch["y_B"][3] == 0


def test_drop_counter_rate_limits(caplog):
    counter = DropCounter(every=10, logger=logging.getLogger("t"))
    with caplog.at_level(logging.WARNING, logger="t"):
        for i in range(25):
            counter.record("decode:truncated", f"k{i}")
        counter.record("segment:empty_mask", "z")
    assert counter.as_dict() == {"decode:truncated": 25, "segment:empty_mask": 1}
    assert len(caplog.records) == 4  # 1st, 10th, 20th truncated + 1st empty_mask
