"""Where a trial's batches come from and how it is scored: its feeds (images, augmented on the CPU or on the
device, or block outputs from a frozen-prefix entry), the channels-last layout and mixed precision of CUDA, and the
evaluation of a model on images or cached inputs (loss, accuracy, F1, calibration).

Plain PyTorch and scikit-learn metrics: no Ray, no MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nbtl.data import ImageDataset, Splits
from nbtl.data.augment import BatchAugmentation
from nbtl.data.images import is_large_mapping, release_pages
from nbtl.features import PrefixEntry
from nbtl.fit.probe import expected_calibration_error
from nbtl.transfer import TransferModel

__all__ = [
    "BatchIndices",
    "Feed",
    "mixed_precision_dtype",
    "evaluate",
    "evaluate_inputs",
    "image_feed",
    "memory_format",
    "prefix_feed",
]

#: Training steps between drops of a large data file's pages from a trial (nbtl.data.images.release_pages).
RELEASE_STEPS = 16


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageDataset,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Loss, accuracy, macro-F1, weighted-F1 (scikit-learn metrics) and expected calibration error (``ece``,
    :func:`nbtl.fit.probe.expected_calibration_error`) of ``model`` on ``data``."""
    model.eval()
    return evaluate_inputs(model, data.images, data.labels, device, batch_size, amp_dtype)


@torch.no_grad()
def evaluate_inputs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """:func:`evaluate` of ``forward`` (a model in eval mode) on ``inputs`` (images or cached block outputs)."""
    losses, probabilities = [], []
    for start in range(0, len(labels), batch_size):
        batch = memory_format(inputs[start : start + batch_size].to(device, non_blocking=True), device)
        targets = labels[start : start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward(batch if batch.dtype == torch.uint8 else batch.float())
        losses.append(nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item())
        probabilities.append(logits.float().softmax(1).cpu())
    if inputs.dtype == torch.uint8 and is_large_mapping(inputs):
        release_pages(inputs.numpy())  # a large data file's pages: back to the page cache
    y_true = labels.numpy()
    p = torch.cat(probabilities).numpy()
    y_pred = p.argmax(1)
    return {
        "loss": sum(losses) / len(labels),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "ece": expected_calibration_error(p, y_true),
    }


def mixed_precision_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class BatchIndices(Dataset):
    """Indexed by a list of train indices (a whole batch): returns ``(indices, labels)`` tensors."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices)
        return indices, self.labels[indices]


@dataclass
class Feed:
    """Where one phase of a trial reads its inputs: images, or block outputs from a prefix entry.

    ``start_block`` is 0 for images, ``k`` for the output of block ``k - 1``, and ``num_blocks + 1``
    for pooled features (only the head runs).
    """

    start_block: int
    loader: DataLoader
    forward: Callable[[torch.Tensor], torch.Tensor]
    val: torch.Tensor
    test: torch.Tensor
    train: torch.Tensor | None = None  # (V, N, ...) cached inputs; None for images
    hit: bool = False
    images: torch.Tensor | None = None  # the train images, when ``items`` index them (augmented on the device)
    augment: BatchAugmentation | None = None
    release: bool = False  # the images are a large mapped file: drop its pages from this process as batches go
    steps: int = 0

    def batch(self, items: torch.Tensor, view_generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """The inputs of one training batch; ``items`` are images, or train indices into the images or the cache."""
        if self.images is not None:
            # gathered from the (memory-mapped) uint8 images, pinned, copied while the GPU works, augmented there
            batch = self.images[items]
            self.steps += 1
            if self.release and self.steps % RELEASE_STEPS == 0:
                release_pages(self.images.numpy())  # the pages read so far: the page cache keeps them, not the trial
            batch = (batch.pin_memory() if device.type == "cuda" else batch).to(device, non_blocking=True)
            if self.augment is not None:
                batch = self.augment(batch, view_generator)
            return memory_format(batch, device)
        if self.train is None:
            return memory_format(items.to(device, non_blocking=True), device)
        if len(self.train) == 1:
            views = torch.zeros(len(items), dtype=torch.long)
        else:
            views = torch.randint(len(self.train), (len(items),), generator=view_generator)
        inputs = self.train[views.to(self.train.device), items.to(self.train.device)]
        if device.type == "cuda" and inputs.device.type == "cpu":
            inputs = inputs.pin_memory()
        return memory_format(inputs.to(device, non_blocking=True).float(), device)


def memory_format(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``batch`` in channels-last layout on CUDA (where the model's weights are too: tensor cores read NHWC)."""
    if device.type == "cuda" and batch.ndim == 4:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


def image_feed(
    model: TransferModel,
    splits: Splits,
    loader: DataLoader,
    index_loader: DataLoader,
    augment: BatchAugmentation | None,
    on_device: bool,
) -> Feed:
    """Images: augmented one by one on the CPU by ``loader``, or (``on_device``) gathered by ``index_loader``'s
    batches of indices and augmented a batch at a time on the trial's device by ``augment``."""
    if on_device:
        release = is_large_mapping(splits.train.images)
        return Feed(
            0,
            index_loader,
            model,
            splits.val.images,
            splits.test.images,
            images=splits.train.images,
            augment=augment,
            release=release,
        )
    return Feed(0, loader, model, splits.val.images, splits.test.images)


def prefix_feed(model: TransferModel, entry: PrefixEntry, loader: DataLoader, device: torch.device) -> Feed:
    """Train above the cached prefix; with every block in it, on pooled features (computed here, once)."""
    blocks = entry.blocks
    if blocks < len(model.blocks):
        return Feed(
            blocks, loader, lambda x: model.forward_from(x, blocks), entry.val, entry.test, entry.train, entry.hit
        )

    @torch.no_grad()
    def pooled(outputs: torch.Tensor, lead: int = 1) -> torch.Tensor:
        """Pool block outputs ``(*lead_dims, *block_output_shape)`` to ``(*lead_dims, feature_dim)``, on ``device``."""
        flat = outputs.reshape(-1, *outputs.shape[lead:])
        parts = [model.backbone.pool(flat[i : i + 1024].to(device).float()) for i in range(0, len(flat), 1024)]
        return torch.cat(parts).reshape(*outputs.shape[:lead], -1)

    return Feed(
        blocks + 1, loader, model.head, pooled(entry.val), pooled(entry.test), pooled(entry.train, lead=2), entry.hit
    )
