"""The filter's scores sink: every planned input gets exactly one row, even those the run never reached."""

from __future__ import annotations

import numpy as np

from relight_stream.pipeline.filter_scores import ScoresSink
from relight_stream.pipeline.sources import InputItem
from relight_stream.sample import SampleBatch


def test_sink_records_ok_dropped_and_unreached_inputs_with_embeddings(tmp_path):
    items = {k: InputItem(k, f"/data/{k}.jpg", size=10) for k in ("a", "b", "c", "d")}
    sink = ScoresSink(items, save_embeddings=True, columns=("photo_score", "clip_score"))
    batch = SampleBatch(keys=["b", "a", "c"], arrays={"clip_embed_BD": np.eye(3, 4, dtype=np.float32)})
    batch.meta[0]["scores"] = {"photo_score": 0.7, "clip_score": 0.2}
    batch.meta[1]["scores"] = {"photo_score": 0.4, "clip_score": 0.9}
    batch.meta[1].update(format="JPEG", orig_size=[640, 480])
    batch.drop(2, "clip:nonfinite_output", failed=True, detail="embedding")
    sink(batch)  # "d" never arrives (an interrupted run)
    df = sink.table()
    assert list(df["key"]) == ["a", "b", "c", "d"]
    assert list(df["status"]) == ["ok", "ok", "failed", "failed"]
    assert list(df["reason"].fillna("-")) == ["-", "-", "clip:nonfinite_output", "filter:not_processed"]
    assert df.loc[0, "width"] == 640 and df.loc[0, "format"] == "JPEG" and df.loc[2, "detail"] == "embedding"
    assert df.loc[1, "photo_score"] == 0.7 and np.isnan(df.loc[2, "clip_score"])
    sink.write_embeddings(tmp_path / "e.npy", list(df["key"]))
    emb = np.load(tmp_path / "e.npy")
    np.testing.assert_array_equal(emb[0], np.eye(3, 4)[1])  # row order follows the table, not the batch
    np.testing.assert_array_equal(emb[1], np.eye(3, 4)[0])
    assert np.isnan(emb[2:]).all()
