"""Decoded splits on disk: one memory-mapped uint8 array file per (data source, data settings).

A search decodes its images once into ``<storage>/nbtl_data/<key>/``: ``images.npy`` (uint8, ``(N, 3, S, S)``,
ordered train | val | test), ``labels.npy``, ``indices.npy`` (each image's position in the loaded dataset) and
``meta.json`` (classes, split sizes, official parts, fingerprints, the MLflow dataset input). Every trial, start
point and re-evaluation maps that file: each split is a contiguous view of one mapping (no copy), the page cache
holds the pixels once per node, and pickling the splits (``tune.with_parameters``, ``ray.put``) sends the folder's
path, not the images. The mapping is copy-on-write: whatever a process writes into its images stays in its own
pages, and the file never changes. A second search with the same source and settings reuses the file; two that
start together build it once (a file lock). A node that cannot see the folder (storage not shared between nodes)
builds its own copy there from the source when it first unpickles the splits.

The file is written with bounded memory (:func:`decode_to_file`): a large dataset is decoded into a memory-mapped
file beside it (:func:`nbtl.data.images.decode_to_disk`), split by position, and copied in a chunk at a time.

The key is a hash of what decides the pixels and the split: the source (a built-in's name, or a local folder's
or file's resolved path with every file's relative path, size and modification time), the test source likewise,
and the data settings but the augmentation (which is applied per batch, not stored).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nbtl.data.dataset import ImageDataset
from nbtl.data.describe import describe_dataset
from nbtl.data.images import decode_to_disk, release_pages, track_mapping
from nbtl.data.settings import DataSettings
from nbtl.data.sources import load_dataset
from nbtl.data.splits import Splits, split_dataset, split_positions, stratified_sample
from nbtl.errors import DataError, ensure_room

logger = logging.getLogger(__name__)

#: Bumped when the folder's layout changes: a folder of another format is rebuilt, never misread.
FORMAT = 1
#: The folder under a search's storage path that holds the decoded data files.
DATA_DIR = "nbtl_data"
PARTS = ("train", "val", "test")


@dataclass(repr=False)
class MappedSplits(Splits):
    """:class:`Splits` whose images are views of one memory-mapped file; pickled as where to find it.

    ``folder`` is the data file's folder, ``source`` and ``settings`` (data settings as MLflow params) what
    builds it again on a node that cannot see it; ``meta`` is its ``meta.json``.
    """

    folder: str = ""
    source: str | None = None
    settings: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None
    subsample: dict[str, Any] | None = None  # a subsample's parent folder, fraction and seed (:func:`subsample_splits`)

    def __reduce__(self):
        return (open_splits, (self.folder, self.source, self.settings, self.subsample))

    def __repr__(self) -> str:
        counts = " / ".join(f"{p} {len(getattr(self, p))}" for p in PARTS)
        return f"MappedSplits({self.folder}: {counts}, {self.train.image_size}px)"


def source_identity(source: str | os.PathLike | None) -> list | None:
    """What a data file's key knows of ``source``: a local file's or folder's resolved path with each file's
    relative path, size and modification time (a changed, added or removed image changes it), else its name."""
    if source is None:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        return ["name", str(source)]
    if path.is_file():
        stat = path.stat()
        return ["file", str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    files = []
    for root, _, names in os.walk(path):
        for name in names:
            stat = os.stat(os.path.join(root, name))
            files.append([os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns])
    return ["folder", str(path.resolve()), sorted(files)]


def data_key(source: str | os.PathLike, settings) -> str:
    """The key of the data file of ``source`` under ``settings`` (:class:`nbtl.data.settings.DataSettings`)."""
    params = {k: v for k, v in settings.to_params().items() if k != "augmentation"}
    params["test_data"] = source_identity(settings.test_data)
    payload = json.dumps({"format": FORMAT, "source": source_identity(source), "settings": params}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def write_splits(splits: Splits, folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``splits`` as a data file folder ``folder`` (atomically: a folder beside it, then renamed), with
    ``meta`` (e.g. the MLflow dataset input) added to its ``meta.json``; return the folder."""
    folder = Path(folder)
    parts = [getattr(splits, p) for p in PARTS]
    size = splits.train.image_size
    total = sum(len(part) for part in parts)
    folder.parent.mkdir(parents=True, exist_ok=True)
    ensure_room(folder.parent, total * 3 * size * size + 2**20, "the decoded images")
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        images = np.lib.format.open_memmap(
            staging / "images.npy", mode="w+", dtype=np.uint8, shape=(total, 3, size, size)
        )
        offset = 0
        for part in parts:
            images[offset : offset + len(part)] = part.images.numpy()
            offset += len(part)
        images.flush()
        del images
        np.save(staging / "labels.npy", np.concatenate([part.labels.numpy() for part in parts]).astype(np.int64))
        if splits.indices is not None:
            np.save(staging / "indices.npy", np.concatenate([splits.indices[p] for p in PARTS]).astype(np.int64))
        _publish(staging, folder, dict(zip(PARTS, parts)), meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _publish(staging: Path, folder: Path, parts: dict[str, ImageDataset], meta: dict[str, Any] | None) -> None:
    """Write ``meta.json`` (the parts' names, classes, sizes, official parts and fingerprints, and ``meta``) into
    the complete ``staging`` folder and rename it to ``folder``."""
    first = parts["train"]
    document = {
        "format": FORMAT,
        "name": first.name,
        "classes": list(first.classes),
        "grayscale": bool(first.grayscale),
        "original_size": list(first.original_size),
        "image_size": int(first.image_size),
        "counts": {p: len(parts[p]) for p in PARTS},
        "parts": {p: None if parts[p].parts is None else parts[p].parts.tolist() for p in PARTS},
        "fingerprints": {p: parts[p].fingerprint() for p in PARTS},
        **(meta or {}),
    }
    (staging / "meta.json").write_text(json.dumps(document))
    try:
        os.replace(staging, folder)
    except OSError:  # another process wrote the same key first: its folder is as good as ours
        if not (folder / "meta.json").exists():
            raise


def write_positions(
    dataset: ImageDataset,
    positions: dict[str, np.ndarray],
    folder: str | os.PathLike,
    meta: dict[str, Any] | None = None,
    indices: np.ndarray | None = None,
) -> Path:
    """:func:`write_splits` of the parts of ``dataset`` at ``positions`` (sorted), copied into the data file a chunk
    of images at a time: a memory-mapped ``dataset`` (:func:`nbtl.data.images.decode_to_disk`) is never in memory
    whole. The same file as ``write_splits(split_dataset(...))`` writes. ``indices`` gives each image of ``dataset``
    its position in the loaded dataset (default: its own position)."""
    folder = Path(folder)
    order = {p: np.sort(np.asarray(positions[p], dtype=np.int64)) for p in PARTS}
    size, total = dataset.image_size, sum(len(order[p]) for p in PARTS)
    folder.parent.mkdir(parents=True, exist_ok=True)
    ensure_room(folder.parent, total * 3 * size * size + 2**20, "the decoded images")
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        images = track_mapping(
            np.lib.format.open_memmap(staging / "images.npy", mode="w+", dtype=np.uint8, shape=(total, 3, size, size))
        )
        source, offset, step = dataset.images.numpy(), 0, max(1, 2**26 // (3 * size * size))
        for part in PARTS:
            for start in range(0, len(order[part]), step):
                chunk = order[part][start : start + step]
                images[offset : offset + len(chunk)] = source[chunk]
                # both files' pages out of this process once copied (a decoded file is tracked too)
                release_pages(source[chunk[0] : chunk[-1] + 1])
                release_pages(images[offset : offset + len(chunk)])
                offset += len(chunk)
        images.flush()
        labels = dataset.labels.numpy()
        np.save(staging / "labels.npy", np.concatenate([labels[order[p]] for p in PARTS]).astype(np.int64))
        where = np.concatenate([order[p] for p in PARTS]).astype(np.int64)
        np.save(staging / "indices.npy", where if indices is None else np.asarray(indices, dtype=np.int64)[where])
        views, start = {}, 0
        for part in PARTS:
            end = start + len(order[part])
            views[part] = ImageDataset(
                torch.from_numpy(images[start:end]),
                torch.from_numpy(labels[order[part]]),
                dataset.classes,
                dataset.name,
                dataset.grayscale,
                dataset.original_size,
                None if dataset.parts is None else dataset.parts[order[part]],
            )
            start = end
        _publish(staging, folder, views, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def open_splits(
    folder: str | os.PathLike,
    source: str | None = None,
    settings: dict[str, Any] | None = None,
    subsample: dict[str, Any] | None = None,
) -> MappedSplits:
    """The splits of the data file ``folder``, memory-mapped (copy-on-write). Where the folder is missing and
    ``source`` and ``settings`` (data settings as MLflow params) are given, it is built first, from the source; a
    subsample's folder (``subsample``: its parent folder, fraction and seed) from its parent's, built first if need
    be."""
    folder = Path(folder)
    if subsample is not None and not (folder / "meta.json").exists():
        parent = open_splits(subsample["parent"], source, settings)
        logger.info("data file %s is not on this node: drawing it from %s here", folder, parent.folder)
        return subsample_splits(parent, subsample["fraction"], subsample["seed"])
    if not (folder / "meta.json").exists():
        if source is None or settings is None:
            raise DataError(
                f"data file {folder}: not found; run the search again to decode its images (or give a --storage-path "
                "that every node can read)"
            )
        logger.info("data file %s is not on this node: decoding %s here", folder, source)
        ensure_splits(source, DataSettings.from_params(settings), folder.parent, key=folder.name)
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"data file {folder}: format {meta.get('format')!r}, not {FORMAT}; remove that folder")
    # tracked: a trial reading a file larger than memory drops the pages it read (nbtl.data.images.release_pages)
    images = torch.from_numpy(track_mapping(np.load(folder / "images.npy", mmap_mode="c")))
    labels = torch.from_numpy(np.load(folder / "labels.npy"))
    indices = np.load(folder / "indices.npy") if (folder / "indices.npy").exists() else None
    parts, positions, start = {}, {}, 0
    for part in PARTS:
        end = start + int(meta["counts"][part])
        official = meta["parts"][part]
        dataset = ImageDataset(
            images=images[start:end],
            labels=labels[start:end],
            classes=meta["classes"],
            name=meta["name"],
            grayscale=meta["grayscale"],
            original_size=tuple(meta["original_size"]),
            parts=None if official is None else np.asarray(official, dtype=str),
        )
        dataset.known_fingerprint = meta["fingerprints"][part]
        parts[part] = dataset
        if indices is not None:
            positions[part] = indices[start:end]
        start = end
    return MappedSplits(
        parts["train"],
        parts["val"],
        parts["test"],
        indices=positions or None,
        folder=str(folder),
        source=source if source is not None else meta.get("source"),
        settings=settings if settings is not None else meta.get("settings"),
        meta=meta,
        subsample=subsample if subsample is not None else meta.get("subsample"),
    )


#: Where the images a subsample keeps are written: ``<parent folder>-sub<key>`` beside its parent.
SUBSAMPLE_SUFFIX = "-sub"


def subsample_positions(
    splits: Splits, fraction: float, seed: int, keep: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Each part's positions that :func:`subsample_splits` keeps: ``fraction`` of each part (rounded, at least one
    image of every class the part holds), stratified by class with ``seed``
    (:func:`nbtl.data.splits.stratified_sample`); the parts named in ``keep`` whole."""
    positions = {}
    for part in PARTS:
        labels = getattr(splits, part).labels.numpy()
        if part in keep or fraction >= 1:
            positions[part] = np.arange(len(labels))
        else:
            count = max(len(np.unique(labels)), round(len(labels) * fraction))
            positions[part] = stratified_sample(labels, count, seed)
    return positions


def official_test(splits: Splits) -> tuple[str, ...]:
    """``("test",)`` when the test part of ``splits`` is the source's official test set, else ``()``."""
    parts = splits.test.parts
    return ("test",) if parts is not None and len(parts) and bool((np.asarray(parts) == "test").all()) else ()


def subsample_splits(splits: Splits, fraction: float, seed: int, keep: tuple[str, ...] | None = None) -> Splits:
    """``fraction`` of the images of ``splits`` (:func:`subsample_positions`), the same for every image size of the
    same data and seed. The parts in ``keep`` stay whole (default: an official test set, :func:`official_test`: the
    images the user measures on). A data file's subsample is a data file of its own beside it (``<folder>-sub<key>``, written once, a
    chunk at a time, and mapped like any: every trial shares its pages); in-memory splits give in-memory copies."""
    if keep is None:
        keep = official_test(splits)
    positions = subsample_positions(splits, fraction, seed, keep)
    if not isinstance(splits, MappedSplits):
        indices = None if splits.indices is None else {p: splits.indices[p][positions[p]] for p in PARTS}
        return Splits(**{p: getattr(splits, p).subset(positions[p]) for p in PARTS}, indices=indices)
    parent = Path(splits.folder)
    spec = {"parent": str(parent), "fraction": float(fraction), "seed": int(seed)}
    key = hashlib.sha256(json.dumps({**spec, "parent": parent.name, "keep": sorted(keep)}).encode()).hexdigest()[:12]
    folder = parent.with_name(f"{parent.name}{SUBSAMPLE_SUFFIX}{key}")
    if not (folder / "meta.json").exists():
        from filelock import FileLock

        with FileLock(str(folder) + ".lock"):
            if not (folder / "meta.json").exists():
                _write_subsample(splits, positions, folder, spec)
    return open_splits(folder, splits.source, splits.settings, spec)


def _write_subsample(
    splits: MappedSplits, positions: dict[str, np.ndarray], folder: Path, spec: dict[str, Any]
) -> None:
    """The data file of ``splits``' images at ``positions`` (per part), copied a chunk at a time from the parent's
    file; its ``indices.npy`` keeps each image's position in the loaded dataset."""
    parent = Path(splits.folder)
    images = torch.from_numpy(track_mapping(np.load(parent / "images.npy", mmap_mode="c")))
    labels = torch.from_numpy(np.load(parent / "labels.npy"))
    first = splits.train
    parts = [np.asarray(getattr(splits, p).parts) for p in PARTS if getattr(splits, p).parts is not None]
    whole = ImageDataset(
        images=images,
        labels=labels,
        classes=list(first.classes),
        name=first.name,
        grayscale=first.grayscale,
        original_size=first.original_size,
        parts=np.concatenate(parts) if len(parts) == len(PARTS) else None,
    )
    offsets = np.cumsum([0] + [len(getattr(splits, p)) for p in PARTS])
    where = {p: positions[p] + offsets[i] for i, p in enumerate(PARTS)}
    loaded = None
    if splits.indices is not None:
        loaded = np.concatenate([splits.indices[p] for p in PARTS])
    extra = {k: v for k, v in (splits.meta or {}).items() if k in ("source", "settings", "dataset", "input")}
    write_positions(whole, where, folder, {**extra, "subsample": spec}, indices=loaded)


def ensure_splits(
    source: str | os.PathLike,
    settings,
    root: str | os.PathLike,
    build: Callable[[], tuple[Splits, dict[str, Any]]] | None = None,
    key: str | None = None,
) -> tuple[Path, float | None]:
    """The data file of ``source`` under ``settings`` in ``root``: built once (``build()`` gives the splits and
    extra meta; default: :func:`decode_splits`), reused after.
    Returns the folder and the seconds the build took, None when the file was there already."""
    from filelock import FileLock

    root = Path(root)
    folder = root / (key or data_key(source, settings))
    if (folder / "meta.json").exists():
        return folder, None
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "meta.json").exists():  # another process built it while this one waited
            return folder, None
        started = time.perf_counter()
        where = {"source": _where(source), "settings": settings.to_params()}
        if build is None:
            decode_to_file(source, settings, folder, where)
        else:
            splits, extra = build()
            write_splits(splits, folder, {**where, **extra})
        return folder, time.perf_counter() - started


def decode_to_file(source, settings, folder: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """The data file of ``source`` under ``settings`` written to ``folder`` with bounded memory: the images decoded
    into a memory-mapped file beside it (:func:`nbtl.data.images.decode_to_disk`), split by position
    (:func:`nbtl.data.splits.split_positions`), copied into the data file a chunk at a time, the decoded file then
    removed. Its meta is :func:`decode_splits`'s."""
    from types import SimpleNamespace

    folder = Path(folder)
    spill = folder.with_name(f".{folder.name}.decoding-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with decode_to_disk(spill):
            dataset = load_dataset(source, **settings.load_kwargs())
        positions = {p: np.sort(v) for p, v in split_positions(dataset, **settings.split_kwargs()).items()}
        parts = SimpleNamespace(**positions, indices=positions)  # what describe_dataset reads of the splits
        described = describe_dataset(dataset, parts, os.fspath(source), settings.image_size, settings.test_data)
        extra = {"dataset": {"images": len(dataset), "official": dataset.part_counts()}, "input": described}
        write_positions(dataset, positions, folder, {**(meta or {}), **extra})
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return folder


def decode_splits(source, settings) -> tuple[Splits, dict[str, Any]]:
    """Load and split ``source`` under ``settings`` in memory; also the meta a data file keeps with them: the
    dataset's size and official parts, and its MLflow dataset input (:func:`nbtl.data.describe.describe_dataset`)."""
    dataset = load_dataset(source, **settings.load_kwargs())
    splits = split_dataset(dataset, **settings.split_kwargs())
    described = describe_dataset(dataset, splits, os.fspath(source), settings.image_size, settings.test_data)
    return splits, {"dataset": {"images": len(dataset), "official": dataset.part_counts()}, "input": described}


def _where(source) -> str:
    """A local source's absolute path (another process may run elsewhere), else the source as given."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else os.fspath(source)
