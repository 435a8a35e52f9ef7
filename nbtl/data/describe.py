"""What a search or a trial trained on, as MLflow shows datasets: name, source, digest and profile."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nbtl.data.dataset import ImageDataset


def describe_dataset(
    dataset: ImageDataset, splits, source: str, image_size: int, test_source: str | None = None
) -> dict[str, Any]:
    """``name``, ``source_type`` / ``source`` (a folder's or CSV's URI, or the built-in's name), ``digest``
    (of the pixels, labels, class names and which image went to which split: equal digests mean the same
    images in the same splits) and ``profile`` (split sizes, classes, image size)."""
    digest = hashlib.sha256(dataset.fingerprint().encode())
    if splits.indices is not None:
        for part in ("train", "val", "test"):
            digest.update(part.encode() + splits.indices[part].astype("<i8").tobytes())
    else:
        for part in (splits.train, splits.val, splits.test):
            digest.update(part.fingerprint().encode())
    sources = [source] + ([test_source] if test_source else [])
    local = [Path(s).expanduser() for s in sources if Path(s).expanduser().exists()]
    if len(local) == len(sources):
        source_type, where = "local", {"uri": local[0].resolve().as_uri()}
        if test_source:
            where["test_uri"] = local[1].resolve().as_uri()
    else:
        source_type, where = "nbtl", {"name": source, **({"test": test_source} if test_source else {})}
    profile = {
        "images": len(dataset),
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test),
        "classes": len(dataset.classes),
        "image_size": int(image_size),
    }
    return {
        "name": dataset.name,
        "digest": digest.hexdigest()[:16],
        "source_type": source_type,
        "source": json.dumps(where),
        "profile": json.dumps(profile),
    }
