"""Training data stream (shard discovery, rank/worker split, bad samples) and checkpoint discovery."""

from __future__ import annotations

import io
import itertools
import logging

import numpy as np
import pytest
import torch
import webdataset as wds

from relight_stream.train import checkpoint as ckpt
from relight_stream.train.data import ShardStream, make_loader, resolve_shards, shard_format
from relight_stream.train.fixtures import write_synthetic_shards


def _keys(stream: ShardStream, n_batches: int, num_workers: int = 0) -> list[str]:
    loader = make_loader(stream, num_workers=num_workers)
    return [k for b in itertools.islice(loader, n_batches) for k in b["keys"]]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(out, num_samples=12, per_shard=3, resolution=16)
    return out


def test_resolve_shards_from_dir_brace_and_glob(shard_dir):
    by_dir = resolve_shards([str(shard_dir)])
    assert len(by_dir) == 4 and all(p.endswith(".tar") for p in by_dir)
    assert resolve_shards([f"{shard_dir}/shard-{{000000..000001}}.tar"]) == by_dir[:2]
    assert resolve_shards([f"{shard_dir}/shard-00000[23].tar", by_dir[0]]) == by_dir[2:] + by_dir[:1]
    assert shard_format(by_dir[0]) == "images"
    with pytest.raises(ValueError, match="no shards found"):
        resolve_shards([str(shard_dir / "nothing-*.tar")])


@pytest.mark.parametrize("world", [2, 6])  # 4 shards: split by shard (2 ranks) or by sample (6 ranks)
def test_ranks_read_disjoint_samples_and_cover_an_epoch(shard_dir, world):
    per_rank = 12 // world
    seen = [_keys(ShardStream(resolve_shards([str(shard_dir)]), batch_size=1, resolution=16, seed=0, rank=r,
                              world=world, shuffle_buffer=1), per_rank) for r in range(world)]
    flat = [k for ks in seen for k in ks]
    assert sorted(flat) == [f"s{i:05d}" for i in range(12)]  # every sample once across ranks in epoch 0


def test_stream_is_infinite_equal_batches_and_deterministic(shard_dir):
    shards = resolve_shards([str(shard_dir)])
    a = _keys(ShardStream(shards, batch_size=5, resolution=16, seed=1, rank=1, world=2), 6, num_workers=2)
    b = _keys(ShardStream(shards, batch_size=5, resolution=16, seed=1, rank=1, world=2), 6, num_workers=2)
    assert len(a) == 30 and a == b  # 6 full batches from a rank that owns only 6 samples per epoch
    c = _keys(ShardStream(shards, batch_size=5, resolution=16, seed=2, rank=1, world=2), 6, num_workers=2)
    assert c != a


def test_resume_position_skips_consumed_records(shard_dir):
    shards = resolve_shards([str(shard_dir)])
    full = list(itertools.islice(make_loader(ShardStream(shards, batch_size=2, resolution=16, seed=0),
                                             num_workers=2), 6))
    pos = {b["worker"]: b["raw_pos"] for b in full[:3]}
    rest = list(itertools.islice(make_loader(ShardStream(shards, batch_size=2, resolution=16, seed=0, start=pos,
                                                         start_batch=3), num_workers=2), 3))
    assert [b["keys"] for b in rest] == [b["keys"] for b in full[3:]]
    assert torch.equal(rest[0]["input"], full[3]["input"])


def test_bad_samples_are_dropped_not_raised(tmp_path, caplog):
    good = write_synthetic_shards(tmp_path / "src", num_samples=2, per_shard=2, resolution=16)[0]
    samples = list(wds.WebDataset(good, shardshuffle=False, empty_check=False))
    with wds.TarWriter(str(tmp_path / "shard-000000.tar")) as sink:
        sink.write({"__key__": "nojpeg", "input.jpg": samples[0]["input.jpg"], "instruction.txt": b"x"})
        sink.write({"__key__": "corrupt", "input.jpg": b"\xff\xd8garbage", "target.jpg": b"\xff\xd8",
                    "instruction.txt": b"x"})
        for s in samples:
            sink.write({k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"})
    with caplog.at_level(logging.WARNING):
        keys = _keys(ShardStream([str(tmp_path / "shard-000000.tar")], batch_size=2, resolution=16, seed=0,
                                 shuffle_buffer=1), 2)
    assert keys == ["s00000", "s00001"] * 2
    assert "train:missing_member" in caplog.text and "train:decode_error" in caplog.text


def test_images_are_uint8_b3hw_at_resolution(shard_dir):
    batch = next(iter(make_loader(ShardStream(resolve_shards([str(shard_dir)]), batch_size=3, resolution=8, seed=0),
                                  num_workers=0)))
    assert batch["input"].shape == (3, 3, 8, 8) and batch["input"].dtype == torch.uint8
    assert len(batch["instruction"]) == 3 and all(isinstance(t, str) and t for t in batch["instruction"])


def _fake_ckpt(root, step, complete=True):
    p = root / f"checkpoint-{step}"
    p.mkdir(parents=True)
    if complete:
        (p / ckpt.MARKER).write_text("ok")
    return p


def test_find_resume_picks_newest_complete_checkpoint(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    assert ckpt.find_resume("latest", root) is None  # none yet: a fresh start
    _fake_ckpt(root, 10)
    newest = _fake_ckpt(root, 20)
    _fake_ckpt(root, 30, complete=False)  # killed during save_state
    (root / ".tmp-checkpoint-40").mkdir()
    with caplog.at_level(logging.WARNING):
        assert ckpt.find_resume("latest", root) == newest
    assert "checkpoint-30" in caplog.text
    with pytest.raises(ValueError, match="no such checkpoint"):
        ckpt.find_resume(str(root / "checkpoint-99"), root)
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.find_resume(str(root / "checkpoint-30"), root)
    ckpt.clean_stale(root)
    assert not (root / ".tmp-checkpoint-40").exists()


def test_fixture_consistency_inputs_add_in_linear_light(tmp_path):
    from PIL import Image

    from relight_stream.kernels.color import srgb_to_linear

    path = write_synthetic_shards(tmp_path, num_samples=1, per_shard=1, resolution=32, consistency=True)[0]
    s = next(iter(wds.WebDataset(path, shardshuffle=False, empty_check=False)))
    lin = {k: srgb_to_linear(np.asarray(Image.open(io.BytesIO(s[f"input_{k}.jpg"])))) for k in ("l1", "l2", "l12")}
    centre = (slice(12, 20), slice(12, 20))  # inside the subject mask, away from clipping
    total = lin["l1"][centre] + lin["l2"][centre] - lin["l12"][centre]
    assert abs(float(np.median(total))) < 0.05
