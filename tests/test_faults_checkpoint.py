"""A trial resumes from its newest complete checkpoint, not from an older one Ray restored: a driver killed
between a trial's report and its own bookkeeping must not make the trial run an epoch again. Real checkpoint
files written with torch, one truncated as a kill mid-write leaves it."""

from __future__ import annotations

from pathlib import Path

import torch
from ray import tune

from nbtl.search.trainable import TRIAL_CHECKPOINT, latest_checkpoint


def write(folder: Path, epoch: int) -> Path:
    folder.mkdir(parents=True)
    torch.save({"epoch": epoch, "history": [{"epoch": e} for e in range(1, epoch + 1)]}, folder / TRIAL_CHECKPOINT)
    return folder


def test_newest_complete_checkpoint_wins(tmp_path):
    trial = tmp_path / "trial_0"
    known = write(trial / "checkpoint_000000", 1)
    write(trial / "checkpoint_000001", 2)
    truncated = write(trial / "checkpoint_000002", 3) / TRIAL_CHECKPOINT
    truncated.write_bytes(truncated.read_bytes()[:40])

    state, unseen = latest_checkpoint(tune.Checkpoint.from_directory(str(known)))
    assert unseen and state["epoch"] == 2  # the truncated epoch 3 is skipped, epoch 2 is newer than Ray's


def test_the_checkpoint_ray_knows_when_it_is_the_newest(tmp_path):
    trial = tmp_path / "trial_0"
    write(trial / "checkpoint_000000", 1)
    known = write(trial / "checkpoint_000001", 2)
    state, unseen = latest_checkpoint(tune.Checkpoint.from_directory(str(known)))
    assert not unseen and state["epoch"] == 2
    assert latest_checkpoint(None) == (None, False)  # a fresh trial
