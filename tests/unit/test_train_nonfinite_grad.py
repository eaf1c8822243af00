"""A NaN gradient with a finite loss: the grad-norm branch of the train loop skips and counts it (RELIABILITY.md E5).

The NaN-loss path is covered by ``tests/integration/test_train_e2e.py``; here the loss stays finite and only the
gradients of one UNet parameter are made NaN (a tensor hook on it), for chosen optimizer steps.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from safetensors.torch import load_file

from relight_stream.config import RunConfig, TrainConfig
from relight_stream.train import checkpoint as ckpt
from relight_stream.train import loop
from relight_stream.train.fixtures import write_synthetic_shards
from relight_stream.train.setup import EXIT_NONFINITE, TrainOutOfMemory

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), num_samples=8, per_shard=8, resolution=32)


def _nan_grads_at(monkeypatch, bad_steps: set[int]) -> list[bool]:
    """Make one trainable UNet parameter's gradient NaN at the 1-based backward passes in ``bad_steps``.

    Returns a list that grows by one entry per backward pass (proof that the hook ran).
    """
    real = loop.build_setup
    seen: list[bool] = []

    def build_setup(*args, **kwargs):
        s = real(*args, **kwargs)

        def hook(grad: torch.Tensor) -> torch.Tensor:
            seen.append(True)
            return torch.full_like(grad, float("nan")) if len(seen) in bad_steps else grad

        s.params[0].register_hook(hook)
        return s

    monkeypatch.setattr(loop, "build_setup", build_setup)
    return seen


def _cfg(shards, out, **kw) -> TrainConfig:
    base = dict(shards=list(shards), out=str(out), resolution=32, batch_size=2, lr=1e-3, mixed_precision="no",
                num_workers=0, log_every=1, checkpoint_every=1, checkpoints_total_limit=None, validate_every=0)
    return TrainConfig(**{**base, **kw})


def test_nan_gradient_step_is_skipped_counted_and_never_checkpointed(shards, tmp_path, monkeypatch, caplog):
    passes = _nan_grads_at(monkeypatch, {3})
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert loop.run_train(_cfg(shards, out, max_steps=5), RunConfig(seed=0)) == 0
    assert len(passes) == 5  # the hook really ran once per step
    assert [int(m) for m in re.findall(r"step (\d+): non-finite", caplog.text)] == [3]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["nonfinite_total"] == 1 and stats["step"] == 5
    losses = stats["losses"]  # one per step; the skipped step has no loss to average, the others are finite
    assert all(torch.isfinite(torch.tensor(x)) for i, x in enumerate(losses) if i != 2), losses
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")[0]] == [1, 2, 4, 5]
    # the NaN gradient never reached the optimizer: weights (and so the next steps' losses) stay finite
    weights = load_file(out / "checkpoints" / "checkpoint-5" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_consecutive_nan_gradients_abort_without_checkpoint(shards, tmp_path, monkeypatch):
    _nan_grads_at(monkeypatch, {2, 3, 4, 5, 6})
    out = tmp_path / "abort"
    cfg = _cfg(shards, out, max_steps=6, checkpoint_every=2, max_nonfinite_steps=2)
    assert loop.run_train(cfg, RunConfig(seed=0)) == EXIT_NONFINITE
    stats = json.loads((out / "stats.json").read_text())
    assert stats["step"] == 3 and stats["nonfinite_total"] == 2
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")[0]] == []  # step 2 was inside the streak
    assert not (out / "final").exists()


def test_fp16_overflows_are_calibration_until_the_scale_falls_below_one() -> None:
    from relight_stream.train.step import fp16_outcome

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=1000)

    def step(grad_value: float) -> tuple[bool, bool]:
        before = float(scaler.get_scale())
        scaler.scale((w * grad_value).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return fp16_outcome(scaler, before)

    assert step(1.0) == (False, False)  # a finite step is taken
    assert step(float("inf")) == (True, False)  # overflow at scale 4 -> 2: the scaler's calibration
    assert step(float("nan")) == (True, False)  # 2 -> 1
    assert step(float("nan")) == (True, True)  # 1 -> 0.5: even unscaled gradients are not finite
    assert torch.equal(w.detach(), torch.full((3,), 0.9))  # only the finite step moved the weight
    assert fp16_outcome(None, None) == (False, False)  # bf16 / fp32: no scaler


def test_out_of_memory_is_a_clear_error_and_the_run_resumes_after_it(shards, tmp_path, monkeypatch):
    """A CUDA OOM in step 2 (injected: the CPU has none) names the remedies; checkpoint 1 stays and resumes."""
    from relight_stream.train.step import LossFn

    real, calls = LossFn.__call__, []

    def oom_in_step_2(self, unet, inp):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, unet, inp)

    monkeypatch.setattr(LossFn, "__call__", oom_in_step_2)
    out = tmp_path / "oom"
    with pytest.raises(TrainOutOfMemory, match=r"out of GPU memory in step 2 \(batch 2 per GPU at 32²") as err:
        loop.run_train(_cfg(shards, out, max_steps=3), RunConfig(seed=0))
    msg = str(err.value)
    assert "--batch-size 1 with `grad_accum: 2`" in msg and "gradient_checkpointing: true" in msg
    assert "cache-latents" in msg and "--resume latest" in msg
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")[0]] == [1]
    monkeypatch.setattr(LossFn, "__call__", real)
    assert loop.run_train(_cfg(shards, out, max_steps=3, resume="latest"), RunConfig(seed=0)) == 0
    assert json.loads((out / "stats.json").read_text())["step"] == 3
