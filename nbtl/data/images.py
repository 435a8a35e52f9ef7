"""Decoding image files and resizing them to the square size the networks take.

Every source (folder, CSV, built-in arrays) ends here, so all images are resized the same
way: shorter side to ``image_size`` with bilinear filtering, then a centred square crop.
"""

from __future__ import annotations

import functools
import io
import logging
import mmap
import multiprocessing
import os
import re
import sys
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from nbtl.errors import DataError, ensure_room

logger = logging.getLogger(__name__)

#: Where :func:`allocate_images` puts large decoded arrays (None: memory); set by :func:`decode_to_disk`.
_SPILL: ContextVar[Path | None] = ContextVar("nbtl_decode_to_disk", default=None)
#: Decoded arrays at least this large go to the :func:`decode_to_disk` folder (``$NBTL_SPILL_BYTES`` overrides).
SPILL_FROM_BYTES = 256 * 2**20


@contextmanager
def decode_to_disk(folder: str | os.PathLike) -> Iterator[Path]:
    """Within this block, every loader decodes a large dataset (:data:`SPILL_FROM_BYTES` or more) into a
    memory-mapped file under ``folder`` instead of memory, so that 60,000 images at 224 px (9 GB) never sit
    in RAM; the caller removes the folder when done with the images."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    token = _SPILL.set(folder)
    try:
        yield folder
    finally:
        _SPILL.reset(token)


_MAPPINGS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # start address -> np.memmap (writable)


def track_mapping(array: np.memmap) -> np.memmap:
    """Let :func:`release_pages` find the pages of ``array`` (a writable ``np.memmap``) and its views."""
    _MAPPINGS[array.__array_interface__["data"][0]] = array
    return array


def forget_mapping(array: np.memmap) -> None:
    """Undo :func:`track_mapping` (the mapping is then freed with its last array)."""
    _MAPPINGS.pop(array.__array_interface__["data"][0], None)


def release_pages(part: np.ndarray | torch.Tensor) -> bool:
    """Write ``part`` (a view of a tracked mapping: an array, or a tensor of any dtype) back to its file and drop
    its pages from this process (``MADV_DONTNEED`` on a shared file mapping: the data stays in the file and the page
    cache), so that writing or reading a file larger than memory a chunk at a time keeps the process small, and a pass
    that has read a file does not hold it. Whether it was such a view: nothing for an array in memory, or a tensor on
    a device (a GPU's inputs, pooled features there)."""
    if isinstance(part, torch.Tensor):
        if part.device.type != "cpu" or not part.numel():
            return False
        part = (part.view(torch.int16) if part.dtype is torch.bfloat16 else part).numpy()  # numpy has no bfloat16
    start = part.__array_interface__["data"][0]
    base, mapping = _mapping_at(start)
    raw = getattr(mapping, "_mmap", None)
    if raw is None:
        return False
    # numpy maps the file from the allocation boundary below the array's offset (the .npy header)
    offset = start - base + mapping.offset % mmap.ALLOCATIONGRANULARITY
    page = mmap.PAGESIZE
    low = offset // page * page
    length = min(-(-(offset + part.nbytes - low) // page) * page, len(raw) - low)
    if length > 0:
        raw.flush(low, length)  # a no-op on a copy-on-write (read) mapping
        raw.madvise(mmap.MADV_DONTNEED, low, length)
    return True


def _mapping_at(address: int) -> tuple[int, np.memmap | None]:
    """The tracked mapping whose data holds ``address``, and its start address; ``(0, None)`` where none does."""
    for base, mapping in list(_MAPPINGS.items()):
        if base <= address < base + mapping.nbytes:
            return base, mapping
    return 0, None


def is_large_mapping(images: torch.Tensor) -> bool:
    """Whether ``images`` lie in a tracked mapping of at least :data:`LARGE_MAPPING_BYTES` (a trial then reads
    them a batch at a time and drops the pages it read as it trains, rather than holding the file in its memory; a
    smaller file's train split is a trial's working set, read again each epoch, and stays)."""
    start = images.data_ptr() if images.numel() else 0  # any dtype (an entry's bfloat16 has no numpy view)
    _, mapping = _mapping_at(start)
    return mapping is not None and mapping.nbytes >= int(
        os.environ.get("NBTL_LARGE_MAPPING_BYTES", LARGE_MAPPING_BYTES)
    )


#: A data file at least this large is read by trials a batch at a time, its pages dropped as they train (a pass that
#: reads a mapped array once, such as an evaluation, drops its pages whatever its size: :func:`release_pages`).
LARGE_MAPPING_BYTES = 2**30


def release_mapped(*parts: torch.Tensor) -> bool:
    """Drop this process's pages of each of ``parts`` that lies in a tracked mapping, whatever its size
    (:func:`release_pages`): what a search driver does once its setup (the fit measures) has read its data file, so
    that it does not hold the file while the trials run. Whether anything was dropped; nothing for data in memory."""
    dropped = [release_pages(images) for images in parts]
    return any(dropped)


def trim_heap(collect: bool = True) -> bool:
    """Hand the pages the C heap holds free back to the system: glibc's ``malloc_trim(0)``, which also drops the free
    pages between live blocks (a freed batch's activations; about 10 ms), after a garbage collection unless ``collect``
    is false (tens of ms). What a trial does after each epoch and when it ends, and a search driver after its setup, so
    that none holds what it no longer uses. Whether it could (False where the C library is not glibc: its allocator
    keeps what it keeps)."""
    import gc

    if collect:
        gc.collect()
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def _libc():
    """The C library, loaded once (``find_library`` alone takes about 2 ms: too much for every epoch), or None."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def allocate_images(count: int, image_size: int) -> torch.Tensor:
    """An uninitialised uint8 ``(count, 3, S, S)`` tensor for decoded images: in memory, or inside
    :func:`decode_to_disk` (when large) a view of a memory-mapped ``.npy`` file there."""
    folder = _SPILL.get()
    limit = int(os.environ.get("NBTL_SPILL_BYTES", SPILL_FROM_BYTES))
    shape = (count, 3, image_size, image_size)
    if folder is None or count * 3 * image_size * image_size < limit:
        return torch.empty(shape, dtype=torch.uint8)
    # the decoded file and the data file written from it: room for both, before a mapped write could hit a full disk
    ensure_room(folder, 2 * count * 3 * image_size * image_size, "the decoded images")
    path = folder / f"decoded-{os.getpid()}-{uuid.uuid4().hex[:8]}.npy"
    return torch.from_numpy(track_mapping(np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)))


# Modes whose pixels carry one intensity channel (with or without alpha).
_SINGLE_CHANNEL_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def resize_square(image: Image.Image, image_size: int) -> Image.Image:
    """Resize the shorter side to ``image_size`` (bilinear), then centre-crop a square.

    Parameters
    ----------
    image : PIL.Image.Image
        Any size; small images are upscaled.
    image_size : int
        Side length ``S`` of the result.

    Returns
    -------
    PIL.Image.Image
        An ``S x S`` image in the input's mode.
    """
    width, height = image.size
    scale = image_size / min(width, height)
    new_width = max(image_size, round(width * scale))
    new_height = max(image_size, round(height * scale))
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left = (new_width - image_size) // 2
    top = (new_height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to a uint8 array of shape (H, W, 3).

    High-bit-depth grayscale (16-bit, 32-bit int, float) is rescaled to 0..255 rather than
    clipped, so such images do not come out white.
    """
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def open_image(
    source: Path | bytes, name: str | None = None, fix: str = "replace or delete the corrupt file"
) -> Image.Image:
    """Open, verify and fully decode one image, a file or an encoded file's bytes, applying its EXIF orientation.

    Raises
    ------
    DataError
        If it cannot be read or is not a valid, complete image: ``cannot read NAME: REASON; FIX`` (``NAME``
        by default ``image 'PATH'``; bytes should be given a name).
    """
    name = name or f"image '{source}'"

    def opened():
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)

    try:
        with opened() as probe:
            probe.verify()
        with opened() as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        # PIL repeats the path, or names its buffer; we name the image once
        reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", reason.replace(f" '{source}'", ""))
        raise DataError(f"cannot read {name}: {reason}; {fix}") from None


def decode_files(paths: Sequence[Path], image_size: int) -> tuple[torch.Tensor, bool, tuple[int, int]]:
    """Decode image files into one uint8 tensor of shape (N, 3, S, S).

    Parameters
    ----------
    paths : sequence of pathlib.Path
        Image files, in the order their rows should appear.
    image_size : int
        Side length ``S`` of the stored images.

    Returns
    -------
    images : torch.Tensor of shape (N, 3, S, S), dtype uint8
    grayscale : bool
        True when every source image had a single intensity channel.
    original_size : tuple of (int, int)
        Median ``(H, W)`` of the source images.
    """
    images = allocate_images(len(paths), image_size)
    pixels = images.numpy()  # shares memory: rows are written in place
    sizes = np.empty((len(paths), 2), dtype=np.int64)
    workers = decode_workers(len(paths))
    if workers <= 1:
        grayscale = _decode_into(paths, image_size, pixels, sizes)
        return images, grayscale, median_size(sizes)
    # Pillow's decoding holds the GIL: processes, each a chunk of files, in order (a fork: PIL and numpy only)
    chunks = [range(start, min(start + DECODE_CHUNK, len(paths))) for start in range(0, len(paths), DECODE_CHUNK)]
    terminal = sys.stderr.isatty()
    logger.info("decoding %d images at %dpx in %d processes", len(paths), image_size, workers)
    began = time.perf_counter()
    grayscale = True
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        done = pool.map(_decode_chunk, [[paths[i] for i in chunk] for chunk in chunks], [image_size] * len(chunks))
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(paths), desc=f"decode @ {image_size}px", unit="image", file=sys.stderr, disable=not terminal
        )
        with bar:
            for chunk, (block, chunk_sizes, chunk_gray) in zip(chunks, done):
                pixels[chunk.start : chunk.stop] = block
                release_pages(pixels[chunk.start : chunk.stop])
                sizes[chunk.start : chunk.stop] = chunk_sizes
                grayscale = grayscale and chunk_gray
                bar.update(len(chunk))
    logger.info("decoded %d images in %.1fs", len(paths), time.perf_counter() - began)
    return images, grayscale, median_size(sizes)


#: Images a decoding process takes at a time, and the fewest files worth more than one process.
DECODE_CHUNK, PARALLEL_FROM = 256, 1024


def decode_workers(count: int) -> int:
    """Processes to decode ``count`` files with: one below :data:`PARALLEL_FROM` files, else one per CPU this
    process may use (at most 16), or ``$NBTL_DECODE_WORKERS``."""
    if "NBTL_DECODE_WORKERS" in os.environ:
        return max(1, int(os.environ["NBTL_DECODE_WORKERS"]))
    if count < PARALLEL_FROM:
        return 1
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _decode_into(paths: Sequence[Path], image_size: int, pixels: np.ndarray, sizes: np.ndarray) -> bool:
    grayscale = True
    for row, path in enumerate(paths):
        image = open_image(path)
        sizes[row] = (image.height, image.width)
        grayscale = grayscale and image.mode in _SINGLE_CHANNEL_MODES
        pixels[row] = to_rgb_array(resize_square(image, image_size)).transpose(2, 0, 1)
        if (row + 1) % DECODE_CHUNK == 0:
            release_pages(pixels[row + 1 - DECODE_CHUNK : row + 1])  # a mapped file: keep the process small
    release_pages(pixels[len(paths) // DECODE_CHUNK * DECODE_CHUNK :])
    return grayscale


def _decode_chunk(paths: Sequence[Path], image_size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    pixels = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    sizes = np.empty((len(paths), 2), dtype=np.int64)
    return pixels, sizes, _decode_into(paths, image_size, pixels, sizes)


def decode_gray_arrays(arrays: np.ndarray, image_size: int) -> torch.Tensor:
    """Resize a stack of uint8 grayscale arrays (N, H, W) to a tensor (N, 3, S, S)."""
    images = allocate_images(len(arrays), image_size)
    pixels = images.numpy()  # shares memory: rows are written in place
    for row, array in enumerate(arrays):
        resized = resize_square(Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)), image_size)
        pixels[row] = np.asarray(resized)[None]  # broadcast to the three channels
        if (row + 1) % DECODE_CHUNK == 0:
            release_pages(pixels[row + 1 - DECODE_CHUNK : row + 1])  # a mapped file: keep the process small
    release_pages(pixels[len(arrays) // DECODE_CHUNK * DECODE_CHUNK :])
    return images


def median_size(sizes: np.ndarray) -> tuple[int, int]:
    """Median ``(H, W)`` of an (N, 2) array of sizes, rounded to integers."""
    if len(sizes) == 0:
        return (0, 0)
    height, width = np.median(sizes, axis=0)
    return (int(round(height)), int(round(width)))
