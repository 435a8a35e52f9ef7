"""Training-time augmentation of the stored uint8 images."""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch
from torch.utils.data import Dataset

from nbtl.data.dataset import ImageDataset
from nbtl.errors import ConfigError

AUGMENTATION_KEYS = ("hflip", "crop_padding", "rotation")

Augmentation = Callable[[torch.Tensor], torch.Tensor]


class _RandomAugmentation:
    """Flip, pad-and-crop and rotate a uint8 image (3, S, S) with torchvision.transforms.v2.

    The random crop needs the image side, so the v2 pipeline is built per side on first
    use. Instances pickle, so DataLoader worker processes can use them.
    """

    def __init__(self, hflip: float, crop_padding: int, rotation: float) -> None:
        self.hflip = hflip
        self.crop_padding = crop_padding
        self.rotation = rotation
        self._pipelines: dict[int, Callable] = {}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        size = int(image.shape[-1])
        if size not in self._pipelines:
            self._pipelines[size] = self._build(size)
        return self._pipelines[size](image)

    def _build(self, size: int) -> Callable:
        from torchvision.transforms import v2

        steps = []
        if self.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(p=self.hflip))
        if self.crop_padding > 0:
            steps.append(v2.RandomCrop(size, padding=self.crop_padding, fill=0))
        if self.rotation > 0:
            steps.append(v2.RandomRotation(degrees=self.rotation, fill=0))
        return v2.Compose(steps)

    def __repr__(self) -> str:
        return f"Augmentation(hflip={self.hflip}, crop_padding={self.crop_padding}, rotation={self.rotation})"


class BatchAugmentation:
    """:func:`make_augmentation`'s flip, pad-and-crop and rotation, drawn per image and applied to a whole uint8
    batch ``(N, 3, S, S)`` on its own device (the GPU of a trial there): one ``affine_grid`` and a nearest-pixel
    ``grid_sample`` with zero fill, so no image leaves the device and no CPU worker is needed.

    Each image's transform has the per-image pipeline's distribution: flipped with probability ``hflip``, then
    shifted by a whole number of pixels in ``[-crop_padding, crop_padding]`` on each axis (a random ``S x S``
    window of the zero-padded image), then rotated by an angle uniform in ``[-rotation, rotation]`` degrees about
    its centre. Flips and shifts are pixel-exact; the random numbers come from ``generator`` (on the CPU, so a
    trial draws the same transforms on any device).
    """

    def __init__(self, hflip: float, crop_padding: int, rotation: float) -> None:
        self.hflip = hflip
        self.crop_padding = crop_padding
        self.rotation = rotation

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> BatchAugmentation | None:
        """The batch form of ``make_augmentation(spec)``; None when that is the identity."""
        transform = make_augmentation(spec)
        if transform is _identity:
            return None
        return cls(transform.hflip, transform.crop_padding, transform.rotation)

    def theta(self, n: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The ``(n, 2, 3)`` affine matrices (``affine_grid``'s normalised output-to-input coordinates)."""
        flip = torch.where(torch.rand(n, generator=generator) < self.hflip, -1.0, 1.0)
        p = self.crop_padding
        shift = torch.randint(-p, p + 1, (n, 2), generator=generator).double() * 2 / size
        angle = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * math.radians(self.rotation)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # input(q) = image(F (R^-1 q + t)): rotate last, shift (crop) before it, flip first, as the pipeline does
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        # (torchvision's rotate: R^-1 = [[cos, -sin], [sin, cos]] in these y-down coordinates)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = flip * cos, -flip * sin, flip * shift[:, 0]
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sin, cos, shift[:, 1]
        return theta.float()

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, size, _ = batch.shape
        theta = self.theta(n, size, generator).to(batch.device, non_blocking=True)
        grid = torch.nn.functional.affine_grid(theta, list(batch.shape), align_corners=False)
        moved = torch.nn.functional.grid_sample(
            batch.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        return moved.to(torch.uint8)

    def __repr__(self) -> str:
        return f"BatchAugmentation(hflip={self.hflip}, crop_padding={self.crop_padding}, rotation={self.rotation})"


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image


def make_augmentation(spec: dict[str, Any] | None) -> Augmentation:
    """Build a per-image augmentation from a config dict.

    Parameters
    ----------
    spec : dict or None
        All keys optional; None or ``{}`` means no augmentation.

        - ``hflip`` : bool or float, default False. True flips left-right with
          probability 0.5; a number in [0, 1] is the flip probability.
        - ``crop_padding`` : int, default 0. Pad this many zero pixels on every side,
          then crop a random ``S x S`` window.
        - ``rotation`` : float, default 0. Rotate by a random angle in
          ``[-rotation, rotation]`` degrees, filling with zeros.

    Returns
    -------
    callable
        Maps a uint8 tensor of shape (3, S, S) to a uint8 tensor of the same shape.

    Raises
    ------
    ConfigError
        On an unknown key or a value of the wrong type or range.
    """
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise ConfigError(f"augmentation must be a mapping with keys {list(AUGMENTATION_KEYS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(AUGMENTATION_KEYS))
    if unknown:
        raise ConfigError(f"unknown augmentation key {unknown[0]!r}; use only {', '.join(AUGMENTATION_KEYS)}")
    hflip = _flip_probability(spec.get("hflip", False))
    crop_padding = spec.get("crop_padding", 0)
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
        raise ConfigError(f"augmentation crop_padding must be a non-negative integer (pixels), got {crop_padding!r}")
    rotation = spec.get("rotation", 0)
    if isinstance(rotation, bool) or not isinstance(rotation, Real) or not 0 <= rotation <= 180:
        raise ConfigError(f"augmentation rotation must be a number of degrees in [0, 180], got {rotation!r}")
    if hflip == 0 and crop_padding == 0 and rotation == 0:
        return _identity
    return _RandomAugmentation(hflip, crop_padding, float(rotation))


def _flip_probability(value) -> float:
    if isinstance(value, bool):
        return 0.5 if value else 0.0
    if isinstance(value, Real) and 0 <= value <= 1:
        return float(value)
    raise ConfigError(f"augmentation hflip must be true/false or a probability in [0, 1], got {value!r}")


class AugmentedDataset(Dataset):
    """A torch Dataset over an ImageDataset, augmenting each item as it is read.

    Parameters
    ----------
    dataset : ImageDataset
        The stored images and labels.
    augmentation : callable, dict or None, default=None
        A callable from :func:`make_augmentation` (or any uint8 (3, S, S) -> uint8
        (3, S, S) callable), a spec dict passed to :func:`make_augmentation`, or None for
        the stored images unchanged.

    Notes
    -----
    ``dataset[i]`` is ``(image, label)``: a uint8 tensor of shape (3, S, S) and an int.
    Normalisation to the backbone's mean / std happens later, on the batch.
    """

    def __init__(self, dataset: ImageDataset, augmentation: Augmentation | dict | None = None) -> None:
        if isinstance(augmentation, dict) or augmentation is None:
            augmentation = make_augmentation(augmentation)
        self.dataset = dataset
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.augmentation(self.dataset.images[index])
        return image, int(self.dataset.labels[index])
