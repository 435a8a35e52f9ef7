"""Memoised content hashes that key cached block outputs: weights and datasets.

Hashing Lite0's weights or a few thousand images takes tens of milliseconds; a search asks for the
same objects in every trial, so each hash is computed once per object and process. The memo keeps
the object itself (so its ``id`` cannot be reused) and at most a few entries. Objects are assumed
not to change in place once hashed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from nbtl.data import ImageDataset
from nbtl.fit.features import state_dict_hash

__all__ = ["dataset_fingerprint", "weights_hash"]

_MEMO_SIZE = 16


class _IdentityMemo:
    """``value = memo(obj, compute)``: ``compute(obj)`` once per live object, least recently used evicted."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[Any, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, obj: Any, compute: Callable[[Any], str]) -> str:
        with self._lock:
            entry = self._entries.get(id(obj))
            if entry is not None and entry[0] is obj:
                self._entries.move_to_end(id(obj))
                return entry[1]
        value = compute(obj)
        with self._lock:
            self._entries[id(obj)] = (obj, value)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


_weights_memo = _IdentityMemo(_MEMO_SIZE)
_dataset_memo = _IdentityMemo(_MEMO_SIZE)


def weights_hash(state_dict: Mapping[str, Tensor]) -> str:
    """:func:`nbtl.fit.features.state_dict_hash` of ``state_dict``, computed once per state dict object."""
    return _weights_memo(state_dict, state_dict_hash)


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """:meth:`ImageDataset.fingerprint`, computed once per dataset object."""
    return _dataset_memo(dataset, ImageDataset.fingerprint)
