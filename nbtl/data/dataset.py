"""The in-memory image dataset every other module works on.

Images are decoded and resized once, when the dataset is loaded, and kept as one uint8
tensor; training, feature extraction and splitting only index into it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from nbtl.data.images import release_pages
from nbtl.errors import DataError

#: The official parts a source may assign its images to (see ``ImageDataset.parts``).
PART_NAMES = ("train", "val", "test")


@dataclass(eq=False, repr=False)
class ImageDataset:
    """Decoded, square, three-channel images with integer labels.

    Parameters
    ----------
    images : torch.Tensor of shape (N, 3, S, S), dtype uint8
        The images, resized once to ``S x S``; grayscale sources are replicated to
        three channels.
    labels : torch.Tensor of shape (N,), dtype int64
        Class indices, each in ``range(len(classes))``.
    classes : list of str
        Class names; ``classes[i]`` is the name of label ``i``.
    name : str
        A human-readable name: ``"digits"``, ``"fashion-mnist"``, or the folder / CSV name.
    grayscale : bool
        True when the source images were single-channel.
    original_size : tuple of (int, int)
        Median ``(H, W)`` of the source images before resizing.
    parts : numpy.ndarray of shape (N,) of str, or None
        The official part of each image, ``"train"``, ``"val"`` or ``"test"``, when the source gives
        one (an ImageFolder with ``train/``, ``val/``, ``test/`` sub-folders, or a separate test
        source); :func:`nbtl.data.split_dataset` and :func:`nbtl.data.kfold_splits` keep them.
        None (the default): no official split.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    grayscale: bool
    original_size: tuple[int, int]
    parts: np.ndarray | None = None

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(
                f"dataset '{self.name}': images must be a uint8 tensor of shape (N, 3, S, S), "
                f"got {images.dtype} {tuple(images.shape)}; build it with nbtl.data.load_dataset"
            )
        if images.shape[2] != images.shape[3]:
            raise DataError(
                f"dataset '{self.name}': images must be square, got {tuple(images.shape[2:])}; "
                "build it with nbtl.data.load_dataset"
            )
        if labels.dtype != torch.int64 or labels.ndim != 1 or len(labels) != len(images):
            raise DataError(
                f"dataset '{self.name}': labels must be an int64 tensor of shape ({len(images)},), "
                f"got {labels.dtype} {tuple(labels.shape)}; build it with nbtl.data.load_dataset"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.classes)):
            raise DataError(
                f"dataset '{self.name}': labels must lie in range({len(self.classes)}), got values "
                f"{int(labels.min())}..{int(labels.max())}; give one class name per label"
            )
        if self.parts is not None:
            parts = np.asarray(self.parts, dtype=str)
            unknown = sorted(set(parts.tolist()) - set(PART_NAMES))
            if parts.shape != (len(labels),) or unknown:
                raise DataError(
                    f"dataset '{self.name}': parts must hold one of {', '.join(PART_NAMES)} per image "
                    f"({len(labels)}), got shape {parts.shape}{f' and {unknown[0]!r}' if unknown else ''}"
                )
            self.parts = parts
        self.classes = list(self.classes)
        self.original_size = (int(self.original_size[0]), int(self.original_size[1]))

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        size = self.images.shape[-1]
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, classes={len(self.classes)}, "
            f"image_size={size}, grayscale={self.grayscale}, original_size={self.original_size}"
            + ("" if self.parts is None else f", official parts {self.part_counts()}")
            + ")"
        )

    @property
    def image_size(self) -> int:
        """Side length ``S`` of the stored square images."""
        return int(self.images.shape[-1])

    def subset(self, indices) -> ImageDataset:
        """Return a new dataset holding the images at ``indices``, in that order.

        Parameters
        ----------
        indices : sequence of int, numpy.ndarray or torch.Tensor
            Positions into this dataset (may repeat), or a boolean mask of length N.

        Returns
        -------
        ImageDataset
            Same classes, name and metadata; copies of the selected images and labels.
        """
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        positions = np.asarray(indices)
        if positions.dtype == bool:
            positions = np.flatnonzero(positions)
        index = torch.as_tensor(positions.astype(np.int64).reshape(-1))
        if len(index) and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
            raise DataError(
                f"dataset '{self.name}': subset indices must lie in range({len(self)}), got "
                f"{int(index.min())}..{int(index.max())}; pass positions into this dataset"
            )
        return ImageDataset(
            images=self.images[index],
            labels=self.labels[index],
            classes=list(self.classes),
            name=self.name,
            grayscale=self.grayscale,
            original_size=self.original_size,
            parts=None if self.parts is None else self.parts[positions.astype(np.int64).reshape(-1)],
        )

    def part_counts(self) -> dict[str, int]:
        """Images per official part (``{"train": 90, "test": 30}``); empty without official parts."""
        if self.parts is None:
            return {}
        return {name: int((self.parts == name).sum()) for name in PART_NAMES if (self.parts == name).any()}

    def fingerprint(self) -> str:
        """Return a stable hex digest of the images, labels and class names.

        Two datasets with equal pixels, labels and classes (in the same order), and the same
        official parts (when any), share a fingerprint across processes and machines, so it can
        key on-disk caches.

        Returns
        -------
        str
            SHA-256 hex digest (64 characters).
        """
        known = self.__dict__.get("known_fingerprint")  # set by nbtl.data.arrayfile, which stored it with the pixels
        if known is not None:
            return known
        digest = hashlib.sha256()
        digest.update(json.dumps([list(self.images.shape), self.classes]).encode())
        # in chunks (the same bytes as one tobytes()): a memory-mapped dataset is never read into memory whole
        step = max(1, 2**26 // max(1, self.images[0].numel() if len(self.images) else 1))
        for start in range(0, len(self.images), step):
            chunk = self.images[start : start + step].numpy()
            digest.update(np.ascontiguousarray(chunk).data)
            release_pages(chunk)  # a file being written a chunk at a time: its pages out of this process
        digest.update(self.labels.contiguous().numpy().astype("<i8").tobytes())
        if self.parts is not None:  # absent parts leave the digest as it always was
            digest.update(json.dumps(self.parts.tolist()).encode())
        return digest.hexdigest()

    def class_counts(self) -> dict[str, int]:
        """Return the number of images per class, in class order (zeros included)."""
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts))
