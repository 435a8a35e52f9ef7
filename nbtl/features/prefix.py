"""The frozen-prefix store: outputs of blocks ``[0, k)`` for every image of a search's splits.

A trial with ``freeze_blocks = k`` runs blocks ``[0, k)`` in eval mode and never trains them, so their
output for an image is fixed by the backbone, its weights, ``k``, the image size and the image
itself. :class:`PrefixStore` computes those outputs once — for the train split ``V`` views per image
(view 0 the clean image, views ``1..V-1`` augmented with a generator seeded by the store's ``seed``),
for val and test the clean image — and every trial with the same prefix trains on them.

Honest augmentation: the augmented views are drawn once per search, not once per step. A trial
sees each image as one of ``V`` fixed views (the view picked per step by the trial's seed), which
is weaker augmentation than fresh random crops every epoch; with ``views=1`` or no augmentation
spec a cached trial trains on clean images only.

On disk an entry is a folder of plain arrays, ``train.npy``, ``val.npy``, ``test.npy`` (bfloat16 stored as its
16-bit pattern) and ``key.json``: computed batch by batch straight into memory-mapped files in a staging folder,
then renamed into place under a file lock, so concurrent trials in other processes (Ray workers on one node, or
nodes sharing the directory) compute an entry once and the others map it. Nothing is unpickled. A trial maps an
entry copy-on-write and reads it in batches, so an entry larger than the memory still serves its trials (the page
cache holds what fits); only an in-memory store (no directory) refuses an entry over its ``max_bytes``. With
``max_disk_bytes`` the directory is a least-recently-used cache: after an entry is written, the entries used longest
ago are removed until the rest fit (a process that still maps a removed entry keeps reading it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nbtl.data import Splits, make_augmentation
from nbtl.data.images import forget_mapping, track_mapping
from nbtl.errors import ConfigError, ensure_room, raise_if_disk_full
from nbtl.features.batches import as_tensor, copy_in_chunks, eval_mode, forward_in_batches
from nbtl.features.keys import dataset_fingerprint, weights_hash
from nbtl.fit.features import state_dict_hash

__all__ = ["PrefixEntry", "PrefixStore", "remove_staging"]


logger = logging.getLogger(__name__)

#: Bumped whenever what an entry holds (or how it is computed) changes, so old files are not reused.
CACHE_FORMAT = 2
#: An entry's arrays, and the file that holds its key (touched on every use: the least-recently-used clock).
PARTS, KEY_FILE = ("train", "val", "test"), "key.json"
_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
#: numpy's dtype of each stored precision (numpy has no bfloat16: its 16 bits are kept as they are).
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


@dataclass(eq=False)
class PrefixEntry:
    """The outputs of blocks ``[0, blocks)`` for one search's splits.

    Attributes
    ----------
    blocks : int
        ``k``: the entry holds the output of block ``k - 1``.
    train : Tensor of shape (V, N_train, ...)
        ``train[v, i]`` is view ``v`` of train image ``i`` through the prefix; view 0 is the clean
        image. The trailing shape is a block output's, e.g. ``(C, H, W)``. On CPU.
    val, test : Tensor of shape (N_val, ...), (N_test, ...)
        Clean images through the prefix, on CPU.
    key : dict
        What determines the entry (backbone, weights hash, ``k``, image size, data fingerprints,
        augmentation, views, seed, dtype, format).
    digest : str
        Hash of ``key``; names the file.
    hit : bool
        True when this call loaded the entry from the store's memory or disk, False when it computed it.
    seconds : float
        Time this call spent computing or loading the entry (0 for a memory hit).
    path : Path or None
        The entry's folder, None for an in-memory store.
    """

    blocks: int
    train: Tensor
    val: Tensor
    test: Tensor
    key: dict[str, Any]
    digest: str
    hit: bool = False
    seconds: float = 0.0
    path: Path | None = None

    @property
    def views(self) -> int:
        """``V``, the number of train views."""
        return int(self.train.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.train, self.val, self.test))


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _clean_key(key: dict[str, Any]) -> dict[str, Any]:
    """The key of the entry with the clean view only of the same prefix and data (as ``PrefixStore._key`` writes it
    for one view)."""
    return {**key, "augmentation": None, "views": 1}


class PrefixStore:
    """Computes, keeps and shares frozen-prefix outputs (see the module docstring).

    Parameters
    ----------
    directory : str or Path, optional
        Where entries are saved and looked up, shared by processes; None keeps them in memory only.
    views : int, default=4
        ``V``, train views per image when there is an augmentation (1 without one).
    seed : int, default=0
        Seeds the augmented views; every trial of a search shares them.
    max_bytes : int, default=2 GiB
        The most an in-memory store (``directory`` None) keeps, and the largest entry it computes: a larger one
        is refused with a logged warning and :meth:`get` returns None, so the trial runs uncached. Entries on
        disk are memory-mapped and have no such limit.
    dtype : torch.dtype, default=torch.float32
        Stored precision (float32, float16 or bfloat16); trials cast batches back to float32.
    max_disk_bytes : int, optional
        The most the directory's entries may take together: after an entry is written, those used longest ago
        are removed until the rest fit. None: no limit.

    Notes
    -----
    Entries are also kept in this object's memory (computed ones least recently used dropped beyond
    ``max_bytes``; mapped ones cost no memory of their own); a pickled store (e.g. shipped to Ray workers)
    starts with an empty memory.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        views: int = 4,
        seed: int = 0,
        max_bytes: int = 2 * 2**30,
        dtype: torch.dtype = torch.float32,
        max_disk_bytes: int | None = None,
    ) -> None:
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"prefix store views must be an integer >= 1, got {views!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"prefix store seed must be an integer >= 0, got {seed!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"prefix store max_bytes must be a positive integer, got {max_bytes!r}")
        if dtype not in _DTYPES:
            raise ConfigError(f"prefix store dtype must be one of {', '.join(_DTYPES.values())}, got {dtype!r}")
        if max_disk_bytes is not None and (
            isinstance(max_disk_bytes, bool) or not isinstance(max_disk_bytes, int) or max_disk_bytes < 1
        ):
            raise ConfigError(f"prefix store max_disk_bytes must be a positive integer or None, got {max_disk_bytes!r}")
        self.directory = None if directory is None else Path(directory).expanduser()
        self.views, self.seed, self.max_bytes, self.dtype = views, seed, max_bytes, dtype
        self.max_disk_bytes = max_disk_bytes
        self._memory: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"PrefixStore(directory={self.directory}, views={self.views}, seed={self.seed}, "
            f"max_bytes={self.max_bytes}, dtype={_DTYPES[self.dtype]}, max_disk_bytes={self.max_disk_bytes})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_memory"], state["_lock"] = OrderedDict(), None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get(
        self,
        model: torch.nn.Module,
        splits: Splits,
        blocks: int,
        *,
        augmentation: dict | None = None,
        state_dict: Mapping[str, Tensor] | None = None,
        clean_only: bool = False,
    ) -> PrefixEntry | None:
        """The entry for ``model``'s blocks ``[0, blocks)`` on ``splits``: from memory, from disk, or computed.

        ``clean_only`` (the linear probe, which needs no augmentation): the entry with every view when the store
        has it, else one with the clean view only (computed in a fraction of the time). An entry with every view
        computed later takes its clean view, val and test from that one and computes only the augmented views.

        Parameters
        ----------
        model : nbtl.transfer.TransferModel
            The trial's model; its first ``blocks`` blocks hold the pre-trained weights and are run
            in eval mode, without gradients, on the model's device (modes are restored after).
        splits : Splits
            Train / val / test uint8 images ``(N, 3, S, S)``.
        blocks : int
            ``k >= 1``.
        augmentation : dict, optional
            The search's augmentation spec (:func:`nbtl.data.make_augmentation`).
        state_dict : mapping, optional
            The pre-trained weights the model was built from; its hash (memoised per object) keys the
            entry. Without it the model's prefix weights are hashed.
        clean_only : bool, default=False
            Train view 0 is all the caller reads (see above).

        Returns
        -------
        PrefixEntry or None
            None when an in-memory store's entry would exceed ``max_bytes`` (a warning is logged).
        """
        started = time.perf_counter()
        num_blocks = len(model.blocks)
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= num_blocks:
            raise ConfigError(f"prefix blocks must be an integer in 1..{num_blocks}, got {blocks!r}")
        transform = make_augmentation(augmentation)
        views = 1 if transform is make_augmentation(None) else self.views  # the identity: one clean view
        key = self._key(model, splits, blocks, transform, views, state_dict)
        if views > 1 and clean_only:
            found = self._find(key)
            if found is not None:
                return found
            key, views = _clean_key(key), 1  # view 0 draws nothing from the transform
        digest = _digest(key)
        cached = self._from_memory(digest)
        if cached is not None:
            return cached
        shape = self._output_shape(model, splits, blocks)
        nbytes = (
            int(np.prod(shape)) * self.dtype.itemsize * (views * len(splits.train) + len(splits.val) + len(splits.test))
        )
        if self.directory is None and nbytes > self.max_bytes:
            logger.warning(
                "prefix cache: %s blocks [0, %d) at %dpx would take %.0f MiB > max_bytes %.0f MiB; "
                "training this trial uncached",
                key["backbone"],
                blocks,
                key["image_size"],
                nbytes / 2**20,
                self.max_bytes / 2**20,
            )
            return None

        path, entry = None, None
        if self.directory is None:
            entry = self._compute(model, splits, blocks, transform, views, key, digest, shape)
        else:
            from filelock import FileLock

            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._path(key, digest)
            entry = self._load(path, key, digest)
            if entry is None:
                with FileLock(f"{path}.lock"):
                    entry = self._load(path, key, digest)  # another process may have written it meanwhile
                    if entry is None:
                        ensure_room(self.directory, nbytes, "a prefix cache entry")
                        entry = self._compute_on_disk(model, splits, blocks, transform, views, key, digest, shape, path)
                self.evict(keep=path)
        entry.path, entry.seconds = path, time.perf_counter() - started
        self._remember(entry)
        logger.info(
            "prefix cache: %s blocks [0, %d) %s in %.1fs (%.0f MiB, %d views)%s",
            key["backbone"],
            blocks,
            "loaded" if entry.hit else "computed",
            entry.seconds,
            entry.nbytes / 2**20,
            views,
            f" at {path}" if path else "",
        )
        return entry

    def _from_memory(self, digest: str) -> PrefixEntry | None:
        with self._lock:
            cached = self._memory.get(digest)
            if cached is not None:
                self._memory.move_to_end(digest)
                return dataclasses.replace(cached, hit=True, seconds=0.0)
        return None

    def _find(self, key: dict[str, Any]) -> PrefixEntry | None:
        """The entry of ``key`` if the store's memory or directory holds it (nothing is computed)."""
        digest = _digest(key)
        entry = self._from_memory(digest)
        if entry is not None or self.directory is None:
            return entry
        path = self._path(key, digest)
        entry = self._load(path, key, digest)  # complete entries only: they are renamed into place
        if entry is not None:
            entry.path = path
            self._remember(entry)
        return entry

    def _path(self, key: dict[str, Any], digest: str) -> Path:
        return (
            self.directory / f"{key['backbone']}-b{key['blocks']}-{key['image_size']}px-v{key['views']}-{digest[:16]}"
        )

    def _key(
        self, model, splits: Splits, blocks: int, transform, views: int, state_dict: Mapping[str, Tensor] | None
    ) -> dict[str, Any]:
        if state_dict is not None:
            weights = weights_hash(state_dict)
        else:
            weights = "prefix:" + state_dict_hash(torch.nn.Sequential(*list(model.blocks)[:blocks]).state_dict())
        return {
            "format": CACHE_FORMAT,
            "backbone": model.backbone.spec.name,
            "weights": weights,
            "blocks": blocks,
            "image_size": splits.train.image_size,
            "data": [dataset_fingerprint(part) for part in (splits.train, splits.val, splits.test)],
            "augmentation": None if views == 1 else repr(transform),
            "views": views,
            "seed": self.seed,
            "dtype": _DTYPES[self.dtype],
        }

    @torch.no_grad()
    def _output_shape(self, model, splits: Splits, blocks: int) -> tuple[int, ...]:
        """The shape of one image's output of blocks ``[0, blocks)``."""
        device = next(model.parameters()).device
        with eval_mode(model):
            sample = model.forward_to(splits.train.images[:1].to(device), blocks)
        return tuple(sample.shape[1:])

    @torch.no_grad()
    def _compute(
        self,
        model,
        splits: Splits,
        blocks: int,
        transform,
        views: int,
        key: dict[str, Any],
        digest: str,
        shape: tuple[int, ...],
        allocate=None,
    ) -> PrefixEntry:
        """The entry, each batch's outputs written into ``allocate(part, shape)`` (default: memory). An entry with
        every view copies its clean view, val and test from the clean-view entry when the store has one."""
        allocate = allocate or (lambda part, full: torch.empty(full, dtype=self.dtype))
        clean = self._find(_clean_key(key)) if views > 1 else None
        if clean is not None:
            logger.info(
                "prefix cache: the clean view, val and test of blocks [0, %d) from the clean-view entry", blocks
            )
        device = next(model.parameters()).device
        train = allocate("train", (views, len(splits.train), *shape))
        val = allocate("val", (len(splits.val), *shape))
        test = allocate("test", (len(splits.test), *shape))
        # The augmentation draws from torch's global generator: seed it here, inside fork_rng so the
        # caller's RNG stream is untouched, and every trial of the search sees the same views.
        with eval_mode(model), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for view in range(views):
                if view == 0 and clean is not None:  # view 0 draws no random numbers: the augmented views stay the same
                    copy_in_chunks(train[0], clean.train[0])  # gigabytes at 224 px: their pages dropped as they go
                    continue
                # an augmented view is drawn a batch at a time, in order: its images are never all in memory
                forward_in_batches(
                    model, splits.train.images, blocks, device, train[view], transform=transform if view else None
                )
            for name, out, images in (("val", val, splits.val.images), ("test", test, splits.test.images)):
                if clean is not None:
                    copy_in_chunks(out, getattr(clean, name))
                else:
                    forward_in_batches(model, images, blocks, device, out)
        return PrefixEntry(blocks, train, val, test, key, digest)

    def _compute_on_disk(self, model, splits, blocks, transform, views, key, digest, shape, path: Path) -> PrefixEntry:
        """:meth:`_compute` into memory-mapped files of a staging folder, renamed to ``path`` when complete."""
        staging = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        staging.mkdir()
        arrays = []

        def allocate(part: str, full: tuple[int, ...]) -> Tensor:
            array = np.lib.format.open_memmap(staging / f"{part}.npy", mode="w+", dtype=_NUMPY[self.dtype], shape=full)
            # tracked: its written pages leave this process as it is written (batches.py)
            arrays.append(track_mapping(array))
            return as_tensor(array, self.dtype)

        try:
            entry = self._compute(model, splits, blocks, transform, views, key, digest, shape, allocate)
            for array in arrays:
                array.flush()
                forget_mapping(array)
            (staging / KEY_FILE).write_text(json.dumps(key, sort_keys=True))
            os.replace(staging, path)
            loaded = self._load(path, key, digest)  # served as every later trial is: read-only, tracked (a large
            if loaded is not None:  # entry's reader drops the pages it read, nbtl.feeds), not the writable mapping
                entry = dataclasses.replace(loaded, hit=False)
        except BaseException as error:
            for array in arrays:
                forget_mapping(array)
            shutil.rmtree(staging, ignore_errors=True)
            raise_if_disk_full(error, staging / "train.npy")
            raise
        return entry

    def _load(self, path: Path, key: dict[str, Any], digest: str) -> PrefixEntry | None:
        if not (path / KEY_FILE).exists():
            return None
        try:
            if (path / KEY_FILE).read_text() != json.dumps(key, sort_keys=True):
                raise ValueError("its key differs from the requested one")
            # copy-on-write: a trial's stray write stays in its own pages; the file never changes
            # tracked: a trial drops the pages an evaluation read, and those it trains on when the entry is larger
            # than LARGE_MAPPING_BYTES (nbtl.feeds)
            train, val, test = (
                as_tensor(track_mapping(np.load(path / f"{p}.npy", mmap_mode="c")), self.dtype) for p in PARTS
            )
            os.utime(path / KEY_FILE)  # used now: the last to be evicted
            return PrefixEntry(int(key["blocks"]), train, val, test, key, digest, hit=True)
        except Exception as error:  # a torn or foreign entry: compute it again and replace it
            logger.warning("prefix cache: ignoring unreadable entry %s (%s: %s)", path, type(error).__name__, error)
            shutil.rmtree(path, ignore_errors=True)
            return None

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the directory's entries used longest ago until the rest fit ``max_disk_bytes`` (never ``keep``);
        return the removed folders."""
        if self.directory is None or self.max_disk_bytes is None:
            return []
        entries = []
        for folder in self.directory.iterdir():
            if (folder / KEY_FILE).exists():
                try:
                    size = sum(f.stat().st_size for f in folder.iterdir())
                    entries.append(((folder / KEY_FILE).stat().st_mtime, size, folder))
                except OSError:  # removed by another process meanwhile
                    continue
        total, removed = sum(size for _, size, _ in entries), []
        for _, size, folder in sorted(entries):
            if total <= self.max_disk_bytes:
                break
            if keep is not None and folder == keep:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed.append(folder)
            logger.info("prefix cache: removed %s (%.0f MiB), used longest ago, to stay under %.0f MiB",
                        folder.name, size / 2**20, self.max_disk_bytes / 2**20)  # fmt: skip
        return removed

    def _remember(self, entry: PrefixEntry) -> None:
        with self._lock:
            self._memory[entry.digest] = entry
            self._memory.move_to_end(entry.digest)
            in_memory = [e for e in self._memory.values() if e.path is None]  # mapped entries cost no memory
            while len(in_memory) > 1 and sum(e.nbytes for e in in_memory) > self.max_bytes:
                dropped = next(d for d, e in self._memory.items() if e.path is None)
                del self._memory[dropped]
                in_memory = [e for e in self._memory.values() if e.path is None]


def remove_staging(directory: str | os.PathLike) -> int:
    """Remove the staging folders of entries whose writer never finished (a trial killed by the time budget or
    the scheduler while it computed one: gigabytes at 224 px) from the store in ``directory``; the bytes freed.
    Only for a store no trial is writing to any more, as at the end of its search."""
    freed = 0
    for staging in Path(directory).glob(".*.tmp") if Path(directory).is_dir() else ():
        if staging.is_dir():
            freed += sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
            shutil.rmtree(staging, ignore_errors=True)
            logger.info("prefix cache: removed %s, an entry its trial did not finish", staging.name)
    return freed
