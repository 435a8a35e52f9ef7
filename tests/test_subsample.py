"""search.subsample: a search whose time budget affords no trial on all its images trains and scores its trials on a
stratified share of them, written once as a data file of its own beside the data's (nbtl.data.arrayfile), from real
image files; which share ``auto`` picks (nbtl.search.cost.auto_subsample); the setting's checks."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nbtl.data import load_dataset, split_dataset
from nbtl.data.arrayfile import (
    DATA_DIR,
    MappedSplits,
    ensure_splits,
    official_test,
    open_splits,
    subsample_positions,
    subsample_splits,
)
from nbtl.data.settings import DataSettings
from nbtl.errors import ConfigError
from nbtl.search.cost import SUBSAMPLE_SHARE, auto_subsample
from nbtl.search.settings import SUBSAMPLE_AUTO, check_subsample

SETTINGS = DataSettings(image_size=16, val_fraction=0.25, test_fraction=0.25, split_seed=3)
PARTS = ("train", "val", "test")


def _folder(root: Path, counts: dict[str, int], parts=("",), classes=("cat", "dog", "fox")) -> Path:
    """root/[<part>/]<class>/<n>.png: real PNG files, each a random pattern of its own; ``counts`` per class."""
    rng = np.random.default_rng(0)
    for part in parts:
        for name in classes:
            folder = root / part / name if part else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(counts[name] if not part else counts[part]):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{number}.png")
    return root


def test_a_data_files_subsample_is_a_mapped_file_of_the_parents_images_stratified_reused_and_pickled_as_a_path(
    tmp_path,
):
    source = _folder(tmp_path / "pets", {"cat": 40, "dog": 24, "fox": 12})
    parent = open_splits(ensure_splits(str(source), SETTINGS, tmp_path / DATA_DIR)[0])
    sub = subsample_splits(parent, 0.5, seed=1)
    assert isinstance(sub, MappedSplits) and sub.folder != parent.folder
    assert Path(sub.folder).parent == Path(parent.folder).parent  # beside the data's file, under the storage path
    positions = subsample_positions(parent, 0.5, 1)
    for part in PARTS:
        whole, kept = getattr(parent, part), getattr(sub, part)
        assert len(kept) == round(len(whole) * 0.5) == len(positions[part]), part
        # the parent's very pixels, labels and positions in the loaded dataset
        assert torch.equal(kept.images, whole.images[positions[part]]), part
        assert torch.equal(kept.labels, whole.labels[positions[part]]), part
        assert np.array_equal(sub.indices[part], parent.indices[part][positions[part]]), part
        # stratified: each class keeps about half of its images, none is lost
        for label, count in whole.class_counts().items():
            assert abs(kept.class_counts().get(label, 0) - count * 0.5) <= 1, (part, label)
    assert sub.train.images.untyped_storage().data_ptr() == sub.test.images.untyped_storage().data_ptr()  # one map

    # written once: a second call maps the same file; another seed draws other images
    written = (Path(sub.folder) / "images.npy").stat().st_mtime_ns
    again = subsample_splits(parent, 0.5, seed=1)
    assert again.folder == sub.folder and (Path(sub.folder) / "images.npy").stat().st_mtime_ns == written
    other = subsample_splits(parent, 0.5, seed=2)
    assert other.folder != sub.folder and not np.array_equal(other.indices["train"], sub.indices["train"])

    # pickled (what Ray's object store carries to a trial) as where to find it; a node without the folder draws it
    # again from the data's file
    blob = pickle.dumps(sub)
    assert len(blob) < 20_000
    shutil.rmtree(sub.folder)
    back = pickle.loads(blob)
    assert back.folder == sub.folder and (Path(back.folder) / "meta.json").exists()
    for part in PARTS:
        assert torch.equal(getattr(back, part).images, getattr(parent, part).images[positions[part]]), part

    # the same images at another size: a search decoding several sizes trains every size on the same share
    at_24 = open_splits(ensure_splits(str(source), SETTINGS.with_overrides({"image_size": 24}), tmp_path / DATA_DIR)[0])
    sub_24 = subsample_splits(at_24, 0.5, seed=1)
    assert sub_24.train.image_size == 24
    for part in PARTS:
        assert np.array_equal(sub_24.indices[part], sub.indices[part]), part

    # the in-memory splits (no room for a data file) keep the same images
    in_memory = split_dataset(load_dataset(str(source), **SETTINGS.load_kwargs()), **SETTINGS.split_kwargs())
    copied = subsample_splits(in_memory, 0.5, seed=1)
    assert not isinstance(copied, MappedSplits)
    for part in PARTS:
        assert torch.equal(getattr(copied, part).images, getattr(sub, part).images), part


def test_an_official_test_set_stays_whole(tmp_path):
    source = _folder(tmp_path / "pets", {"train": 20, "test": 6}, parts=("train", "test"))
    splits = open_splits(ensure_splits(str(source), SETTINGS, tmp_path / DATA_DIR)[0])
    assert official_test(splits) == ("test",)
    sub = subsample_splits(splits, 0.25, seed=0)
    assert len(sub.test) == len(splits.test) == 18 and torch.equal(sub.test.images, splits.test.images)
    assert len(sub.train) == round(len(splits.train) * 0.25) and len(sub.val) == round(len(splits.val) * 0.25)
    # a split drawn from the data itself is subsampled like the rest
    drawn = open_splits(ensure_splits(str(_folder(tmp_path / "more", {c: 12 for c in ("cat", "dog", "fox")})),
                                      SETTINGS, tmp_path / DATA_DIR)[0])  # fmt: skip
    assert official_test(drawn) == ()
    assert len(subsample_splits(drawn, 0.5, seed=0).test) == round(len(drawn.test) * 0.5)


def test_every_class_keeps_an_image_however_small_the_share(tmp_path):
    source = _folder(tmp_path / "pets", {"cat": 40, "dog": 8, "fox": 8})
    splits = open_splits(ensure_splits(str(source), SETTINGS, tmp_path / DATA_DIR)[0])
    sub = subsample_splits(splits, 0.05, seed=0)
    for part in PARTS:
        assert set(getattr(sub, part).class_counts()) == {"cat", "dog", "fox"}, part


def test_auto_picks_the_largest_share_at_which_the_cheapest_start_point_takes_half_the_time_left():
    # every image fits: all of them
    assert auto_subsample(lambda f: 500 * f, 600, 0.01)[0] == 1.0
    # 1,000 s on every image, 600 s left: 1/2 takes 500 s (over half), 1/4 takes 250 s
    share, why = auto_subsample(lambda f: 1000 * f, 600, 0.01)
    assert share == 0.25 and "1000s" in why and "1/4" in why and f"{SUBSAMPLE_SHARE:.0%}" in why
    # a fixed cost no share removes: the smallest power of two above the floor, and why
    share, why = auto_subsample(lambda f: 1000.0, 600, 0.1)
    assert share == 0.125 and "still 1000s" in why and "--time-budget" in why


@pytest.mark.parametrize(
    "value, expected", [("auto", SUBSAMPLE_AUTO), ("ALL", 1.0), (0.25, 0.25), ("0.5", 0.5), (1, 1.0)]
)
def test_subsample_values(value, expected):
    assert check_subsample(value, "--subsample") == expected


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "half", True, None])
def test_bad_subsample_values_are_one_line_naming_the_choices(value):
    with pytest.raises(ConfigError, match=r"^--subsample: subsample must be auto .* all, or a fraction in \(0, 1\]"):
        check_subsample(value, "--subsample")


def test_a_search_whose_budget_affords_no_trial_on_every_image_prepares_a_subsample(tmp_path):
    """nbtl.search.prepare on 15,000 real Fashion-MNIST images (900 training images a class, tiny.yaml's split) at 32 px: with a
    20-second budget no trial can finish on all of them, so the trials get a share, said in one line; without a budget,
    with --subsample all, or with a share given, they get that."""
    from nbtl.search import load_space
    from nbtl.search.options import SearchOptions
    from nbtl.search.prepare import prepare

    space = load_space("tiny")
    base = {"data": "fashion-mnist", "per_class": 1500, "image_size": 32, "storage_path": str(tmp_path)}
    said = []
    prepared = prepare(space, SearchOptions(**base, time_budget=20.0), said.append)
    assert 0 < prepared.subsample < 1, said
    line = next(line for line in said if line.startswith("subsample "))
    assert f"subsample {prepared.subsample:g}: trials train on {len(prepared.splits.train):,} of 9,000" in line
    assert "stratified by class" in line and "--subsample all" in line
    assert prepared.trial_splits().folder == prepared.splits.folder  # what the trials map: the subsample's file
    assert len(prepared.splits.train) >= 200 * 10  # the floor: 200 training images a class on average

    for options, share in (
        (SearchOptions(**base), 1.0),  # no budget: every image
        (SearchOptions(**base, time_budget=20.0, subsample=1.0), 1.0),  # --subsample all
        (SearchOptions(**base, subsample=0.5), 0.5),  # a share given
    ):
        said = []
        prepared = prepare(space, options, said.append)
        assert prepared.subsample == share and len(prepared.splits.train) == round(9_000 * share), said
        assert any(line.startswith("subsample 0.5: ") for line in said) == (share < 1), said
