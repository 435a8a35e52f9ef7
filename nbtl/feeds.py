"""Where a trial's batches come from and how it is scored: its feeds (images, augmented on the CPU or on the
device, or block outputs from a frozen-prefix entry), the channels-last layout and mixed precision of CUDA, and the
evaluation of a model on images or cached inputs (loss, accuracy, F1, calibration).

Plain PyTorch and scikit-learn metrics: no Ray, no MLflow.
"""

from __future__ import annotations

import math
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
    "StepMemory",
    "measure_step_memory",
    "mixed_precision_dtype",
    "evaluate",
    "evaluate_inputs",
    "image_feed",
    "memory_format",
    "prefix_feed",
]

#: Training steps between drops of a large data file's pages from a trial (nbtl.data.images.release_pages).
RELEASE_STEPS = 16

#: What a trial's training step may hold in activations saved for the backward pass, and an evaluation in a
#: forward's outputs, by device type (MiB): above it a batch runs as micro-batches whose gradients add up, and an
#: evaluation in smaller batches. On CPUs smaller batches are faster at 224 px: benchmarks/step_memory.py (one thread,
#: every block trained, batch 32) measured EfficientNet-Lite0 at 3.3 images/s and 3.6 GB peak RSS in whole batches,
#: 3.8 and 2.2 GB with a 1,024 MiB cap, 4.5 and 2.0 GB with 512 MiB, 4.3 and 1.6 GB with 256 (Lite1: 2.6, 3.4, 4.0
#: images/s). GPUs: not capped (their memory holds a search's batches; packed trials share it).
STEP_MEMORY_MB = {"cpu": 512}

#: The largest evaluation batch (:func:`evaluate_inputs`).
EVAL_BATCH_SIZE = 256


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageDataset,
    device: torch.device,
    batch_size: int = EVAL_BATCH_SIZE,
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
    batch_size: int = EVAL_BATCH_SIZE,
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
    release_pages(inputs)  # a data file's or entry's pages (read once a pass): back to the page cache
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


@dataclass(frozen=True)
class StepMemory:
    """What one input costs a trial's step in memory, measured (:func:`measure_step_memory`), and the batches that
    keep it under a cap."""

    saved_bytes: float  # activations autograd saves for the backward pass, an input
    output_bytes: float  # the largest output of one module in a forward pass, an input

    def micro_batch(self, batch_size: int, cap_bytes: float | None) -> int:
        """The largest micro-batch whose saved activations fit ``cap_bytes``, of equal parts of ``batch_size`` (the
        trainer splits a batch into ``ceil(batch_size / micro_batch)`` parts of sizes within one of each other)."""
        if cap_bytes is None or self.saved_bytes * batch_size <= cap_bytes:
            return batch_size
        most = max(1, int(cap_bytes // max(self.saved_bytes, 1.0)))
        parts = math.ceil(batch_size / most)
        return math.ceil(batch_size / parts)

    def eval_batch(self, cap_bytes: float | None, largest: int = EVAL_BATCH_SIZE) -> int:
        """An evaluation batch whose forward (about three of its largest outputs alive at once) fits ``cap_bytes``."""
        if cap_bytes is None:
            return largest
        return max(1, min(largest, int(cap_bytes // max(3 * self.output_bytes, 1.0))))


def measure_step_memory(
    model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor
) -> StepMemory:
    """One forward of ``sample`` (a few inputs, as :func:`evaluate_inputs` feeds them) through ``forward``, counting
    what autograd saves for the backward pass (``torch.autograd.graph.saved_tensors_hooks``; each tensor once, the
    parameters not) and the largest output of ``model``'s modules (forward hooks). ``model`` runs in eval mode, so
    that nothing it holds (batch-norm statistics) or draws (dropout) changes; the caller sets its mode back."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: set[tuple[int, int]] = set()
    largest = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() not in parameters:
            saved.add((tensor.data_ptr(), tensor.nbytes))
        return tensor

    def output(_module, _inputs, out) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.nbytes)

    hooks = [module.register_forward_hook(output) for module in model.modules()]
    model.eval()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            forward(sample if sample.dtype == torch.uint8 else sample.float())
    finally:
        for hook in hooks:
            hook.remove()
    n = len(sample)
    return StepMemory(saved_bytes=sum(nbytes for _, nbytes in saved) / n, output_bytes=largest[0] / n)


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
    release: bool = False  # the images or entry are a large mapped file: drop its pages from this process as batches go
    steps: int = 0
    micro_batch: int | None = None  # a training batch runs in parts of this many inputs (None: whole)
    eval_batch_size: int = EVAL_BATCH_SIZE

    def limit_memory(self, model: nn.Module, batch_size: int, cap_bytes: float | None) -> StepMemory | None:
        """Measure what an input costs this feed's step (:func:`measure_step_memory`, on two validation inputs) and
        set the micro-batch and evaluation batch that keep it under ``cap_bytes`` (None: no cap, nothing measured)."""
        if cap_bytes is None or len(self.val) == 0:
            return None
        memory = measure_step_memory(model, self.forward, self.val[:2])
        self.micro_batch = memory.micro_batch(batch_size, cap_bytes)
        self.eval_batch_size = memory.eval_batch(cap_bytes)
        return memory

    def batch(self, items: torch.Tensor, view_generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """The inputs of one training batch; ``items`` are images, or train indices into the images or the cache."""
        if self.images is not None:
            # gathered from the (memory-mapped) uint8 images, pinned, copied while the GPU works, augmented there
            batch = self.images[items]
            self._stepped(self.images)
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
        self._stepped(self.train)
        if device.type == "cuda" and inputs.device.type == "cpu":
            inputs = inputs.pin_memory()
        return memory_format(inputs.to(device, non_blocking=True).float(), device)

    def _stepped(self, source: torch.Tensor) -> None:
        """Count a training step read from ``source`` (the images or the entry); every :data:`RELEASE_STEPS` of a
        large mapped file, drop the pages read so far (the page cache keeps them, not the trial)."""
        self.steps += 1
        if self.release and self.steps % RELEASE_STEPS == 0:
            release_pages(source)


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
            blocks,
            loader,
            lambda x: model.forward_from(x, blocks),
            entry.val,
            entry.test,
            entry.train,
            entry.hit,
            release=is_large_mapping(entry.train),
        )

    @torch.no_grad()
    def pooled(outputs: torch.Tensor, lead: int = 1) -> torch.Tensor:
        """Pool block outputs ``(*lead_dims, *block_output_shape)`` to ``(*lead_dims, feature_dim)``, on ``device``."""
        flat = outputs.reshape(-1, *outputs.shape[lead:])
        parts = [model.backbone.pool(flat[i : i + 1024].to(device).float()) for i in range(0, len(flat), 1024)]
        release_pages(outputs)  # read once: an entry's pages back to the page cache
        return torch.cat(parts).reshape(*outputs.shape[:lead], -1)

    return Feed(
        blocks + 1, loader, model.head, pooled(entry.val), pooled(entry.test), pooled(entry.train, lead=2), entry.hit
    )
