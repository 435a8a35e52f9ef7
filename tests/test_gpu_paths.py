"""The CUDA path of a trial (issue 18, item 4): augmentation of whole batches on the device, channels-last, pinned
batches, autocast. Its device-independent parts run here on the CPU; the CUDA runs are skipped cleanly where
there is no GPU (CI), and run on a GPU machine: ``python -m pytest tests/test_gpu_paths.py``."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from nbtl.backbones import create_backbone
from nbtl.config import TrialConfig
from nbtl.data import load_dataset, split_dataset
from nbtl.data.augment import BatchAugmentation
from nbtl.train import train_trial

REPO = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def splits():
    return split_dataset(load_dataset("digits", image_size=32, per_class=12), seed=0)


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """Weights to transfer, in the Backbone key format (random: the packaged ones need not be installed)."""
    torch.manual_seed(1)
    return create_backbone("efficientnet_lite0", pretrained=False).state_dict()


def config(**overrides) -> TrialConfig:
    base = {"backbone": "efficientnet_lite0", "pretrained": False, "freeze_blocks": 0, "epochs": 2}
    return TrialConfig.from_dict({**base, "batch_size": 16, "lr": 0.01, "seed": 0, **overrides})


def test_batch_flip_and_shift_are_the_per_image_pipeline_pixel_for_pixel(images):
    """Each image flipped with probability 0.5 and shifted as a random window of the zero-padded image, exactly."""
    augment = BatchAugmentation(hflip=0.5, crop_padding=3, rotation=0.0)
    out = augment(images, torch.Generator().manual_seed(7))
    # the draws, in the order BatchAugmentation makes them
    generator = torch.Generator().manual_seed(7)
    flips = torch.rand(len(images), generator=generator) < 0.5
    shifts = torch.randint(-3, 4, (len(images), 2), generator=generator)
    assert 0 < int(flips.sum()) < len(images) and shifts.abs().sum() > 0
    for image, flip, (dx, dy), got in zip(images, flips, shifts.tolist(), out, strict=True):
        padded = torch.nn.functional.pad(image.flip(-1) if flip else image, (3, 3, 3, 3))
        assert torch.equal(got, padded[:, 3 + dy : 3 + dy + 24, 3 + dx : 3 + dx + 24])


@pytest.mark.parametrize("degrees", [90.0, 30.0, -12.5])
def test_batch_rotation_is_torchvisions(images, degrees):
    class Fixed(BatchAugmentation):  # every image by the same angle, to compare with torchvision's rotate
        def theta(self, n, size, generator=None):
            angle = torch.full((n,), math.radians(degrees), dtype=torch.float64)
            theta = torch.zeros(n, 2, 3, dtype=torch.float64)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
            return theta.float()

    # the same matrix as BatchAugmentation's for that angle, no flip, no shift
    real = BatchAugmentation(hflip=0.0, crop_padding=0, rotation=abs(degrees)).theta(1, 24)
    assert real.shape == (1, 2, 3) and torch.allclose(real[0, :, :2].det(), torch.tensor(1.0))
    assert torch.equal(Fixed(0.0, 0, abs(degrees))(images), F.rotate(images, degrees))


def test_batch_augmentation_of_a_spec():
    assert BatchAugmentation.from_spec(None) is None and BatchAugmentation.from_spec({}) is None
    made = BatchAugmentation.from_spec({"hflip": True, "crop_padding": 4, "rotation": 10})
    assert (made.hflip, made.crop_padding, made.rotation) == (0.5, 4, 10.0)


def test_a_trial_gathering_batches_by_index_trains_as_the_per_image_path_without_augmentation(splits):
    """The device path's batches are the same images in the same order: without augmentation, the same losses."""
    by_image = train_trial(config(), splits, device="cpu", cache_prefix=False, augment_on_device=False)
    by_index = train_trial(config(), splits, device="cpu", cache_prefix=False, augment_on_device=True)
    assert [m["train_loss"] for m in by_index.history] == [m["train_loss"] for m in by_image.history]
    assert by_index.history[-1]["val_loss"] == by_image.history[-1]["val_loss"]


def test_a_trial_augmenting_on_its_device_learns_with_real_gradients(splits):
    spec = {"hflip": True, "crop_padding": 2, "rotation": 5}
    result = train_trial(
        config(epochs=3), splits, augmentation=spec, device="cpu", cache_prefix=False, augment_on_device=True
    )
    plain = train_trial(config(epochs=3), splits, device="cpu", cache_prefix=False, augment_on_device=True)
    losses = [m["train_loss"] for m in result.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert losses != [m["train_loss"] for m in plain.history]  # the augmentation changed the batches


@cuda
@pytest.mark.parametrize("freeze", [0, 3])
def test_a_trial_on_cuda_runs_channels_last_with_autocast(splits, weights, freeze):
    spec = {"hflip": True, "crop_padding": 2}
    trial = config(pretrained=True, freeze_blocks=freeze, epochs=2)
    result = train_trial(trial, splits, augmentation=spec, state_dict=weights, device="cuda")
    last = result.history[-1]
    assert all(math.isfinite(last[k]) for k in ("train_loss", "val_loss", "test_loss"))
    assert last["prefix_blocks"] == freeze
    assert all(v.device.type == "cuda" for v in result.best_weights.values())
    four_d = [v for v in result.best_weights.values() if v.ndim == 4 and v.shape[-1] > 1]
    assert four_d and all(v.is_contiguous(memory_format=torch.channels_last) for v in four_d)


@cuda
def test_a_cuda_trial_resumes_from_its_checkpoint(splits):
    """The state a Ray checkpoint holds (scaler, generators) carries a CUDA trial on, to the same end."""
    spec = {"hflip": True, "crop_padding": 2}
    states = []
    whole = train_trial(
        config(epochs=3), splits, augmentation=spec, device="cuda", report=lambda m, s: states.append(s())
    )
    resumed = train_trial(config(epochs=3), splits, augmentation=spec, device="cuda", resume=states[0])
    assert len(resumed.history) == 3 and resumed.history[0] == whole.history[0]
    # cuDNN's kernels are not bit-for-bit deterministic: the same trial, not the same float
    assert resumed.history[-1]["train_loss"] == pytest.approx(whole.history[-1]["train_loss"], rel=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_gpu_check_says_in_one_line_that_there_is_no_gpu():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stdout.strip().count("\n") == 0 and "no CUDA device" in done.stdout
