"""Checkpoint writing and resume: a crash during a save never costs the previous good checkpoint (RELIABILITY.md
E1, E2); what cannot be restored is said loudly or refused under strict resume (E4)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from relight_stream.train import checkpoint as ckpt


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    acc = Accelerator(cpu=True)
    yield acc
    AcceleratorState._reset_state()
    GradientState._reset_state()


def _state(step: int) -> dict:
    return {"step": step, "seed": 1, "world_size": 1, "num_workers": 0}


def test_crash_during_save_keeps_previous_checkpoint_and_resume_restores(accelerator, tmp_path, caplog):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model, opt = accelerator.prepare(model, opt)
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(accelerator, root, 1, train_state=_state(1), rank_state={"data_pos": {0: 5}}, total_limit=1)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(AttributeError, match="pickle"):  # the per-rank state cannot be pickled: the save dies half-way
        ckpt.save_checkpoint(accelerator, root, 2, train_state=_state(2), rank_state={"bad": lambda: 0},
                             total_limit=1)
    assert (root / ".tmp-checkpoint-2").is_dir()  # the interrupted save stays a temporary folder
    with caplog.at_level(logging.WARNING):
        assert ckpt.find_resume("latest", root) == root / "checkpoint-1"  # not pruned by the failed save
    assert ".tmp-checkpoint-2" in caplog.text

    train_state, rank_state = ckpt.load_checkpoint(accelerator, root / "checkpoint-1", world=1, num_workers=0)
    assert train_state["step"] == 1 and rank_state["data_pos"] == {0: 5}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())

    ckpt.clean_stale(root)
    ckpt.save_checkpoint(accelerator, root, 3, train_state=_state(3), rank_state={}, total_limit=1)
    assert [p.name for p in sorted(root.iterdir())] == ["checkpoint-3"]  # pruned only after the commit
    assert json.loads((root / "checkpoint-3" / "train_state.json").read_text())["step"] == 3


def test_resume_with_changed_workers_warns_or_refuses(accelerator, tmp_path, caplog):
    accelerator.prepare(torch.nn.Linear(2, 2))
    root = tmp_path / "checkpoints"
    path = ckpt.save_checkpoint(accelerator, root, 4, train_state=_state(4), rank_state={"data_pos": {0: 3}},
                                total_limit=None)
    with caplog.at_level(logging.WARNING):
        _, rank_state = ckpt.load_checkpoint(accelerator, path, world=1, num_workers=2)
    assert "num_workers 0 -> 2" in caplog.text and "data_pos" not in rank_state  # the data order restarts
    with pytest.raises(ValueError, match="strict resume"):
        ckpt.load_checkpoint(accelerator, path, world=1, num_workers=2, strict=True)


def _break_rng_file(path, how: str) -> None:
    f = path / "random_states_0.pkl"
    if how == "missing":
        f.unlink()
    elif how == "corrupt":
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # truncated mid-write
    else:  # readable pickle, but accelerate's weights_only load rejects it and only says so at INFO
        states = torch.load(f, weights_only=False)
        torch.save({**states, "extra": Path("not/an/allowed/global")}, f)


@pytest.mark.parametrize("how", ["missing", "corrupt", "rejected_by_accelerate"])
def test_missing_or_corrupt_rng_states_warn_drop_data_position_or_refuse(accelerator, tmp_path, caplog, how):
    """E4: a global RNG file that cannot be restored is a WARNING naming it (never a silent INFO line)."""
    accelerator.prepare(torch.nn.Linear(2, 2))
    path = ckpt.save_checkpoint(accelerator, tmp_path / "checkpoints", 4, train_state=_state(4),
                                rank_state={"data_pos": {0: 3}, "batches_done": 7}, total_limit=None)
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        _, rank_state = ckpt.load_checkpoint(accelerator, path, world=1, num_workers=0)
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]  # earlier tests may leave INFO enabled
    assert rank_state["data_pos"] == {0: 3} and not warned  # intact: an exact resume, nothing to say

    _break_rng_file(path, how)
    torch.rand(3)  # move the global RNG away from the saved state
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        _, rank_state = ckpt.load_checkpoint(accelerator, path, world=1, num_workers=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("random_states_0.pkl" in m and "not restored" in m for m in warnings), warnings
    assert "data_pos" not in rank_state and rank_state["batches_done"] == 7  # only the data order restarts
    with pytest.raises(ValueError, match=r"strict resume.*random_states_0\.pkl"):
        ckpt.load_checkpoint(accelerator, path, world=1, num_workers=0, strict=True)
