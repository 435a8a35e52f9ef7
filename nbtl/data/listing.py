"""Listing a user's image files, with their labels, from a class-per-folder tree or a CSV.

Listing is cheap and happens before any image is decoded, so layout mistakes (an empty
class folder, a CSV row pointing nowhere) are reported at once, and ``per_class`` can
pick a subset before the expensive decoding.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nbtl.errors import DataError

logger = logging.getLogger(__name__)

#: A CSV listing of a million images is ~100 MB; a larger file is a mistake or an attack.
MAX_CSV_BYTES = 200_000_000


@dataclass
class FileListing:
    """Image files and their labels, not yet decoded."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    name: str


def image_extensions() -> tuple[str, ...]:
    """File extensions treated as images (torchvision's ``IMG_EXTENSIONS``)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def list_image_folder(root: Path) -> FileListing:
    """List an ImageFolder tree: ``root/<class name>/**/<image>``.

    Class names are the sub-folder names in sorted order, as in
    ``torchvision.datasets.ImageFolder``. Hidden entries (``.name``) are skipped, and so
    are files whose extension is not an image extension.

    Symbolic links are followed, but each real directory is walked once per class
    folder, so a link loop (``cat/again -> .``) cannot repeat images. A real file
    (same device and inode) reached by several paths inside one class folder, through
    links or hard links, is listed once, at the first path in sorted walk order, and a
    warning says how many paths were dropped: counting it twice would put the same
    image in train and test.

    Raises
    ------
    DataError
        If ``root`` has no class folders, a class folder holds no image, or one real
        image file is reached from two class folders (it would carry two labels).
    """
    extensions = image_extensions()
    with os.scandir(root) as scan:
        entries = sorted((entry for entry in scan if not entry.name.startswith(".")), key=_name)
    class_dirs = [entry for entry in entries if entry.is_dir()]
    if not class_dirs:
        if any(entry.name.lower().endswith(extensions) for entry in entries):
            problem = "holds images but no class folders"
        else:
            problem = "is empty" if not entries else "has no class folders"
        raise DataError(
            f"dataset directory '{root}' {problem}; put each class's images in its own "
            "sub-folder (root/<class>/<image>), as torchvision's ImageFolder expects"
        )
    paths: list[Path] = []
    labels: list[int] = []
    owner: dict[tuple[int, int], tuple[int, Path]] = {}  # real file -> (label, first path)
    for label, class_dir in enumerate(class_dirs):
        files = images_under(Path(class_dir.path), extensions)
        if not files:
            raise DataError(
                f"class folder '{class_dir.path}' holds no images (extensions "
                f"{', '.join(extensions)}); add images to it or remove the folder"
            )
        repeats: list[Path] = []
        for path in files:
            try:
                identity = _file_identity(path)
            except OSError as error:
                raise DataError(
                    f"image '{path}' cannot be read ({error.strerror}); fix the link or remove the file"
                ) from None
            if identity in owner:
                first_label, first_path = owner[identity]
                if first_label != label:
                    raise DataError(
                        f"image '{path}' (class '{class_dir.name}') is the same file as "
                        f"'{first_path}' (class '{class_dirs[first_label].name}'), reached through a "
                        "link; an image must belong to one class: remove the link or the copy"
                    )
                repeats.append(path)
                continue
            owner[identity] = (label, path)
            paths.append(path)
            labels.append(label)
        if repeats:
            logger.warning(
                "class folder '%s': %d paths lead to images already listed (links or hard links, "
                "e.g. '%s'); each image is counted once",
                class_dir.path,
                len(repeats),
                repeats[0],
            )
    return FileListing(paths, labels, [entry.name for entry in class_dirs], _folder_name(root))


#: Sub-folder names of an ImageFolder with official parts, and the part each one holds.
PART_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def official_part_folders(root: Path) -> dict[str, Path] | None:
    """The official parts of an ImageFolder ``root/{train,val,test}/<class>/<image>``, or None.

    ``root`` has official parts when its sub-folders are ``train`` and ``test`` and/or ``val`` (also
    spelt ``valid`` or ``validation``), nothing else, and ``train`` holds class folders (a dataset
    whose two classes happen to be called ``train`` and ``test`` holds images there instead).

    Raises
    ------
    DataError
        If ``train`` and ``test`` (or a val folder) sit next to other folders, or two val folders are given.
    """
    with os.scandir(root) as scan:
        folders = sorted(entry.name for entry in scan if not entry.name.startswith(".") and entry.is_dir())
    named = [name for name in folders if name.lower() in PART_FOLDERS]
    parts = {PART_FOLDERS[name.lower()] for name in named}
    if "train" not in parts or len(parts) < 2:
        return None
    train = next(root / name for name in named if PART_FOLDERS[name.lower()] == "train")
    with os.scandir(train) as scan:
        if not any(entry.is_dir() and not entry.name.startswith(".") for entry in scan):
            return None  # classes named train / test, holding images
    others = [name for name in folders if name not in named]
    if others:
        raise DataError(
            f"dataset directory '{root}' has official part folders ({', '.join(named)}) and also '{others[0]}'; "
            "keep only train/, test/ and val/ there (each holding one folder per class)"
        )
    if len(named) != len(parts):
        raise DataError(
            f"dataset directory '{root}' has two folders for one part ({', '.join(named)}); keep one val folder"
        )
    return {PART_FOLDERS[name.lower()]: root / name for name in named}


def list_official_folder(root: Path, folders: dict[str, Path]) -> tuple[FileListing, list[str]]:
    """List each official part folder (an ImageFolder tree) of ``root``; return one listing and the part
    of each file.

    Raises
    ------
    DataError
        If the parts' class folders differ, or one real image sits in two parts.
    """
    listings = {part: list_image_folder(folder) for part, folder in folders.items()}
    train = listings["train"]
    for part, listing in listings.items():
        if listing.classes != train.classes:
            extra = sorted(set(listing.classes) - set(train.classes))
            missing = sorted(set(train.classes) - set(listing.classes))
            what = f"has class folder {extra[0]!r} that train/ lacks" if extra else f"lacks class folder {missing[0]!r}"
            raise DataError(
                f"dataset directory '{root}': {folders[part].name}/ {what}; train/, val/ and test/ must hold the "
                "same class folders: add or rename the folder"
            )
    paths, labels, parts = [], [], []
    seen: dict[tuple[int, int], tuple[str, Path]] = {}
    for part in ("train", "val", "test"):
        if part not in listings:
            continue
        for path, label in zip(listings[part].paths, listings[part].labels):
            identity = _file_identity(path)
            if identity in seen and seen[identity][0] != part:
                raise DataError(
                    f"image '{path}' ({part}) is the same file as '{seen[identity][1]}' ({seen[identity][0]}); "
                    "an image must be in one part: remove the copy or the link"
                )
            seen[identity] = (part, path)
            paths.append(path)
            labels.append(label)
            parts.append(part)
    return FileListing(paths, labels, train.classes, _folder_name(root)), parts


def list_csv(csv_path: Path) -> FileListing:
    """List the images named by a CSV with a header line ``path,label``.

    Relative paths are taken from the CSV's folder. Classes are the distinct labels,
    sorted numerically when all of them are integers and alphabetically otherwise.

    Two rows name the same image when their paths lead to the same real file (``a.png``,
    ``./a.png``, a link or a hard link to it). A row that repeats an earlier row's image
    and label is dropped, and a warning counts the dropped rows and names their lines:
    kept, a repeat would put one image in both train and test. An image under two
    different labels is refused, since no split can be right for it.

    Raises
    ------
    DataError
        If the header lacks ``path`` or ``label``, a row is incomplete, a file is missing,
        one image has two labels, or there are no rows.
    """
    size = csv_path.stat().st_size if csv_path.is_file() else 0
    if size > MAX_CSV_BYTES:
        raise DataError(
            f"CSV file '{csv_path}': {size:,} bytes, over the {MAX_CSV_BYTES:,} nbtl reads in a listing of images; "
            "give the right file, or split it"
        )
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            columns = [name.strip() for name in (reader.fieldnames or [])]
            missing = [name for name in ("path", "label") if name not in columns]
            if missing:
                raise DataError(
                    f"CSV '{csv_path}' has columns {columns} but lacks {missing}; its first "
                    "line must be the header `path,label`"
                )
            reader.fieldnames = columns
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read CSV '{csv_path}': {error}; save it as UTF-8 text") from None

    entries: list[tuple[int, Path, str]] = []
    for line, row in rows:
        raw_path = (row.get("path") or "").strip()
        label = (row.get("label") or "").strip()
        if not raw_path or not label:
            raise DataError(
                f"CSV '{csv_path}' line {line}: empty path or label; give both on every row or delete the row"
            )
        entries.append((line, _resolve(csv_path, raw_path), label))
    if not entries:
        raise DataError(f"CSV '{csv_path}' has a header but no rows; add one `path,label` row per image")

    check_listed_files(csv_path, [(line, path) for line, path, _ in entries])
    entries = _drop_repeated_rows(csv_path, entries)
    classes = _sort_labels({label for _, _, label in entries})
    index = {name: position for position, name in enumerate(classes)}
    return FileListing(
        paths=[path for _, path, _ in entries],
        labels=[index[label] for _, _, label in entries],
        classes=classes,
        name=csv_path.stem,
    )


def _drop_repeated_rows(csv_path: Path, entries: list[tuple[int, Path, str]]) -> list[tuple[int, Path, str]]:
    """Drop rows repeating an earlier row's image and label; refuse an image with two labels."""
    first: dict[tuple[int, int], tuple[int, str]] = {}  # real file -> (line, label)
    kept, repeats = [], []
    for line, path, label in entries:
        identity = _file_identity(path)
        if identity not in first:
            first[identity] = (line, label)
            kept.append((line, path, label))
            continue
        first_line, first_label = first[identity]
        if first_label != label:
            raise DataError(
                f"CSV '{csv_path}' line {line}: image '{path}' has label {label!r} but line "
                f"{first_line} gives it label {first_label!r}; an image must have one label: "
                "delete the wrong row"
            )
        repeats.append((line, first_line))
    if repeats:
        shown = ", ".join(f"line {line} repeats line {earlier}" for line, earlier in repeats[:5])
        more = f", and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        logger.warning(
            "CSV '%s': dropped %d duplicate rows (%s%s); each image is used once",
            csv_path,
            len(repeats),
            shown,
            more,
        )
    return kept


def check_listed_files(csv_path: Path, rows: list[tuple[int, Path]]) -> None:
    """One :class:`DataError` naming the first of the CSV's ``(line, path)`` rows whose file is not there."""
    missing = [(line, path) for line, path in rows if not path.is_file()]
    if missing:
        line, path = missing[0]
        more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise DataError(
            f"CSV '{csv_path}' line {line}: image file '{path}' not found{more}; paths are relative "
            "to the CSV's folder or absolute: fix the path or delete the row"
        )


def images_under(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files under ``folder``, following links but entering each real directory once."""
    files = []
    visited = {_file_identity(folder)}
    for parent, dirs, names in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(name for name in dirs if not name.startswith(".")):
            try:
                identity = _file_identity(Path(parent) / name)
            except OSError:  # a dangling link: os.walk would list it but cannot enter it
                continue
            if identity not in visited:
                visited.add(identity)
                kept.append(name)
        dirs[:] = kept
        files.extend(
            Path(parent) / name
            for name in sorted(names)
            if not name.startswith(".") and name.lower().endswith(extensions)
        )
    return files


def _file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of the real file or directory ``path`` leads to, links followed."""
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _name(entry: os.DirEntry) -> str:
    return entry.name


def _resolve(csv_path: Path, raw_path: str) -> Path:
    path = Path(raw_path).expanduser()
    return path if path.is_absolute() else csv_path.parent / path


def _sort_labels(labels: set[str]) -> list[str]:
    if all(re.fullmatch(r"[+-]?\d+", label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def _folder_name(root: Path) -> str:
    return root.resolve().name or str(root)
