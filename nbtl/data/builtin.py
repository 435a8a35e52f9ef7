"""Built-in datasets that need no download: scikit-learn's digits and Debian's Fashion-MNIST.

Both are small grayscale sets, handy for smoke tests, examples and benchmarks. The colour built-ins
(``photo-patches``, ``emoji``, ``icons``) live in :mod:`nbtl.data.colour`.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from nbtl.data.dataset import ImageDataset
from nbtl.data.images import decode_gray_arrays
from nbtl.data.selection import select_per_class
from nbtl.errors import DataError

# Where Debian's `dataset-fashion-mnist` package installs the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Label names in the order of the label values, as published by Zalando Research.
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

_IMAGES_FILE = "train-images-idx3-ubyte"
_LABELS_FILE = "train-labels-idx1-ubyte"
_IDX_UBYTE = 0x08


def load_digits(image_size: int, per_class: int | None, seed: int) -> ImageDataset:
    """Load scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Pixel values 0..16 are scaled to 0..255 before resizing.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    keep = select_per_class(labels, per_class, seed)
    arrays = np.rint(bunch.images[keep] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return ImageDataset(
        images=decode_gray_arrays(arrays, image_size),
        labels=torch.from_numpy(labels[keep]),
        classes=[str(digit) for digit in range(10)],
        name="digits",
        grayscale=True,
        original_size=(8, 8),
    )


def load_fashion_mnist(directory: str | None, image_size: int, per_class: int | None, seed: int) -> ImageDataset:
    """Load the Fashion-MNIST training split (60000 images of 28x28, 10 classes).

    Parameters
    ----------
    directory : str or None
        A folder holding ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``,
        or a torchvision root holding ``FashionMNIST/raw/``; None reads Debian's
        ``/usr/share/datasets/fashion-mnist``.
    image_size, per_class, seed
        As in :func:`nbtl.data.load_dataset`.

    References
    ----------
    Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
    Machine Learning Algorithms", arXiv:1708.07747, 2017.
    """
    folder = _find_fashion_mnist(directory)
    labels = read_idx(idx_path(folder, _LABELS_FILE), ndim=1).astype(np.int64)
    images = read_idx(idx_path(folder, _IMAGES_FILE), ndim=3)
    if len(images) != len(labels) or labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(
            f"Fashion-MNIST files in '{folder}' do not match ({len(images)} images, "
            f"{len(labels)} labels); re-install them with "
            "`apt-get install --reinstall dataset-fashion-mnist`"
        )
    return fashion_mnist_dataset(images, labels, image_size, per_class, seed, "fashion-mnist")


def fashion_mnist_dataset(
    images: np.ndarray, labels: np.ndarray, image_size: int, per_class: int | None, seed: int, name: str
) -> ImageDataset:
    """Fashion-MNIST arrays (uint8 ``(N, 28, 28)``, int64 ``(N,)``) as a dataset: at most ``per_class`` images a
    class chosen with ``seed``, decoded at ``image_size``."""
    keep = select_per_class(labels, per_class, seed)
    return ImageDataset(
        images=decode_gray_arrays(images[keep], image_size),
        labels=torch.from_numpy(labels[keep]),
        classes=list(FASHION_MNIST_CLASSES),
        name=name,
        grayscale=True,
        original_size=(int(images.shape[1]), int(images.shape[2])),
    )


def _find_fashion_mnist(directory: str | None) -> Path:
    if directory is None:
        candidates = [FASHION_MNIST_DIR]
    else:
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise DataError(
                f"Fashion-MNIST directory '{root}' does not exist; pass fashion-mnist:<dir> with "
                "a folder holding the IDX files, or plain fashion-mnist for Debian's copy"
            )
        candidates = [root, root / "FashionMNIST" / "raw", root / "raw", root / "fashion-mnist"]
    for candidate in candidates:
        if all(idx_path(candidate, name) is not None for name in (_IMAGES_FILE, _LABELS_FILE)):
            return candidate
    looked = ", ".join(f"'{candidate}'" for candidate in candidates)
    raise DataError(
        f"Fashion-MNIST files {_IMAGES_FILE}[.gz] and {_LABELS_FILE}[.gz] not found in {looked}; "
        "run `apt-get install dataset-fashion-mnist` or pass fashion-mnist:<dir> with a folder holding them"
    )


def idx_path(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (LeCun's MNIST format), gzipped or not."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read IDX file '{path}': {error}; re-download or re-install it") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(f"'{path}' is not an IDX file of {ndim}-D unsigned bytes; re-download or re-install it")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file '{path}' holds {len(raw) - header} bytes of data but its header says "
            f"{expected} {shape}; the file is truncated, re-download or re-install it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
