"""The decoded data file (nbtl.data.arrayfile): built once per (source, settings) from real image files, reused,
mapped copy-on-write with every split a view of one mapping, identical to the in-memory path, and pickled as its
path (what Ray's object store carries), built again where a node cannot see it."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import mapped_kib
from nbtl.data import load_dataset, split_dataset
from nbtl.data.arrayfile import DATA_DIR, MappedSplits, data_key, decode_splits, ensure_splits, open_splits
from nbtl.data.images import decode_to_disk
from nbtl.data.settings import DataSettings

SETTINGS = DataSettings(image_size=16, val_fraction=0.25, test_fraction=0.25, split_seed=3)


def _folder(root: Path, per_class: int = 8, classes=("cat", "dog", "fox")) -> Path:
    """root/<class>/<n>.png: real PNG files, each of its own colour pattern."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / name / f"{number}.png")
    return root


def _file_digest(folder: Path) -> str:
    return hashlib.sha256((folder / "images.npy").read_bytes()).hexdigest()


@pytest.mark.parametrize("spill", [False, True], ids=["decoded-in-memory", "decoded-to-disk"])
def test_built_once_reused_and_identical_to_the_in_memory_splits(tmp_path, monkeypatch, spill):
    if spill:  # every decoded array goes to a mapped file first, as 60,000 images at 224 px do
        monkeypatch.setenv("NBTL_SPILL_BYTES", "0")
    source = _folder(tmp_path / "pets")
    folder, seconds = ensure_splits(str(source), SETTINGS, tmp_path / DATA_DIR)
    assert seconds is not None and (folder / "images.npy").exists()
    again, seconds_again = ensure_splits(str(source), SETTINGS, tmp_path / DATA_DIR)
    assert (again, seconds_again) == (folder, None)  # reused: nothing decoded
    assert len(list((tmp_path / DATA_DIR).iterdir())) == 2  # the folder and its lock file (the decoded file is gone)
    assert json.loads((folder / "meta.json").read_text())["input"] == decode_splits(str(source), SETTINGS)[1]["input"]

    mapped = open_splits(folder)
    expected = split_dataset(load_dataset(str(source), **SETTINGS.load_kwargs()), **SETTINGS.split_kwargs())
    for part in ("train", "val", "test"):
        got, want = getattr(mapped, part), getattr(expected, part)
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels), part
        assert got.classes == want.classes and got.name == want.name == "pets"
        assert np.array_equal(mapped.indices[part], expected.indices[part])
        assert got.fingerprint() == want.fingerprint()  # stored with the pixels: no rehash per process
    # every split is a view of one mapping, in train | val | test order
    base = mapped.train.images.untyped_storage().data_ptr()
    assert mapped.val.images.untyped_storage().data_ptr() == base == mapped.test.images.untyped_storage().data_ptr()
    assert mapped.val.images.data_ptr() == mapped.train.images[-1].data_ptr() + mapped.train.images[0].numel()


def test_a_changed_source_or_setting_is_another_file_and_augmentation_is_not(tmp_path):
    source = _folder(tmp_path / "pets")
    key = data_key(str(source), SETTINGS)
    assert data_key(str(source), SETTINGS.with_overrides({"augmentation": {"crop_padding": 4}})) == key
    assert data_key(str(source), SETTINGS.with_overrides({"image_size": 24})) != key
    assert data_key(str(source), SETTINGS.with_overrides({"split_seed": 4})) != key
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(source / "cat" / "extra.png")
    assert data_key(str(source), SETTINGS) != key
    assert data_key("digits", SETTINGS) != data_key("fashion-mnist", SETTINGS)


def test_pickled_as_its_path_and_copy_on_write(tmp_path):
    source = _folder(tmp_path / "pets", per_class=40)
    folder, _ = ensure_splits(str(source), SETTINGS, tmp_path / DATA_DIR)
    mapped = open_splits(folder)
    payload = pickle.dumps(mapped)
    assert len(payload) < 4096 < mapped.train.images.numel()  # the path and settings, not the pixels
    copy = pickle.loads(payload)
    assert isinstance(copy, MappedSplits) and torch.equal(copy.test.images, mapped.test.images)
    before = _file_digest(folder)
    copy.train.images[0].fill_(255)  # a process writing into its images changes its own pages only
    assert int(copy.train.images[0].min()) == 255
    assert _file_digest(folder) == before
    assert torch.equal(open_splits(folder).train.images[0], mapped.train.images[0])


def test_a_node_without_the_file_builds_its_own_from_the_source(tmp_path):
    source = _folder(tmp_path / "pets")
    folder, _ = ensure_splits(str(source), SETTINGS, tmp_path / "node-a" / DATA_DIR)
    mapped = open_splits(folder)
    missing = tmp_path / "node-b" / DATA_DIR / folder.name
    mapped.folder = str(missing)  # where that node's storage path would put it
    elsewhere = pickle.dumps(mapped)
    # unpickled in a fresh process, as a Ray worker on another node would
    code = "import pickle, sys, torch; s = pickle.loads(sys.stdin.buffer.read()); print(len(s.train), s.folder)"
    done = subprocess.run([sys.executable, "-c", code], input=elsewhere, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == [str(len(open_splits(folder).train)), str(missing)]
    assert _file_digest(missing) == _file_digest(folder)


def test_a_missing_file_without_its_source_is_one_clear_error(tmp_path):
    from nbtl.errors import DataError

    with pytest.raises(DataError, match="not found; run the search again"):
        open_splits(tmp_path / "nope")


def test_a_large_decode_goes_to_a_mapped_file_that_the_loaders_fill(tmp_path, monkeypatch):
    """Inside decode_to_disk a dataset at or above NBTL_SPILL_BYTES is decoded into a mapped .npy, not memory."""
    source = _folder(tmp_path / "pets")
    in_memory = load_dataset(str(source), image_size=16)
    monkeypatch.setenv("NBTL_SPILL_BYTES", str(in_memory.images.numel()))
    with decode_to_disk(tmp_path / "spill") as spill:
        mapped = load_dataset(str(source), image_size=16)
        digits = load_dataset("digits", image_size=8, per_class=5)  # 50 x 3 x 8 x 8: below the limit, in memory
    files = list(spill.glob("decoded-*.npy"))
    assert len(files) == 1 and np.array_equal(np.load(files[0], mmap_mode="r"), in_memory.images.numpy())
    assert torch.equal(mapped.images, in_memory.images) and mapped.fingerprint() == in_memory.fingerprint()
    assert len(digits) == 50  # decoded beside, in memory: the one file is the folder's


def _rss_kib() -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])


def test_a_trial_reading_a_large_data_file_drops_its_pages(tmp_path, monkeypatch):
    """A mapped data file at or above NBTL_LARGE_MAPPING_BYTES is read a batch at a time by the trial, whose
    resident memory then does not grow with the file; the pixels read are the file's."""
    from nbtl.config import TrialConfig
    from nbtl.data.images import is_large_mapping, release_pages
    from nbtl.train import train_trial

    source = _folder(tmp_path / "pets", per_class=40)
    settings = DataSettings(image_size=128, val_fraction=0.25, test_fraction=0.25, split_seed=3)  # 60 x 48 KiB of train
    mapped = open_splits(ensure_splits(str(source), settings, tmp_path / DATA_DIR)[0])
    assert not is_large_mapping(mapped.train.images)  # a GiB by default
    monkeypatch.setenv("NBTL_LARGE_MAPPING_BYTES", "1")
    assert is_large_mapping(mapped.train.images)
    pixels = mapped.train.images.numpy()
    before = _rss_kib()
    total = int(pixels.sum(dtype=np.int64))  # every page read
    grown = _rss_kib() - before
    release_pages(pixels)
    assert grown > 1024 and _rss_kib() - before < grown / 2  # the pages left this process
    assert int(pixels.sum(dtype=np.int64)) == total  # and come back from the file when read again
    assert not is_large_mapping(mapped.train.images.clone())  # a copy in memory is not a mapping
    config = TrialConfig.from_dict({"freeze_blocks": 0, "epochs": 1, "batch_size": 8, "pretrained": False})
    result = train_trial(config, mapped, device="cpu", cache_prefix=False)  # the batch path, dropping pages
    assert np.isfinite(result.history[-1]["train_loss"])


def test_fit_features_of_a_large_data_file_drop_its_pages_and_match_the_in_memory_path(tmp_path, monkeypatch):
    """nbtl.fit's feature extraction reads a large mapped data file a batch at a time and drops the pages it read
    (issue 18: the driver's memory grew with the file while recommend measured the fit): the file's resident pages
    stay a few batches, and the features equal those of the same images held in memory."""
    from nbtl.fit import block_features

    source = _folder(tmp_path / "pets", per_class=40)
    settings = DataSettings(image_size=128, val_fraction=0.25, test_fraction=0.25, split_seed=3)
    folder = ensure_splits(str(source), settings, tmp_path / DATA_DIR)[0]
    mapped = open_splits(folder)
    in_memory = mapped.train.subset(range(len(mapped.train)))  # a copy, not a mapping
    monkeypatch.setenv("NBTL_LARGE_MAPPING_BYTES", "1")
    file_kib = (folder / "images.npy").stat().st_size // 1024
    features = block_features(mapped.train, "efficientnet_lite0", batch_size=8, use_cache=False, progress=False)
    assert mapped_kib(folder / "images.npy") < file_kib / 4  # read, then dropped
    again = block_features(in_memory, "efficientnet_lite0", batch_size=8, use_cache=False, progress=False)
    for ours, theirs in zip(features.blocks, again.blocks):
        np.testing.assert_array_equal(ours, theirs)


def test_a_driver_drops_its_data_files_pages_after_its_setup(tmp_path):
    """nbtl.search.plan calls release_mapped once the fit measures have read the data file (issue 18's scale run: the
    driver held 1.7 GB of it through the trials), whatever the file's size (a smaller one's pages are no use to a
    driver either): the file's pages leave the process, the pixels read again are the file's; data in memory is left
    alone."""
    from nbtl.data.images import release_mapped

    source = _folder(tmp_path / "pets", per_class=40)
    settings = DataSettings(image_size=128, val_fraction=0.25, test_fraction=0.25, split_seed=3)
    folder = ensure_splits(str(source), settings, tmp_path / DATA_DIR)[0]
    mapped = open_splits(folder)
    parts = [mapped.train.images, mapped.val.images, mapped.test.images]
    total = sum(int(images.numpy().sum(dtype=np.int64)) for images in parts)  # every page read
    file_kib = (folder / "images.npy").stat().st_size // 1024
    assert mapped_kib(folder / "images.npy") > file_kib / 2
    assert not release_mapped(mapped.train.images.clone())  # in memory: nothing to drop
    assert not release_mapped(torch.empty(4, device="meta"))  # not in host memory (as a GPU's tensors): nothing
    assert mapped_kib(folder / "images.npy") > file_kib / 2
    assert release_mapped(*parts)  # a small file (under NBTL_LARGE_MAPPING_BYTES) too
    assert mapped_kib(folder / "images.npy") < file_kib / 4
    assert sum(int(images.numpy().sum(dtype=np.int64)) for images in parts) == total


TRIM_HEAP = """
import sys
from nbtl.data.images import trim_heap

def anonymous_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("Anonymous:"))

blocks = [bytearray(100_000) for _ in range(3000)]  # 300 MB of heap blocks (under glibc's mmap threshold)
for block in blocks:
    block[::4096] = b"x" * len(block[::4096])  # every page touched
kept = blocks[::50]  # every 50th stays live: the freed ones between are holes glibc keeps
del blocks
before = anonymous_kib()
print(trim_heap(), before, anonymous_kib())
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's /proc/self/smaps_rollup")
def test_trim_heap_hands_the_free_pages_between_live_blocks_back():
    """What a trial does after each epoch (issue 18's scale run: trial workers held 2.3-2.5 GB anonymous): the freed
    blocks between live ones leave the process, where glibc itself keeps them."""
    done = subprocess.run([sys.executable, "-c", TRIM_HEAP], capture_output=True, text=True, check=True)
    trimmed, before, after = done.stdout.split()
    assert trimmed == "True"
    assert int(before) - int(after) > 200_000, (before, after)  # of ~294 MB freed in holes, KiB
