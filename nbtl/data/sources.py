"""``load_dataset``: one entry point for every kind of dataset source."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from nbtl.data.builtin import load_digits, load_fashion_mnist
from nbtl.data.colour import load_emoji, load_icons, load_photo_patches
from nbtl.data.dataset import ImageDataset
from nbtl.data.images import decode_files
from nbtl.data.listing import FileListing, list_csv, list_image_folder, list_official_folder, official_part_folders
from nbtl.data.packaged import PACKAGED_SOURCES
from nbtl.data.selection import select_per_class
from nbtl.errors import DataError

#: Colour built-ins (nbtl/data/colour.py): name -> loader(image_size, per_class, seed).
COLOUR_SOURCES = {"photo-patches": load_photo_patches, "emoji": load_emoji, "icons": load_icons}
#: Every built-in; those after the colour ones come from nbtl/data/packaged.py (name -> loader, as above).
BUILTIN_SOURCES = ("digits", "fashion-mnist", *COLOUR_SOURCES, *PACKAGED_SOURCES)
_SOURCE_HELP = (
    "pass 'digits', 'fashion-mnist', 'fashion-mnist:<dir>', 'fashion-mnist-test', 'photo-patches', 'emoji', "
    "'emoji-more', 'icons', 'playing-cards', 'wallpaper-tiles', "
    "a directory with one sub-folder per class, or a .csv file with columns path,label"
)


def load_dataset(
    source: str | os.PathLike,
    image_size: int,
    per_class: int | None = None,
    seed: int = 0,
    classes: str | list[str] | None = None,
    test_data: str | os.PathLike | None = None,
) -> ImageDataset:
    """Load a labelled image dataset, decoding and resizing every image once.

    Parameters
    ----------
    source : str or os.PathLike
        One of

        - ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1797 images);
        - ``"fashion-mnist"``: the Fashion-MNIST training split (60000 images) from Debian's
          ``dataset-fashion-mnist`` package, or ``"fashion-mnist:<dir>"`` with a folder that
          holds the IDX files or a torchvision root with ``FashionMNIST/raw/``;
        - ``"fashion-mnist-test"``: the Fashion-MNIST test split (t10k, 10000 images) from the same
          Debian package, which ``"fashion-mnist"`` never returns;
        - ``"photo-patches"``: 960 colour crops of eight photos bundled with scikit-image, class =
          photo (8 classes x 120);
        - ``"emoji"``: Noto Color Emoji glyphs (Debian ``fonts-noto-color-emoji``), class =
          category (faces, animals, food, travel, objects; 5 classes, 90-130 each);
        - ``"icons"``: Oxygen icons (Debian ``oxygen-icon-theme``), class = context (actions,
          apps, devices, mimetypes, status; 5 classes, 60-650 each);
        - ``"emoji-more"``: Noto Color Emoji glyphs in eight categories (faces, people, body,
          animals, food, travel, activities, objects; about 790 glyphs);
        - ``"playing-cards"``: the 624 cards of 12 KDE card decks drawn from SVG (Debian
          ``kdegames-card-data-kf5`` and ``librsvg2-bin``), class = suit (4 classes x 156);
          about a minute on 2 CPUs, as every card is drawn by ``rsvg-convert``;
        - ``"wallpaper-tiles"``: non-overlapping 64 px tiles of ten KDE Plasma wallpapers (Debian
          ``plasma-workspace-wallpapers``), class = wallpaper;
        - a directory in ImageFolder layout, ``<dir>/<class name>/<image>``; links are
          followed, each real folder once, and an image reached by two paths counts once;
        - a directory with official parts, ``<dir>/train/<class name>/<image>`` and
          ``<dir>/test/...`` and/or ``<dir>/val/...`` (``valid``, ``validation``), each with the same
          class folders: the images carry their part (``ImageDataset.parts``), which
          :func:`nbtl.data.split_dataset` and :func:`nbtl.data.kfold_splits` keep;
        - a ``.csv`` file with header ``path,label``; paths are relative to the CSV's
          folder, or absolute. A row repeating an image and its label is dropped with a
          warning; an image under two labels is an error.

        The built-in names win over a same-named folder; write ``./digits`` for the folder.
    image_size : int
        Side ``S`` of the stored images: the shorter side is resized to ``S`` (bilinear,
        small images are upscaled), then the centre ``S x S`` square is kept.
    per_class : int or None, default=None
        Keep at most this many images per class, chosen with ``seed`` before any image is
        decoded. None keeps all.
    seed : int, default=0
        Seeds the ``per_class`` choice.
    classes : str or list of str, optional
        Keep only these classes, by name or by 0-based index (``"0,2,4"`` or ``["0", "2", "4"]``),
        relabelled ``0..k-1`` in the order given; the dataset's name gets the list in brackets.
        None keeps every class.
    test_data : str or os.PathLike, optional
        A second source (any of the kinds above without official parts) holding the official test
        images, with the same class names; they join the dataset as its ``"test"`` part. Not with a
        ``source`` that has a ``test/`` folder itself.

    ``per_class`` caps only the training images: official val and test images are all kept, so that
    scores stay comparable with the published split.

    Returns
    -------
    ImageDataset
        ``images`` uint8 of shape (N, 3, S, S) (grayscale replicated to three channels),
        ``labels`` int64 of shape (N,), and ``parts`` of shape (N,) when the data has official parts.

    Raises
    ------
    DataError
        On a missing path, unknown source, bad layout, corrupt image, bad CSV, absent
        Fashion-MNIST files or a built-in's Debian package, a single class, or invalid ``image_size`` / ``per_class``.
    """
    _check_int("image_size", image_size, "the side in pixels of the square images, e.g. 224")
    if per_class is not None:
        _check_int("per_class", per_class, "an upper bound of images per class, or None for all")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an integer, got {seed!r}; pass e.g. seed=0")
    image_size, seed = int(image_size), int(seed)
    per_class = None if per_class is None else int(per_class)

    text = os.fspath(source)
    if text == "digits":
        dataset = load_digits(image_size, per_class, seed)
    elif text == "fashion-mnist" or text.startswith("fashion-mnist:"):
        directory = text.partition(":")[2] or None
        dataset = load_fashion_mnist(directory, image_size, per_class, seed)
    elif text in COLOUR_SOURCES:
        dataset = COLOUR_SOURCES[text](image_size, per_class, seed)
    elif text in PACKAGED_SOURCES:
        dataset = PACKAGED_SOURCES[text](image_size, per_class, seed)
    else:
        dataset = _load_files(*_list_path(text), text, image_size, per_class, seed)
    if test_data is not None:
        dataset = _with_test_data(dataset, test_data, image_size, seed, text)
    if classes is not None:
        dataset = keep_classes(dataset, classes, text)
    _check_classes(dataset.class_counts(), text)
    return dataset


def parse_classes(classes: str | list[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` as a list of stripped names; None stays None."""
    if classes is None:
        return None
    items = classes.split(",") if isinstance(classes, str) else [str(c) for c in classes]
    return [item.strip() for item in items if item.strip()]


def keep_classes(dataset: ImageDataset, classes: str | list[str], where: str) -> ImageDataset:
    """Keep only ``classes`` (names, or 0-based indices when no class has that name), relabelled
    ``0..k-1`` in the order given."""
    wanted = parse_classes(classes) or []
    if len(wanted) < 2:
        raise DataError(
            f"classes for '{where}' must name at least two classes, got {classes!r}; "
            f"e.g. --classes {','.join(dataset.classes[:2])}"
        )
    chosen = []
    for item in wanted:
        if item in dataset.classes:
            chosen.append(dataset.classes.index(item))
        elif item.isdigit() and int(item) < len(dataset.classes):
            chosen.append(int(item))
        else:
            raise DataError(
                f"class {item!r} is not in dataset '{where}' (classes: {', '.join(dataset.classes)}); "
                "name a class or give its 0-based index"
            )
    if len(set(chosen)) != len(chosen):
        raise DataError(f"classes for '{where}' name a class twice: {classes!r}")
    labels = dataset.labels.numpy()
    positions = np.flatnonzero(np.isin(labels, chosen))
    subset = dataset.subset(positions)  # keeps the official parts
    remap = np.full(len(dataset.classes), -1, dtype=np.int64)
    remap[chosen] = np.arange(len(chosen))
    names = [dataset.classes[c] for c in chosen]
    return ImageDataset(
        images=subset.images,
        labels=torch.from_numpy(remap[subset.labels.numpy()]),
        classes=names,
        name=f"{dataset.name}[{','.join(str(c) for c in chosen)}]",
        grayscale=dataset.grayscale,
        original_size=dataset.original_size,
        parts=subset.parts,
    )


def _with_test_data(
    dataset: ImageDataset, test_data: str | os.PathLike, image_size: int, seed: int, where: str
) -> ImageDataset:
    """``dataset`` with the images of ``test_data`` appended as its official test part, labelled by class name."""
    test_where = os.fspath(test_data)
    if "test" in dataset.part_counts():
        raise DataError(
            f"dataset '{where}' has its own test/ folder and a test source '{test_where}' was given too; "
            "drop --test-data (test_data) or the test/ folder"
        )
    test = load_dataset(test_where, image_size, seed=seed)
    if test.parts is not None:
        raise DataError(
            f"test source '{test_where}' has train/ / val/ / test/ folders itself; give the folder that holds "
            f"its class folders (e.g. {test_where}/test)"
        )
    if set(test.classes) != set(dataset.classes):
        extra = sorted(set(test.classes) - set(dataset.classes))
        missing = sorted(set(dataset.classes) - set(test.classes))
        what = f"has class {extra[0]!r} that the training data lacks" if extra else f"lacks class {missing[0]!r}"
        raise DataError(
            f"test source '{test_where}' {what} (training data '{where}': {', '.join(dataset.classes)}); the test "
            "data must have the same classes: add or rename the class"
        )
    relabel = torch.tensor([dataset.classes.index(name) for name in test.classes], dtype=torch.int64)
    parts = dataset.parts if dataset.parts is not None else np.full(len(dataset), "train")
    return ImageDataset(
        images=torch.cat([dataset.images, test.images]),
        labels=torch.cat([dataset.labels, relabel[test.labels]]),
        classes=dataset.classes,
        name=dataset.name,
        grayscale=dataset.grayscale and test.grayscale,
        original_size=dataset.original_size,
        parts=np.concatenate([parts, np.full(len(test), "test")]),
    )


def _list_path(text: str) -> tuple[FileListing, list[str] | None]:
    path = Path(text).expanduser()
    if path.is_dir():
        folders = official_part_folders(path)
        if folders is not None:
            return list_official_folder(path, folders)
        return list_image_folder(path), None
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"dataset source '{path}' is a file but not a .csv; {_SOURCE_HELP}")
        return list_csv(path), None
    if _looks_like_path(text):
        raise DataError(f"dataset path '{path}' does not exist; check the path (relative to {Path.cwd()})")
    raise DataError(f"unknown dataset source '{text}' (no such built-in dataset or path); {_SOURCE_HELP}")


def _load_files(
    listing: FileListing, parts: list[str] | None, where: str, image_size: int, per_class: int | None, seed: int
) -> ImageDataset:
    labels = np.asarray(listing.labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(listing.classes)).tolist()
    _check_classes(dict(zip(listing.classes, counts)), where)
    if parts is None:
        keep = select_per_class(labels, per_class, seed)
    else:  # per_class caps the training images; the official val and test sets stay whole
        parts = np.asarray(parts)
        train = np.flatnonzero(parts == "train")
        keep = np.sort(
            np.concatenate([train[select_per_class(labels[train], per_class, seed)], np.flatnonzero(parts != "train")])
        )
    images, grayscale, original_size = decode_files([listing.paths[i] for i in keep], image_size)
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(labels[keep]),
        classes=listing.classes,
        name=listing.name,
        grayscale=grayscale,
        original_size=original_size,
        parts=None if parts is None else parts[keep],
    )


def _check_classes(counts: dict[str, int], where: str) -> None:
    present = [name for name, count in counts.items() if count > 0]
    if len(present) < 2:
        found = f"only class {present[0]!r}" if present else "no images"
        raise DataError(
            f"dataset '{where}' has {found}; classification needs at least two classes: "
            "add another class (a sub-folder or label)"
        )


def _check_int(name: str, value, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise DataError(f"{name} must be a positive integer ({meaning}), got {value!r}")


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.startswith((".", "~")) or Path(text).suffix != ""
