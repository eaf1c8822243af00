"""Training checkpoints: atomic save, prune after commit, newest-complete discovery (RELIABILITY.md E1, E2, E4).

Layout under ``OUT/checkpoints/``::

    checkpoint-<step>/            accelerate ``save_state`` (model, optimizer, scheduler, EMA, RNG states per rank)
        train_state.json          step, seed, counters, world size, workers (written by rank 0)
        rank<r>.pt                this rank's noise/dropout generator state and data position per worker
        COMPLETE                  written last, before the rename: a folder without it is never resumed from
    .tmp-checkpoint-<step>/       a save in progress (or interrupted: removed at the next start)

Old checkpoints are pruned only after the new one is renamed into place, so a crash during a save always
leaves the previous good checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
_NAME = re.compile(r"^checkpoint-(\d+)$")
MARKER = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(root: Path) -> tuple[list[tuple[int, Path]], list[Path]]:
    """(complete checkpoints sorted by step, incomplete folders) under ``root``."""
    complete, partial = [], []
    if not root.is_dir():
        return complete, partial
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / MARKER).is_file():
            complete.append((int(m.group(1)), p))
        elif p.is_dir() and (m or p.name.startswith(".tmp-checkpoint-")):
            partial.append(p)
    return sorted(complete), sorted(partial)


def find_resume(resume: str | None, root: Path) -> Path | None:
    """The checkpoint to resume from: ``latest`` = the newest *complete* one (None when there is none).

    Raises:
        ValueError: an explicit path that does not exist or is not complete.
    """
    if not resume:
        return None
    if resume == "latest":
        complete, partial = list_checkpoints(root)
        for p in partial:
            log.warning("ignoring incomplete checkpoint %s (no %s marker: interrupted save)", p, MARKER)
        if not complete:
            log.info("--resume latest: no complete checkpoint under %s; starting fresh", root)
            return None
        return complete[-1][1]
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise ValueError(f"--resume {resume}: no such checkpoint folder")
    if not (path / MARKER).is_file():
        raise ValueError(f"--resume {resume}: checkpoint is incomplete (no {MARKER} marker)")
    return path


def clean_stale(root: Path) -> None:
    """Remove interrupted saves (``.tmp-checkpoint-*``) left by a crash; called on rank 0 at start."""
    if root.is_dir():
        for p in root.glob(".tmp-checkpoint-*"):
            log.warning("removing interrupted checkpoint save %s", p)
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(accelerator: Any, root: Path, step: int, *, train_state: dict[str, Any],
                    rank_state: dict[str, Any], total_limit: int | None) -> Path:
    """Save on every rank into a temporary folder, mark it complete, rename it, then prune (rank 0)."""
    tmp = root / f".tmp-checkpoint-{step}"
    final = root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(rank_state, tmp / f"rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "train_state.json").write_text(json.dumps(train_state, indent=1))
        with open(tmp / MARKER, "w") as f:
            f.write(f"step {step}\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step (resumed run): replace it
            shutil.rmtree(final)
        tmp.rename(final)
        _fsync_dir(root)
        if total_limit is not None and total_limit > 0:
            complete, _ = list_checkpoints(root)
            for _, old in complete[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        log.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


_RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")
_RNG_LOST = "this rank's global RNG (python/numpy/torch) not restored; not an exact resume, the data order restarts"


def _read_rng_states(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """This rank's ``random_states_<r>.pkl`` (what accelerate restores), or None with a problem recorded.

    Read here because accelerate's ``load_state`` swallows a failure to load it with an INFO line (accelerate #4283).
    """
    name = path.name
    if not path.is_file():
        problems.append(f"{name} missing: {_RNG_LOST}")
        return None
    try:
        states = torch.load(path, weights_only=False)  # our own checkpoint: trusted pickle
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported
        problems.append(f"{name} unreadable ({type(exc).__name__}: {exc}): {_RNG_LOST}")
        return None
    if not isinstance(states, dict) or any(k not in states for k in _RNG_KEYS):
        problems.append(f"{name} lacks {'/'.join(_RNG_KEYS)}: {_RNG_LOST}")
        return None
    return states


def _report(path: Path, problems: list[str], strict: bool) -> None:
    if problems and strict:
        raise ValueError(f"strict resume from {path}: " + "; ".join(problems))
    for p in problems:
        log.warning("resume from %s: %s", path, p)


def load_checkpoint(accelerator: Any, path: Path, *, world: int, num_workers: int,
                    strict: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore accelerate state; return (train_state, this rank's state). Loudly reports what cannot be restored.

    Anything that cannot be restored (world size or workers changed, a missing or unreadable ``rank<r>.pt`` or
    ``random_states_<r>.pkl``) is a WARNING naming it, and the data position is dropped (the data order restarts)
    since the resume is not exact anyway.

    Raises:
        ValueError: under ``strict``, when any of the above happens.
    """
    train_state = json.loads((path / "train_state.json").read_text())
    problems: list[str] = []
    if train_state.get("world_size") != world:
        problems.append(f"world size {train_state.get('world_size')} -> {world}: per-rank RNG and data positions "
                        "cannot be restored; the data order restarts")
    if train_state.get("num_workers") != num_workers:
        problems.append(f"num_workers {train_state.get('num_workers')} -> {num_workers}: data positions cannot be "
                        "restored; the data order restarts")
    rng_states = _read_rng_states(path / f"random_states_{accelerator.process_index}.pkl", problems)
    rank_file = path / f"rank{accelerator.process_index}.pt"
    rank_state: dict[str, Any] = {}
    if rank_file.is_file():
        try:
            rank_state = torch.load(rank_file, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a corrupt file is reported below
            problems.append(f"{rank_file.name} unreadable ({exc})")
    else:
        problems.append(f"{rank_file.name} missing: noise/dropout generator and data position not restored")
    _report(path, problems, strict)
    accelerator.load_state(str(path))
    if rng_states is not None and not torch.equal(torch.get_rng_state(), rng_states["torch_manual_seed"]):
        # readable here, yet accelerate did not apply it (it only logs that at INFO)
        problems.append(f"random_states_{accelerator.process_index}.pkl not applied by accelerate: {_RNG_LOST}")
        _report(path, problems[-1:], strict)
    if problems:
        rank_state.pop("data_pos", None)
    log.info("resumed from %s at step %d", path, train_state["step"])
    return train_state, rank_state
