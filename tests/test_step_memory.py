"""A trial's activation memory, bounded: nbtl.feeds.measure_step_memory measures what an input costs a training
step, and train_trial runs a batch whose activations would pass the cap as micro-batches whose gradients add up
(real EfficientNet-Lite0, real digits images, real gradients; the memory of a real process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, Recorder
from nbtl.config import TrialConfig
from nbtl.data import load_dataset, split_dataset
from nbtl.feeds import StepMemory, measure_step_memory
from nbtl.train import train_trial
from nbtl.transfer import build_transfer

CPU = torch.device("cpu")
# Every block frozen, an MLP head without dropout trained on pooled features: nothing in the trained part
# depends on which inputs share a batch (no batch norm), so micro-batches must reach the whole batch's result.
HEAD_ONLY = dict(backbone="efficientnet_lite0", freeze_blocks=9, head="mlp", head_width=32, lr=0.05, l2_head=0.01,
                 epochs=2, batch_size=32, seed=0)  # fmt: skip


@pytest.fixture(scope="module")
def splits():
    dataset = load_dataset("digits", image_size=32, per_class=15, seed=0)
    return split_dataset(dataset, val_fraction=0.2, test_fraction=0.2, seed=0)


def test_micro_batches_and_evaluation_batches_keep_under_the_cap():
    memory = StepMemory(saved_bytes=100.0, output_bytes=10.0)
    assert memory.micro_batch(64, None) == 64 and memory.micro_batch(64, 6400) == 64
    assert memory.micro_batch(64, 1000) == 10  # 10 at most: 7 parts of 64, the largest 10
    assert memory.micro_batch(64, 3200) == 32 and memory.micro_batch(64, 50) == 1
    assert memory.eval_batch(None) == 256 and memory.eval_batch(1000) == 33 and memory.eval_batch(10**9) == 256


def test_the_measure_grows_with_the_image_and_shrinks_with_frozen_blocks_and_changes_nothing(weights):
    model = build_transfer(TrialConfig(backbone="efficientnet_lite0", freeze_blocks=0), 10, state_dict=weights).model
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = {size: torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8) for size in (32, 64)}
    rng = torch.get_rng_state()
    small, large = (measure_step_memory(model, model, images[size]) for size in (32, 64))
    assert 3.5 < large.saved_bytes / small.saved_bytes < 4.5 and 3.5 < large.output_bytes / small.output_bytes < 4.5
    # the first block's input alone, 3 x 64 x 64 float32 an image, is saved by its convolution
    assert large.saved_bytes > 3 * 64 * 64 * 4 and large.output_bytes >= 32 * 32 * 32 * 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "batch-norm statistics changed"
    assert torch.equal(rng, torch.get_rng_state())
    frozen = build_transfer(TrialConfig(backbone="efficientnet_lite0", freeze_blocks=5), 10, state_dict=weights).model
    half = measure_step_memory(frozen, frozen, images[64])
    assert half.saved_bytes < large.saved_bytes / 2  # frozen blocks save nothing for a backward pass


def test_micro_batches_add_up_to_the_whole_batchs_gradient(splits, weights, caplog):
    def run(step_memory_mb):
        recorder = Recorder()
        train_trial(TrialConfig.from_dict(HEAD_ONLY), splits, state_dict=weights, report=recorder, device=CPU,
                    step_memory_mb=step_memory_mb)  # fmt: skip
        return recorder.metrics

    whole = run(None)
    head = build_transfer(TrialConfig.from_dict(HEAD_ONLY), 10, state_dict=weights).model.head
    pooled = measure_step_memory(head, head, torch.zeros(2, 1280))
    with caplog.at_level("INFO", logger="nbtl.train"):
        parts = run(pooled.saved_bytes * 7.5 / 2**20)  # 7 inputs a part at most: 7, 7, 6, 6, 6 of a batch of 32
    assert "batches of 32 run as 5 micro-batches of 7 at most" in caplog.text
    for a, b in zip(whole, parts, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "test_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    # not a test that cannot fail: the head has learnt something from its steps
    assert whole[-1]["val_accuracy"] > 0.5 and whole[-1]["train_loss"] < 1.0, whole[-1]  # chance: 0.1, loss 2.3


def test_a_capped_trial_at_224_px_holds_less_memory_than_its_whole_batch():
    """Ten images at 224 px, every block trained: the whole batch saves about 0.8 GB of activations."""

    sys.path.insert(0, str(REPO / "benchmarks"))
    from step_memory import ONE  # one trial in a process of its own: backbone, size, per class, batch, cap

    def peak(cap: str) -> dict:
        command = [sys.executable, "-c", ONE, "efficientnet_lite0", "224", "3", "10", cap]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    whole, capped = peak("none"), peak("128")
    assert whole["train"] == capped["train"] == 10 and not whole["micro"] and capped["micro"]
    assert capped["peak_rss_mb"] + 400 < whole["peak_rss_mb"], (capped, whole)  # measured here: 1,235 MB against 1,840
    assert abs(capped["train_loss"] - whole["train_loss"]) < 0.5 * whole["train_loss"]  # batch norm per part
