"""Frozen-backbone features at the end of every block, cached on disk, and a dataset's meta-features.

:func:`block_features` runs a backbone once over a dataset, in eval mode and without gradients,
and keeps each block's output pooled, ``(N, C_b)`` per block (maps globally averaged; ViT's tokens as its head
pools them, by the class token), plus the source
(ImageNet) head's softmax probabilities, which LEEP and NCE read. The result is cached as one
``.npz`` file (read back with ``np.load(allow_pickle=False)``; nothing is pickled) under a name
built from what determines the features: the backbone, a hash of the weights actually loaded,
the dataset's content fingerprint and the resolution. A second call with the same inputs reads
the file and runs no network (users ask for this: dino#141).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nbtl.backbones import create_backbone, get_spec, load_pretrained_state_dict
from nbtl.data import ImageDataset
from nbtl.data.images import release_pages
from nbtl.errors import BackboneError, ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["BlockFeatures", "block_features", "default_cache_dir", "meta_features", "state_dict_hash"]

#: Bumped whenever what is stored (or how it is computed) changes, so old files are not reused.
CACHE_FORMAT = 1


@dataclass(eq=False)
class BlockFeatures:
    """Pooled features of every block of one backbone on one dataset.

    Attributes
    ----------
    blocks : list of numpy.ndarray
        ``blocks[b]`` has shape ``(N, C_b)``, float32: block ``b``'s output pooled, maps by a global
        average, ViT tokens by the class token (the patch embedding by the mean of its patch tokens).
    source_probs : numpy.ndarray of shape (N, num_source_classes) or None
        Softmax of the source head's logits (float32); None when the backbone has no source head.
    labels : numpy.ndarray of shape (N,)
        The dataset's labels (int64), in the same order as the rows.
    backbone : str
        Registered backbone name.
    image_size : int
        Side in pixels of the images the backbone saw.
    weights_hash : str
        SHA-256 of the weights used (see :func:`state_dict_hash`).
    dataset_fingerprint : str
        :meth:`ImageDataset.fingerprint` of the dataset.
    cache_path : pathlib.Path or None
        The ``.npz`` file the features were read from or written to; None if caching was off.
    from_cache : bool
        True when the features were read from ``cache_path`` and no network ran.
    """

    blocks: list[np.ndarray]
    source_probs: np.ndarray | None
    labels: np.ndarray
    backbone: str
    image_size: int
    weights_hash: str
    dataset_fingerprint: str
    cache_path: Path | None = None
    from_cache: bool = field(default=False)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def feature_dims(self) -> list[int]:
        """``C_b`` of every block."""
        return [int(block.shape[1]) for block in self.blocks]

    def __repr__(self) -> str:
        source = "none" if self.source_probs is None else self.source_probs.shape[1]
        return (
            f"BlockFeatures(backbone={self.backbone!r}, n={len(self.labels)}, "
            f"image_size={self.image_size}, feature_dims={self.feature_dims}, "
            f"source_classes={source}, from_cache={self.from_cache})"
        )


def default_cache_dir() -> Path:
    """``$NBTL_CACHE_DIR/features`` if ``NBTL_CACHE_DIR`` is set, else
    ``${XDG_CACHE_HOME:-~/.cache}/nbtl/features``."""
    root = os.environ.get("NBTL_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "features"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "nbtl" / "features"


def state_dict_hash(state_dict: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict's contents: every key, dtype, shape and the tensor bytes, in key order.

    BatchNorm's ``num_batches_tracked`` counters are skipped: they do not change eval outputs,
    and files differ in whether they store them.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        if key.endswith("num_batches_tracked"):
            continue
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def block_features(
    dataset: ImageDataset,
    backbone_name: str,
    *,
    weights_path: str | os.PathLike | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> BlockFeatures:
    """The frozen backbone's pooled features at the end of every block, and its source probabilities.

    Images (uint8) are resized to ``image_size`` if needed (bilinear, antialiased), scaled to
    ``[0, 1]`` and normalised with the backbone's ``spec.mean`` / ``spec.std``, as
    :class:`~nbtl.transfer.model.TransferModel` does; the network runs in eval mode.

    Parameters
    ----------
    dataset : ImageDataset
        The images and labels (e.g. from :func:`nbtl.data.load_dataset`).
    backbone_name : str
        A registered backbone (see :func:`nbtl.backbones.list_backbones`).
    weights_path : str or path-like, optional
        A state dict file to use instead of the backbone's default pre-trained weights.
    state_dict : mapping of str to Tensor, optional
        Weights already in memory (Backbone or native key format), e.g. from
        :func:`nbtl.backbones.load_pretrained_state_dict`. Not together with ``weights_path``.
    image_size : int, optional
        Side in pixels the backbone sees; default: the dataset's own ``image_size``.
    batch_size : int, default=64
        Images per forward pass.
    cache_dir : str or path-like, optional
        Folder of the ``.npz`` cache; default :func:`default_cache_dir`
        (``$NBTL_CACHE_DIR/features`` or ``~/.cache/nbtl/features``).
    use_cache : bool, default=True
        False: neither read nor write the cache.
    device : str or torch.device, optional
        Where the network runs; default CUDA if available, else the CPU.
    progress : bool, default=True
        Show progress: a tqdm bar over batches on a terminal (stderr), else one log line when the extraction
        starts and one when it ends (a bar redrawn into a log file or a pipe is noise).

    Returns
    -------
    BlockFeatures
        ``blocks[b]`` of shape ``(N, C_b)`` for every block, ``source_probs`` of shape
        ``(N, spec.num_source_classes)`` (None if the backbone has no source head), labels.

    Raises
    ------
    BackboneError
        Unknown backbone, both ``weights_path`` and ``state_dict`` given, weights not found or
        not fitting.
    ConfigError
        Invalid ``image_size`` or ``batch_size``.
    DataError
        ``dataset`` is not an :class:`ImageDataset` or holds no images.
    """
    if not isinstance(dataset, ImageDataset):
        raise DataError(
            f"dataset must be an nbtl ImageDataset, got {type(dataset).__name__}; load it with nbtl.data.load_dataset"
        )
    if len(dataset) == 0:
        raise DataError(f"dataset '{dataset.name}' holds no images; load a dataset with images")
    spec = get_spec(backbone_name)
    size = dataset.image_size if image_size is None else _positive_int(image_size, "image_size", "e.g. 224")
    batch_size = _positive_int(batch_size, "batch_size", "e.g. 64")
    if weights_path is not None and state_dict is not None:
        raise BackboneError(
            f"block_features({backbone_name!r}) got both weights_path and state_dict; pass only one of them"
        )
    weights = load_pretrained_state_dict(backbone_name, weights_path) if state_dict is None else dict(state_dict)
    weights_hash = state_dict_hash(weights)
    fingerprint = dataset.fingerprint()
    key = {
        "format": CACHE_FORMAT,
        "backbone": backbone_name,
        "weights": weights_hash,
        "dataset": fingerprint,
        "image_size": size,
    }

    path = None
    if use_cache:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        path = folder / (f"{backbone_name}-{size}px-w{weights_hash[:16]}-d{fingerprint[:16]}-v{CACHE_FORMAT}.npz")
        cached = _read_cache(path, key, spec.num_blocks, len(dataset))
        if cached is not None:
            blocks, probs = cached
            return BlockFeatures(
                blocks,
                probs,
                dataset.labels.numpy().copy(),
                backbone_name,
                size,
                weights_hash,
                fingerprint,
                path,
                from_cache=True,
            )

    backbone = create_backbone(backbone_name, state_dict=weights)
    blocks, probs = _extract(backbone, dataset, size, batch_size, _device(device), progress)
    if path is not None:
        _write_cache(path, key, blocks, probs)
    return BlockFeatures(
        blocks,
        probs,
        dataset.labels.numpy().copy(),
        backbone_name,
        size,
        weights_hash,
        fingerprint,
        path,
        from_cache=False,
    )


def _positive_int(value, name: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}; {example}")
    return int(value)


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


#: Seconds between the progress lines of a long extraction when the output is not a terminal (no bar there).
PROGRESS_EVERY_S = 10.0


@torch.inference_mode()
def _extract(
    backbone, dataset: ImageDataset, size: int, batch_size: int, device: torch.device, progress: bool
) -> tuple[list[np.ndarray], np.ndarray | None]:
    from tqdm.auto import tqdm

    backbone = backbone.to(device).eval()
    mean = torch.tensor(backbone.spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.spec.std, device=device).view(1, 3, 1, 1)
    pooled: list[list[np.ndarray]] = [[] for _ in range(backbone.spec.num_blocks)]
    probs: list[np.ndarray] = []
    starts = range(0, len(dataset), batch_size)
    what = f"{backbone.spec.name} features @ {size}px"
    terminal = progress and sys.stderr.isatty()
    if progress and not terminal:
        logger.info("%s: %d images in %d batches", what, len(dataset), len(starts))
    began = said = time.perf_counter()
    bar = tqdm(starts, total=len(starts), desc=what, unit="batch", file=sys.stderr, disable=not terminal)
    for start in bar:
        images = dataset.images[start : start + batch_size].to(device)
        x = images.float() / 255.0
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        inputs = (x - mean) / std
        outputs = backbone.forward_blocks(inputs)
        for b, output in enumerate(outputs):
            before = inputs if b == 0 else outputs[b - 1]
            pooled[b].append(_pool_block(backbone, output, before, last=b == len(outputs) - 1).cpu().numpy())
        if backbone.source_head is not None:
            head_input = outputs[-1] if backbone.source_head_on_map else backbone.pool(outputs[-1])
            logits = backbone.source_head(head_input)
            probs.append(torch.softmax(logits.double(), dim=1).float().cpu().numpy())
        # after the batch is used: a data file's pages (read once) back to the page cache; nothing for images in memory
        release_pages(dataset.images[start : start + batch_size])
        if progress and not terminal and time.perf_counter() - said >= PROGRESS_EVERY_S:
            said = time.perf_counter()
            done = min(len(dataset), start + batch_size)
            logger.info("%s: %d of %d images, %.0fs", what, done, len(dataset), said - began)
    blocks = [np.concatenate(parts).astype(np.float32, copy=False) for parts in pooled]
    if progress and not terminal:
        logger.info("%s: done in %.1fs", what, time.perf_counter() - began)
    return blocks, (np.concatenate(probs) if probs else None)


def _pool_block(backbone, output: Tensor, block_input: Tensor, last: bool) -> Tensor:
    """One block's output as ``(N, C)`` features.

    Maps ``(N, C, H, W)`` are averaged over space (the last block's average is ``backbone.pool``'s
    global average pool). Tokens ``(N, 1 + L, D)`` (ViT, class token first) are pooled as the
    backbone's own head pools them: the class token. The class token of the block that makes the
    tokens (the patch embedding, whose input is not tokens) has not yet attended to any patch and
    is the same for every image, so that block gives the mean of its patch tokens instead.
    """
    if output.ndim == 4:
        return output.float().mean(dim=(2, 3))
    if last or output.ndim != 3:
        return backbone.pool(output).float().flatten(1)
    if block_input.ndim != 3:
        return output[:, 1:].float().mean(dim=1)
    return output[:, 0].float()


def _read_cache(path: Path, key: dict, num_blocks: int, n: int):
    """``(blocks, source_probs)`` from ``path`` if it exists and matches ``key``; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            for name, value in key.items():
                if str(stored[f"key_{name}"]) != str(value):
                    return None
            blocks = [stored[f"block_{b}"] for b in range(num_blocks)]
            probs = stored["source_probs"] if "source_probs" in stored.files else None
    except (OSError, ValueError, KeyError, EOFError):  # unreadable or partial file: recompute
        return None
    if any(block.ndim != 2 or len(block) != n for block in blocks):
        return None
    return blocks, probs


def _write_cache(path: Path, key: dict, blocks: list[np.ndarray], probs: np.ndarray | None) -> None:
    """Write atomically (temporary file, then rename), so parallel workers never read half a file;
    an unwritable cache only warns."""
    arrays = {f"key_{name}": np.array(str(value)) for name, value in key.items()}
    arrays.update({f"block_{b}": block for b, block in enumerate(blocks)})
    if probs is not None:
        arrays["source_probs"] = probs
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:  # the features are still returned; only the next call pays again
        warnings.warn(
            f"cannot write the feature cache {path} ({exc.strerror or exc}); set NBTL_CACHE_DIR or "
            "cache_dir to a writable folder, or pass use_cache=False",
            RuntimeWarning,
            stacklevel=3,
        )


def meta_features(dataset) -> dict:
    """Size, balance and resolution of a dataset, as plain numbers.

    Parameters
    ----------
    dataset : ImageDataset
        A dataset from :func:`nbtl.data.load_dataset`.

    Returns
    -------
    dict
        ``name``, ``n_images``, ``n_classes`` (``len(dataset.classes)``),
        ``images_per_class_min`` / ``_mean`` / ``_max`` (over all classes, empty ones counted),
        ``image_size`` (stored side in pixels), ``original_height`` / ``original_width``
        (median source size before resizing), ``grayscale``.
    """
    if not isinstance(dataset, ImageDataset):
        raise DataError(
            f"dataset must be an nbtl ImageDataset, got {type(dataset).__name__}; load it with nbtl.data.load_dataset"
        )
    counts = np.bincount(dataset.labels.numpy(), minlength=len(dataset.classes))
    return {
        "name": dataset.name,
        "n_images": len(dataset),
        "n_classes": len(dataset.classes),
        "images_per_class_min": int(counts.min()) if len(counts) else 0,
        "images_per_class_mean": float(counts.mean()) if len(counts) else 0.0,
        "images_per_class_max": int(counts.max()) if len(counts) else 0,
        "image_size": dataset.image_size,
        "original_height": dataset.original_size[0],
        "original_width": dataset.original_size[1],
        "grayscale": bool(dataset.grayscale),
    }
