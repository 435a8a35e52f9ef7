"""A frozen prefix's outputs, a batch at a time, into an entry's arrays (nbtl.features.prefix), and the array helpers
an entry's storage uses: a tensor of a stored precision sharing a numpy array's memory, and a model in eval mode."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from nbtl.data.images import release_pages

# Images per forward pass: on CPU small batches keep activations in cache (Lite0 at 64 px: 32 images
# run 2x faster than 256); accelerators want large ones.
BATCH_SIZE = {"cpu": 32}
DEFAULT_BATCH_SIZE = 256
#: Batches between drops of the data file's pages read (and the entry's written pages) while an entry is computed.
RELEASE_BATCHES = 32


def forward_in_batches(model, images: Tensor, blocks: int, device: torch.device, out: Tensor, transform=None) -> None:
    """``out`` = blocks ``[0, blocks)`` of ``images`` (in ``out``'s dtype), a batch at a time (``transform`` applied to
    each batch's images as it goes, in order). Reading a mapped data file or writing an entry's file, the pages of
    the images read and of the outputs written leave this process every :data:`RELEASE_BATCHES` and when the pass ends
    (:func:`nbtl.data.images.release_pages`; read or written once, they are of no use here: a small data file can make
    a large entry, 4 views of a block's outputs are 2.8 GB from a 0.5-GB subsample)."""
    size = BATCH_SIZE.get(device.type, DEFAULT_BATCH_SIZE)
    previous = None  # with a transform: the batch before, as the model saw it (the last window reaches into it)
    for number, start in enumerate(range(0, len(images), size), start=1):
        # The last batch is the last `size` images, not a short remainder: kernels for short batches
        # round differently (1e-5), and a trial's training amplifies that into other metrics.
        window = max(0, min(start, len(images) - size))
        if transform is None:
            batch = images[window : start + size]
        else:
            fresh = torch.stack([transform(image) for image in images[start : start + size]])
            batch = fresh if window == start else torch.cat([previous[len(previous) - (start - window) :], fresh])
            previous = fresh
        outputs = model.forward_to(batch.to(device), blocks)
        out[start : start + size] = outputs[start - window :].to("cpu", out.dtype)
        if number % RELEASE_BATCHES == 0 or start + size >= len(images):
            release_pages(images[: start + size])
            release_pages(out[: start + size])  # written back to the entry's file, when it has one


def copy_in_chunks(out: Tensor, source: Tensor) -> None:
    """``out[:] = source`` (an entry's clean view, val or test taken from the clean-view entry), a chunk of
    :data:`RELEASE_BATCHES` batches at a time; the pages read and written, where either lies in a mapping, leave this
    process after each chunk (:func:`nbtl.data.images.release_pages`: the copy reads them once)."""
    rows = RELEASE_BATCHES * BATCH_SIZE.get("cpu", DEFAULT_BATCH_SIZE)
    for start in range(0, len(source), rows):
        out[start : start + rows] = source[start : start + rows]
        release_pages(source[start : start + rows])
        release_pages(out[start : start + rows])  # written back to the entry's file


def as_tensor(array: np.ndarray, dtype: torch.dtype) -> Tensor:
    """``array`` as a tensor of ``dtype`` sharing its memory (bfloat16 from its 16-bit pattern, as numpy has no
    bfloat16)."""
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype is torch.bfloat16 else tensor


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Every module of ``model`` in eval mode, each module's own mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    for module, _ in modes:
        module.training = False
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
