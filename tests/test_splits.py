"""Tests for nbtl.data.kfold_splits and official parts in split_dataset (synthetic uint8 images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbtl.data import ImageDataset, kfold_splits, split_dataset, training_part
from nbtl.errors import DataError


def _dataset(counts: dict[str, int], parts: list[str] | None = None) -> ImageDataset:
    """Image i encodes i in its first two pixels, so every part can be traced back to positions."""
    labels = np.concatenate([[label] * count for label, count in enumerate(counts.values())])
    images = torch.zeros((len(labels), 3, 2, 2), dtype=torch.uint8)
    index = torch.arange(len(labels))
    images[:, 0, 0, 0] = (index // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (index % 256).to(torch.uint8)
    return ImageDataset(
        images,
        torch.from_numpy(labels.astype(np.int64)),
        list(counts),
        "synthetic",
        grayscale=False,
        original_size=(2, 2),
        parts=None if parts is None else np.array(parts),
    )


def _positions(dataset: ImageDataset) -> list[int]:
    return (dataset.images[:, 0, 0, 0].long() * 256 + dataset.images[:, 0, 0, 1].long()).tolist()


def _with_test(counts: dict[str, int], test_per_class: int) -> ImageDataset:
    """Each class's last ``test_per_class`` images are official test images."""
    parts = []
    for count in counts.values():
        parts += ["train"] * (count - test_per_class) + ["test"] * test_per_class
    return _dataset(counts, parts)


def _check_parts_disjoint(split) -> None:
    found = {name: _positions(getattr(split, name)) for name in ("train", "val", "test")}
    for name, positions in found.items():
        assert positions == split.indices[name].tolist()  # indices name the images the subsets hold
    assert not set(found["train"]) & set(found["val"])
    assert not set(found["train"]) & set(found["test"])
    assert not set(found["val"]) & set(found["test"])


def test_kfold_held_out_folds_cover_every_image_once_stratified_and_seeded():
    counts = {"a": 20, "b": 15, "c": 10}
    dataset = _dataset(counts)
    folds = kfold_splits(dataset, folds=5, seed=3)
    assert len(folds) == 5
    held = [split.indices["test"] for split in folds]
    together = np.concatenate(held)
    assert sorted(together.tolist()) == list(range(len(dataset)))  # each image held out exactly once
    for split in folds:
        _check_parts_disjoint(split)
        assert len(split.train) + len(split.val) + len(split.test) == len(dataset)
        # stratified: each held-out fold has a fifth of every class, each val slice 15 % of the rest
        assert list(split.test.class_counts().values()) == [4, 3, 2]
        assert all(count >= 1 for count in split.val.class_counts().values())
        for name, total in counts.items():
            rest = total - split.test.class_counts()[name]
            assert split.val.class_counts()[name] == max(1, round(rest * 0.15))

    again = kfold_splits(dataset, folds=5, seed=3)
    assert [s.indices["test"].tolist() for s in again] == [h.tolist() for h in held]
    assert [s.indices["val"].tolist() for s in again] == [s.indices["val"].tolist() for s in folds]
    other = kfold_splits(dataset, folds=5, seed=4)
    assert [s.indices["test"].tolist() for s in other] != [h.tolist() for h in held]


def test_kfold_val_fraction_sets_the_validation_slice():
    dataset = _dataset({"a": 40, "b": 40})
    split = kfold_splits(dataset, folds=4, seed=0, val_fraction=0.5)[0]
    assert split.val.class_counts() == {"a": 15, "b": 15}  # half of each class's 30 training images


def test_kfold_with_an_official_test_set_holds_out_val_folds_and_keeps_test():
    dataset = _with_test({"a": 14, "b": 11}, test_per_class=4)
    official_test = np.flatnonzero(dataset.parts == "test").tolist()
    folds = kfold_splits(dataset, folds=3, seed=0)
    held = np.concatenate([split.indices["val"] for split in folds])
    assert sorted(held.tolist()) == np.flatnonzero(dataset.parts == "train").tolist()
    for split in folds:
        _check_parts_disjoint(split)
        assert split.indices["test"].tolist() == official_test  # the official test set, every fold
        assert not set(split.indices["train"].tolist()) & set(official_test)


def test_kfold_rejects_bad_folds_and_too_small_classes():
    dataset = _dataset({"a": 10, "b": 3})
    with pytest.raises(DataError, match="folds must be an integer >= 2"):
        kfold_splits(dataset, folds=1, seed=0)
    with pytest.raises(DataError, match="class 'b' .* 3 images .* at least 5"):
        kfold_splits(dataset, folds=5, seed=0)
    with pytest.raises(DataError, match="val_fraction"):
        kfold_splits(dataset, folds=2, seed=0, val_fraction=1.5)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_keeps_the_official_test_set_and_draws_val_from_train(seed):
    dataset = _with_test({"a": 12, "b": 9}, test_per_class=3)
    split = split_dataset(dataset, val_fraction=0.25, test_fraction=0.4, seed=seed)
    _check_parts_disjoint(split)
    assert split.indices["test"].tolist() == np.flatnonzero(dataset.parts == "test").tolist()
    assert split.val.class_counts() == {"a": 2, "b": 2}  # 25 % of 9 and of 6 training images, not of 12 / 9
    assert len(split.train) + len(split.val) == 15


def test_split_keeps_official_val_and_test():
    parts = ["train"] * 5 + ["val"] * 2 + ["test"] * 3 + ["train"] * 4 + ["val"] * 1 + ["test"] * 2
    dataset = _dataset({"a": 10, "b": 7}, parts)
    split = split_dataset(dataset, seed=5)
    for name in ("train", "val", "test"):
        assert split.indices[name].tolist() == np.flatnonzero(dataset.parts == name).tolist()
    assert training_part(dataset).part_counts() == {"train": 9, "val": 3}


def test_an_official_part_missing_a_class_is_one_clear_error():
    parts = ["train"] * 6 + ["test"] * 2 + ["train"] * 5
    dataset = _dataset({"a": 8, "b": 5}, parts)
    with pytest.raises(DataError, match="official test part has no image of class 'b'"):
        split_dataset(dataset)


def test_resplit_draws_another_partition_of_train_and_val_and_leaves_test_alone():
    from nbtl.data.splits import resplit

    dataset = _dataset({"a": 20, "b": 14, "c": 9})
    splits = split_dataset(dataset, val_fraction=0.25, test_fraction=0.2, seed=0)
    again = resplit(splits, seed=7)
    pool = sorted(_positions(splits.train) + _positions(splits.val))
    assert sorted(_positions(again.train) + _positions(again.val)) == pool  # the same images, each once
    assert not set(_positions(again.train)) & set(_positions(again.val))
    assert _positions(again.test) == _positions(splits.test) and again.test is splits.test
    # each class keeps its validation count; the partition is new, and the same for the same seed
    assert torch.equal(torch.bincount(again.val.labels, minlength=3), torch.bincount(splits.val.labels, minlength=3))
    assert set(_positions(again.val)) != set(_positions(splits.val))
    assert _positions(resplit(splits, seed=7).val) == _positions(again.val)
    assert _positions(resplit(splits, seed=8).val) != _positions(again.val)
    # labels travel with their images
    position_label = dict(zip(_positions(dataset), dataset.labels.tolist()))
    for part in (again.train, again.val):
        assert [position_label[p] for p in _positions(part)] == part.labels.tolist()
