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

On disk an entry is one ``torch.save`` file of plain tensors, read back with
``torch.load(..., weights_only=True)``, written to a temporary file and renamed into place under a
file lock, so concurrent trials in other processes (Ray workers on one node, or nodes sharing the
directory) compute an entry once and the others load it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nbtl.data import Splits, make_augmentation
from nbtl.errors import ConfigError, ensure_room, raise_if_disk_full
from nbtl.features.keys import dataset_fingerprint, weights_hash

__all__ = ["PrefixEntry", "PrefixStore"]


def _nbytes(value: Any) -> int:
    """The bytes of the tensors in ``value`` (nested dicts, lists, tuples): about what ``torch.save`` writes."""
    if isinstance(value, Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


logger = logging.getLogger(__name__)

#: Bumped whenever what an entry holds (or how it is computed) changes, so old files are not reused.
CACHE_FORMAT = 1
# Images per forward pass: on CPU small batches keep activations in cache (Lite0 at 64 px: 32 images
# run 2x faster than 256); accelerators want large ones.
_BATCH_SIZE = {"cpu": 32}
_DEFAULT_BATCH_SIZE = 256
_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


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
        The entry's file, None for an in-memory store.
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
        Largest entry to compute or load (and the most this store keeps in memory); a larger one is
        refused with a logged warning and :meth:`get` returns None, so the trial runs uncached.
    dtype : torch.dtype, default=torch.float32
        Stored precision (float32, float16 or bfloat16); trials cast batches back to float32.

    Notes
    -----
    Entries are also kept in this object's memory (least recently used dropped beyond
    ``max_bytes``); a pickled store (e.g. shipped to Ray workers) starts with an empty memory.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        views: int = 4,
        seed: int = 0,
        max_bytes: int = 2 * 2**30,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"prefix store views must be an integer >= 1, got {views!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"prefix store seed must be an integer >= 0, got {seed!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"prefix store max_bytes must be a positive integer, got {max_bytes!r}")
        if dtype not in _DTYPES:
            raise ConfigError(f"prefix store dtype must be one of {', '.join(_DTYPES.values())}, got {dtype!r}")
        self.directory = None if directory is None else Path(directory).expanduser()
        self.views, self.seed, self.max_bytes, self.dtype = views, seed, max_bytes, dtype
        self._memory: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"PrefixStore(directory={self.directory}, views={self.views}, seed={self.seed}, "
            f"max_bytes={self.max_bytes}, dtype={_DTYPES[self.dtype]})"
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
    ) -> PrefixEntry | None:
        """The entry for ``model``'s blocks ``[0, blocks)`` on ``splits``: from memory, from disk, or computed.

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

        Returns
        -------
        PrefixEntry or None
            None when the entry would exceed ``max_bytes`` (a warning is logged).
        """
        started = time.perf_counter()
        num_blocks = len(model.blocks)
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= num_blocks:
            raise ConfigError(f"prefix blocks must be an integer in 1..{num_blocks}, got {blocks!r}")
        transform = make_augmentation(augmentation)
        views = 1 if transform is make_augmentation(None) else self.views  # the identity: one clean view
        key = self._key(model, splits, blocks, transform, views, state_dict)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        with self._lock:
            cached = self._memory.get(digest)
            if cached is not None:
                self._memory.move_to_end(digest)
                return dataclasses.replace(cached, hit=True, seconds=0.0)

        nbytes = self._estimate_bytes(model, splits, blocks, views)
        if nbytes > self.max_bytes:
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
            entry = self._compute(model, splits, blocks, transform, views, key, digest)
        else:
            from filelock import FileLock

            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{key['backbone']}-b{blocks}-{key['image_size']}px-v{views}-{digest[:16]}.pt"
            entry = self._load(path, key, digest)
            if entry is None:
                with FileLock(f"{path}.lock"):
                    entry = self._load(path, key, digest)  # another process may have written it meanwhile
                    if entry is None:
                        entry = self._compute(model, splits, blocks, transform, views, key, digest)
                        self._save(entry, path)
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

    def _key(
        self, model, splits: Splits, blocks: int, transform, views: int, state_dict: Mapping[str, Tensor] | None
    ) -> dict[str, Any]:
        if state_dict is not None:
            weights = weights_hash(state_dict)
        else:
            from nbtl.fit.features import state_dict_hash

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
    def _estimate_bytes(self, model, splits: Splits, blocks: int, views: int) -> int:
        device = next(model.parameters()).device
        with _eval_mode(model):
            sample = model.forward_to(splits.train.images[:1].to(device), blocks)
        per_image = sample[0].numel() * torch.empty((), dtype=self.dtype).element_size()
        return per_image * (views * len(splits.train) + len(splits.val) + len(splits.test))

    @torch.no_grad()
    def _compute(
        self, model, splits: Splits, blocks: int, transform, views: int, key: dict[str, Any], digest: str
    ) -> PrefixEntry:
        device = next(model.parameters()).device
        # The augmentation draws from torch's global generator: seed it here, inside fork_rng so the
        # caller's RNG stream is untouched, and every trial of the search sees the same views.
        with _eval_mode(model), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            train = None
            for view in range(views):
                images = splits.train.images
                if view > 0:
                    images = torch.stack([transform(image) for image in images])
                outputs = self._run(model, images, blocks, device)
                if train is None:
                    train = torch.empty((views, *outputs.shape), dtype=self.dtype)
                train[view] = outputs
            val = self._run(model, splits.val.images, blocks, device)
            test = self._run(model, splits.test.images, blocks, device)
        return PrefixEntry(blocks, train, val, test, key, digest)

    def _run(self, model, images: Tensor, blocks: int, device: torch.device) -> Tensor:
        size = _BATCH_SIZE.get(device.type, _DEFAULT_BATCH_SIZE)
        parts = []
        for start in range(0, len(images), size):
            # The last batch is the last `size` images, not a short remainder: kernels for short batches
            # round differently (1e-5), and a trial's training amplifies that into other metrics.
            window = max(0, min(start, len(images) - size))
            outputs = model.forward_to(images[window : start + size].to(device), blocks)
            parts.append(outputs[start - window :].to("cpu", self.dtype))
        return torch.cat(parts)

    def _load(self, path: Path, key: dict[str, Any], digest: str) -> PrefixEntry | None:
        if not path.exists():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("key") != json.dumps(key, sort_keys=True):
                raise ValueError("its key differs from the requested one")
            return PrefixEntry(
                int(stored["blocks"]), stored["train"], stored["val"], stored["test"], key, digest, hit=True
            )
        except Exception as error:  # a torn or foreign file: compute the entry again and replace it
            logger.warning("prefix cache: ignoring unreadable entry %s (%s: %s)", path, type(error).__name__, error)
            return None

    def _save(self, entry: PrefixEntry, path: Path) -> None:
        payload = {
            "key": json.dumps(entry.key, sort_keys=True),
            "blocks": entry.blocks,
            "train": entry.train,
            "val": entry.val,
            "test": entry.test,
        }
        ensure_room(path.parent, _nbytes(payload), "a prefix cache entry")
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            torch.save(payload, temporary)
            os.replace(temporary, path)
        except BaseException as error:
            Path(temporary).unlink(missing_ok=True)
            raise_if_disk_full(error, temporary)  # torch.save's "enforce fail" on a full disk, said as ENOSPC
            raise

    def _remember(self, entry: PrefixEntry) -> None:
        with self._lock:
            self._memory[entry.digest] = entry
            self._memory.move_to_end(entry.digest)
            while len(self._memory) > 1 and sum(e.nbytes for e in self._memory.values()) > self.max_bytes:
                self._memory.popitem(last=False)


class _eval_mode:
    """Context manager: every module of ``model`` in eval mode, each module's own mode restored after."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.modes = [(module, module.training) for module in self.model.modules()]
        for module, _ in self.modes:
            module.training = False

    def __exit__(self, *exc) -> None:
        for module, training in self.modes:
            module.training = training
