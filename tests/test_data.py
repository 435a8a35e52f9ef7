"""Tests for nbtl.data: real image files written with PIL into tmp_path, no mocks."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nbtl.data import (
    AugmentedDataset,
    ImageDataset,
    Splits,
    load_dataset,
    make_augmentation,
    split_dataset,
)
from nbtl.data.builtin import FASHION_MNIST_DIR
from nbtl.errors import ConfigError, DataError

# Solid colour per class, so each decoded image can be checked against its label.
COLOURS = {"bird": (0, 0, 255), "cat": (255, 0, 0), "dog": (0, 255, 0)}


def _write_image(path: Path, colour, size, grayscale=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if grayscale:
        Image.new("L", size, color=int(np.mean(colour))).save(path)
    else:
        Image.new("RGB", size, color=colour).save(path, quality=95)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """pets/<class>/: PNG and JPEG files of different sizes, some grayscale, plus junk to skip."""
    root = tmp_path / "pets"
    sizes = [(40, 30), (20, 20), (64, 48), (12, 50)]
    for name, colour in COLOURS.items():
        for i, size in enumerate(sizes):
            suffix = ".jpg" if i % 2 else ".png"
            _write_image(root / name / f"{name}{i}{suffix}", colour, size)
    _write_image(root / "cat" / "nested" / "cat_gray.png", COLOURS["cat"], (25, 35), grayscale=True)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def _class_of_pixel(image: torch.Tensor) -> str:
    centre = image[:, image.shape[1] // 2, image.shape[2] // 2].tolist()
    return min(COLOURS, key=lambda name: sum(abs(a - b) for a, b in zip(COLOURS[name], centre)))


def _is_gray(image: torch.Tensor) -> bool:
    return torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def _write_csv(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _synthetic(counts: dict[str, int]) -> ImageDataset:
    """A tiny dataset whose image i encodes i in its first two pixels, to recover indices."""
    labels = np.concatenate([[label] * count for label, count in enumerate(counts.values())])
    images = torch.zeros((len(labels), 3, 2, 2), dtype=torch.uint8)
    index = torch.arange(len(labels))
    images[:, 0, 0, 0] = (index // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (index % 256).to(torch.uint8)
    labels = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(images, labels, list(counts), "synthetic", grayscale=False, original_size=(2, 2))


def _indices(dataset: ImageDataset) -> set[int]:
    return set((dataset.images[:, 0, 0, 0].long() * 256 + dataset.images[:, 0, 0, 1].long()).tolist())


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


# --- loading --------------------------------------------------------------------------------


def test_image_folder_loads_shapes_labels_and_pixels(image_folder):
    dataset = load_dataset(str(image_folder), image_size=16)
    assert dataset.classes == ["bird", "cat", "dog"]
    assert dataset.images.shape == (13, 3, 16, 16) and dataset.images.dtype == torch.uint8
    assert dataset.labels.dtype == torch.int64 and dataset.labels.shape == (13,)
    assert dataset.class_counts() == {"bird": 4, "cat": 5, "dog": 4}
    assert dataset.name == "pets" and dataset.grayscale is False
    assert dataset.original_size == (35, 25)  # median H, median W
    for image, label in zip(dataset.images, dataset.labels):
        expected = dataset.classes[label]
        if _is_gray(image):
            assert expected == "cat"  # the grayscale cat: replicated channels, no colour to compare
            continue
        assert _class_of_pixel(image) == expected
    assert sum(_is_gray(image) for image in dataset.images) == 1


def test_resize_keeps_the_centre_of_the_shorter_side(tmp_path):
    wide = np.zeros((20, 40), dtype=np.uint8)
    wide[:, 20:] = 255  # left half black, right half white
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
        Image.fromarray(wide).save(tmp_path / "d" / name / "wide.png")
    dataset = load_dataset(tmp_path / "d", image_size=10)
    image = dataset.images[0, 0]
    assert dataset.grayscale is True and dataset.original_size == (20, 40)
    assert image[:, :4].max() == 0 and image[:, 6:].min() == 255  # 20x40 -> 10x20 -> centre 10


def test_sixteen_bit_grayscale_is_rescaled_not_clipped(tmp_path):
    for name, level in (("dark", 0), ("bright", 65535)):
        (tmp_path / "deep" / name).mkdir(parents=True)
        Image.fromarray(np.full((6, 6), level, dtype=np.uint16)).save(tmp_path / "deep" / name / "x.png")
    dataset = load_dataset(tmp_path / "deep", image_size=4)
    assert dataset.grayscale and dataset.images[dataset.labels == 0].min() == 255  # "bright" sorts first
    assert dataset.images[dataset.labels == 1].max() == 0


def test_csv_loads_the_same_images_as_the_folder(image_folder, tmp_path):
    folder = load_dataset(str(image_folder), image_size=16)
    rows = []
    for name in folder.classes:
        for path in sorted(p for p in (image_folder / name).rglob("*") if p.suffix in {".png", ".jpg"}):
            relative = path.relative_to(image_folder.parent)
            rows.append([str(path) if name == "dog" else str(relative), name])
    csv_path = _write_csv(tmp_path / "pets.csv", ["path", "label"], rows)
    from_csv = load_dataset(str(csv_path), image_size=16)
    assert from_csv.classes == folder.classes and from_csv.name == "pets"
    assert torch.equal(from_csv.labels, folder.labels)
    assert torch.equal(from_csv.images, folder.images)
    assert from_csv.fingerprint() == folder.fingerprint()


def test_csv_with_integer_labels_sorts_them_numerically(image_folder, tmp_path):
    files = ["pets/cat/cat0.png", "pets/cat/cat1.jpg", "pets/cat/cat2.png", "pets/cat/cat3.jpg"]
    rows = [[path, label] for path, label in zip(files, ["10", "2", "2", "10"])]
    dataset = load_dataset(_write_csv(tmp_path / "nums.csv", ["path", "label"], rows), image_size=8)
    assert dataset.classes == ["2", "10"] and dataset.labels.tolist() == [1, 0, 0, 1]


def _distinct_images(root: Path, per_class: int = 12) -> None:
    """root/<class>/: PNGs whose colour encodes (class, index), so a repeated image is visible."""
    for label, name in enumerate(COLOURS):
        for i in range(per_class):
            _write_image(root / name / f"{name}{i:02d}.png", (label * 60, i * 20, 100), (6, 6))


def _colours(dataset: ImageDataset) -> list[tuple[int, ...]]:
    return [tuple(image[:, 0, 0].tolist()) for image in dataset.images]


def test_symlink_loops_and_links_list_each_real_image_once(tmp_path, caplog):
    root = tmp_path / "looped"
    _distinct_images(root)  # 3 classes x 12 = 36 distinct images
    (root / "cat" / "again").symlink_to(root / "cat", target_is_directory=True)  # cat/again -> cat
    (root / "dog" / "deep").mkdir()
    (root / "dog" / "deep" / "up").symlink_to(root / "dog", target_is_directory=True)  # a longer loop
    (root / "bird" / "alias.png").symlink_to(root / "bird" / "bird00.png")  # one file, two names
    (root / "bird" / "hard.png").hardlink_to(root / "bird" / "bird01.png")
    _write_image(root / "dog" / "deep" / "new.png", (250, 250, 250), (6, 6))  # a real nested image
    with caplog.at_level("WARNING", logger="nbtl.data.listing"):
        dataset = load_dataset(root, image_size=4)
    assert dataset.class_counts() == {"bird": 12, "cat": 12, "dog": 13}
    assert len(set(_colours(dataset))) == len(dataset) == 37
    assert any("bird" in record.message and "2 paths" in record.message for record in caplog.records)
    splits = split_dataset(dataset, val_fraction=0.2, test_fraction=0.2, seed=0)
    parts = [set(_colours(part)) for part in (splits.train, splits.val, splits.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_a_link_putting_one_image_in_two_classes_is_refused(tmp_path):
    root = tmp_path / "crossed"
    _distinct_images(root, per_class=3)
    (root / "cat" / "everything").symlink_to(root, target_is_directory=True)  # cat/everything -> root
    with pytest.raises(DataError, match=r"same file as .*bird00.png.*class 'bird'") as error:
        load_dataset(root, image_size=4)
    assert "class 'cat'" in _one_line(error)


def test_csv_duplicate_rows_are_dropped_with_a_warning_naming_them(tmp_path, caplog):
    root = tmp_path / "files"
    _distinct_images(root, per_class=4)
    rows = [[f"files/{name}/{name}{i:02d}.png", name] for name in COLOURS for i in range(4)]
    rows += [["files/cat/cat00.png", "cat"], ["./files/cat/../cat/cat01.png", "cat"]]  # lines 14, 15
    csv_path = _write_csv(tmp_path / "dups.csv", ["path", "label"], rows)
    with caplog.at_level("WARNING", logger="nbtl.data.listing"):
        dataset = load_dataset(csv_path, image_size=4)
    assert len(dataset) == 12 and len(set(_colours(dataset))) == 12
    message = " ".join(record.message for record in caplog.records)
    assert "dropped 2 duplicate rows" in message
    assert "line 14 repeats line 6" in message and "line 15 repeats line 7" in message


def test_csv_image_under_two_labels_is_refused_naming_both_rows(tmp_path):
    root = tmp_path / "files"
    _distinct_images(root, per_class=4)
    rows = [[f"files/{name}/{name}{i:02d}.png", name] for name in COLOURS for i in range(4)]
    rows.append(["files/cat/cat02.png", "dog"])  # line 14; line 8 says cat
    csv_path = _write_csv(tmp_path / "clash.csv", ["path", "label"], rows)
    with pytest.raises(
        DataError,
        match=r"line 14: image '.*cat02.png' has label 'dog' but line 8 "
        r"gives it label 'cat'",
    ) as error:
        load_dataset(csv_path, image_size=4)
    _one_line(error)


def test_digits_loads_all_and_per_class_is_seeded():
    digits = load_dataset("digits", image_size=16)
    assert digits.images.shape == (1797, 3, 16, 16) and len(digits.classes) == 10
    assert digits.grayscale and digits.original_size == (8, 8) and int(digits.images.max()) == 255
    few = load_dataset("digits", image_size=8, per_class=5, seed=1)
    assert set(few.class_counts().values()) == {5} and len(few) == 50
    again = load_dataset("digits", image_size=8, per_class=5, seed=1)
    other = load_dataset("digits", image_size=8, per_class=5, seed=2)
    assert again.fingerprint() == few.fingerprint() != other.fingerprint()


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"Debian's Fashion-MNIST files are absent from {FASHION_MNIST_DIR}; "
    "run `apt-get install dataset-fashion-mnist` to test them",
)
def test_fashion_mnist_from_debian_files():
    dataset = load_dataset("fashion-mnist", image_size=32, per_class=20)
    assert len(dataset) == 200 and set(dataset.class_counts().values()) == {20}
    assert dataset.images.shape == (200, 3, 32, 32) and dataset.classes[0] == "T-shirt/top"
    assert dataset.original_size == (28, 28) and dataset.grayscale


@pytest.mark.parametrize("layout, compress", [("", True), ("FashionMNIST/raw", False)])
def test_fashion_mnist_from_a_directory(tmp_path, layout, compress):
    labels = np.arange(30) % 10
    images = np.repeat(labels[:, None, None] * 20, 28, axis=1).repeat(28, axis=2)
    folder = tmp_path / layout if layout else tmp_path
    _write_idx(folder / "train-images-idx3-ubyte", images, compress)
    _write_idx(folder / "train-labels-idx1-ubyte", labels, compress)
    dataset = load_dataset(f"fashion-mnist:{tmp_path}", image_size=8, per_class=2)
    assert len(dataset) == 20 and set(dataset.class_counts().values()) == {2}
    assert torch.equal(dataset.images[:, 0, 4, 4], (dataset.labels * 20).to(torch.uint8))


# --- dataset helpers -----------------------------------------------------------------------


def test_subset_class_counts_and_fingerprint():
    dataset = _synthetic({"a": 4, "b": 6})
    part = dataset.subset([0, 5, 6])
    assert part.labels.tolist() == [0, 1, 1] and part.classes == ["a", "b"]
    assert part.class_counts() == {"a": 1, "b": 2}
    assert dataset.subset(torch.tensor([True] * 4 + [False] * 6)).class_counts() == {"a": 4, "b": 0}
    changed = dataset.subset(range(len(dataset)))
    assert changed.fingerprint() == dataset.fingerprint()
    changed.labels[0] = 1
    assert changed.fingerprint() != dataset.fingerprint()


# --- splits ---------------------------------------------------------------------------------


def test_split_is_stratified_disjoint_complete_and_seeded():
    dataset = _synthetic({"a": 40, "b": 100, "c": 3, "d": 20})
    splits = split_dataset(dataset, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert isinstance(splits, Splits)
    parts = [_indices(part) for part in (splits.train, splits.val, splits.test)]
    assert sum(len(part) for part in parts) == len(dataset)
    assert set().union(*parts) == set(range(len(dataset)))
    for part in (splits.train, splits.val, splits.test):
        assert min(part.class_counts().values()) >= 1
    assert splits.test.class_counts() == {"a": 6, "b": 15, "c": 1, "d": 3}
    assert splits.val.class_counts() == splits.test.class_counts()
    same = split_dataset(dataset, seed=0)
    other = split_dataset(dataset, seed=1)
    assert _indices(same.test) == parts[2] and _indices(same.val) == parts[1]
    assert _indices(other.test) != parts[2]


def test_split_rejects_a_class_with_too_few_images():
    with pytest.raises(DataError, match=r"class 'rare' .* has 2 images; .* at least 3"):
        split_dataset(_synthetic({"common": 10, "rare": 2}))


@pytest.mark.parametrize("val, test", [(0, 0.2), (0.5, 0.5), (-0.1, 0.2), (0.2, True)])
def test_split_rejects_bad_fractions(val, test):
    with pytest.raises(DataError, match="fraction"):
        split_dataset(_synthetic({"a": 10, "b": 10}), val_fraction=val, test_fraction=test)


# --- errors ---------------------------------------------------------------------------------


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_corrupt_image_names_the_file(image_folder):
    (image_folder / "dog" / "broken.png").write_bytes(b"\x89PNG garbage, not an image at all")
    with pytest.raises(DataError, match="broken.png") as error:
        load_dataset(image_folder, image_size=8)
    assert "corrupt" in _one_line(error)


def test_truncated_image_names_the_file(image_folder):
    good = (image_folder / "bird" / "bird0.png").read_bytes()
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noisy.save(image_folder / "bird" / "cut.png")
    data = (image_folder / "bird" / "cut.png").read_bytes()
    (image_folder / "bird" / "cut.png").write_bytes(data[: len(data) // 2])
    assert good  # the other files stay readable
    with pytest.raises(DataError, match="cut.png"):
        load_dataset(image_folder, image_size=8)


def test_empty_class_folder_is_named(image_folder):
    (image_folder / "fish").mkdir()
    (image_folder / "fish" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="fish") as error:
        load_dataset(image_folder, image_size=8)
    assert "holds no images" in _one_line(error)


def test_directory_without_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_dataset(tmp_path / "empty", image_size=8)
    _write_image(tmp_path / "flat" / "a.png", (1, 2, 3), (5, 5))
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(tmp_path / "flat", image_size=8)


def test_single_class_is_rejected(tmp_path):
    _write_image(tmp_path / "solo" / "only" / "a.png", (1, 2, 3), (5, 5))
    with pytest.raises(DataError, match="only class 'only'.*at least two classes"):
        load_dataset(tmp_path / "solo", image_size=8)


def test_missing_path_and_unknown_source(tmp_path):
    with pytest.raises(DataError, match="does-not-exist") as error:
        load_dataset(str(tmp_path / "does-not-exist"), image_size=8)
    assert "does not exist" in _one_line(error)
    with pytest.raises(DataError, match="unknown dataset source 'cifar'") as error:
        load_dataset("cifar", image_size=8)
    assert "digits" in _one_line(error)
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match="not a .csv"):
        load_dataset(tmp_path / "data.txt", image_size=8)


def test_csv_without_path_label_columns(tmp_path):
    csv_path = _write_csv(tmp_path / "bad.csv", ["file", "class"], [["a.png", "cat"]])
    with pytest.raises(DataError, match="bad.csv.*path,label") as error:
        load_dataset(csv_path, image_size=8)
    _one_line(error)


def test_csv_with_a_missing_file_names_row_and_path(image_folder, tmp_path):
    rows = [["pets/cat/cat0.png", "cat"], ["pets/dog/nope.png", "dog"], ["gone.png", "dog"]]
    csv_path = _write_csv(tmp_path / "list.csv", ["path", "label"], rows)
    with pytest.raises(DataError, match=r"line 3: image file '.*nope.png' not found \(and 1 more rows\)"):
        load_dataset(csv_path, image_size=8)


def test_fashion_mnist_directory_without_files_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as error:
        load_dataset(f"fashion-mnist:{tmp_path}", image_size=8)
    _one_line(error)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nowhere'}", image_size=8)


def test_corrupt_idx_file_is_named(tmp_path):
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(10), compress=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset(f"fashion-mnist:{tmp_path}", image_size=8)


@pytest.mark.parametrize("kwargs", [{"image_size": 0}, {"image_size": 8.5}, {"image_size": 8, "per_class": 0}])
def test_bad_sizes_are_rejected(kwargs):
    with pytest.raises(DataError, match="must be a positive integer"):
        load_dataset("digits", **kwargs)


# --- augmentation ---------------------------------------------------------------------------


def test_hflip_with_probability_one_flips():
    image = torch.arange(3 * 4 * 4, dtype=torch.uint8).reshape(3, 4, 4)
    flipped = make_augmentation({"hflip": 1.0})(image)
    assert flipped.dtype == torch.uint8 and torch.equal(flipped, image.flip(-1))
    assert torch.equal(make_augmentation(None)(image), image)
    assert torch.equal(make_augmentation({"hflip": False})(image), image)


def test_crop_and_rotation_keep_shape_and_dtype():
    augment = make_augmentation({"hflip": True, "crop_padding": 2, "rotation": 15})
    image = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    torch.manual_seed(0)
    outputs = [augment(image) for _ in range(20)]
    assert all(out.shape == (3, 8, 8) and out.dtype == torch.uint8 for out in outputs)
    assert any(not torch.equal(out, image) for out in outputs)  # padding / rotation bring in zeros


@pytest.mark.parametrize(
    "spec, word",
    [({"vflip": True}, "vflip"), ({"hflip": 2}, "hflip"), ({"crop_padding": -1}, "crop_padding"),
     ({"rotation": "a lot"}, "rotation")],
)  # fmt: skip
def test_bad_augmentation_spec_raises_config_error(spec, word):
    with pytest.raises(ConfigError, match=word):
        make_augmentation(spec)


def test_augmented_dataset_serves_uint8_items():
    dataset = _synthetic({"a": 3, "b": 3})
    augmented = AugmentedDataset(dataset, {"hflip": 1.0})
    image, label = augmented[4]
    assert len(augmented) == 6 and isinstance(label, int) and label == 1
    assert image.dtype == torch.uint8 and torch.equal(image, dataset.images[4].flip(-1))
    batch = next(iter(torch.utils.data.DataLoader(AugmentedDataset(dataset), batch_size=6)))
    assert torch.equal(batch[0], dataset.images) and batch[1].tolist() == dataset.labels.tolist()


def test_classes_keeps_named_or_indexed_classes_relabelled_in_order():
    full = load_dataset("digits", image_size=8, per_class=10, seed=0)
    subset = load_dataset("digits", image_size=8, per_class=10, seed=0, classes="7,2")
    assert subset.classes == ["7", "2"] and subset.name == "digits[7,2]"
    assert subset.class_counts() == {"7": 10, "2": 10}
    # the images of class 7 are the same images, now labelled 0
    assert torch.equal(subset.images[subset.labels == 0], full.images[full.labels == 7])
    fashion = load_dataset("fashion-mnist", image_size=28, per_class=5, classes=["Bag", "1"])
    assert fashion.classes == ["Bag", "Trouser"] and fashion.name == "fashion-mnist[8,1]"


@pytest.mark.parametrize("classes, word", [("3", "at least two"), ("1,1", "twice"), ("1,cat", "'cat' is not in")])
def test_bad_classes_are_named(classes, word):
    with pytest.raises(DataError, match=word):
        load_dataset("digits", image_size=8, per_class=5, classes=classes)


# --- official splits ---------------------------------------------------------------------------


def _official_folder(root: Path, counts: dict[str, int], classes=("cat", "dog"), start: int = 0) -> Path:
    """root/<part>/<class>/: a PNG of its own colour per image (lossless, so decoded pixels name the file)."""
    number = start
    for part, count in counts.items():
        for name in classes:
            for _ in range(count):
                number += 1
                _write_image(root / part / name / f"{number}.png", (number % 256, number // 256, 7), (10, 10))
    return root


def _pixels(dataset: ImageDataset) -> set[tuple[int, ...]]:
    return {tuple(image[:, 4, 4].tolist()) for image in dataset.images}


@pytest.mark.parametrize("seed", [0, 3])
def test_image_folder_with_train_and_test_keeps_its_test_set(tmp_path, seed):
    root = _official_folder(tmp_path / "pets", {"train": 8, "test": 3})
    dataset = load_dataset(str(root), image_size=8, seed=seed)
    assert dataset.classes == ["cat", "dog"] and dataset.name == "pets"
    assert dataset.part_counts() == {"train": 16, "test": 6}
    splits = split_dataset(dataset, val_fraction=0.25, test_fraction=0.4, seed=seed)
    test_images = _pixels(load_dataset(str(root / "test"), image_size=8))
    assert _pixels(splits.test) == test_images
    assert not _pixels(splits.train) & test_images and not _pixels(splits.val) & test_images
    assert splits.val.class_counts() == {"cat": 2, "dog": 2}  # val_fraction of train/, not of everything
    assert len(splits.train) == 12


def test_image_folder_val_folder_is_honoured(tmp_path):
    root = _official_folder(tmp_path / "pets", {"train": 5, "validation": 2, "test": 3})
    splits = split_dataset(load_dataset(str(root), image_size=8), seed=1)
    assert _pixels(splits.val) == _pixels(load_dataset(str(root / "validation"), image_size=8))
    assert _pixels(splits.test) == _pixels(load_dataset(str(root / "test"), image_size=8))
    assert _pixels(splits.train) == _pixels(load_dataset(str(root / "train"), image_size=8))


def test_train_and_val_folders_without_test_draw_test_from_train(tmp_path):
    root = _official_folder(tmp_path / "pets", {"train": 10, "val": 2})
    splits = split_dataset(load_dataset(str(root), image_size=8), test_fraction=0.2, seed=0)
    assert _pixels(splits.val) == _pixels(load_dataset(str(root / "val"), image_size=8))
    assert splits.test.class_counts() == {"cat": 2, "dog": 2}


def test_per_class_caps_only_the_training_images(tmp_path):
    root = _official_folder(tmp_path / "pets", {"train": 8, "test": 5})
    dataset = load_dataset(str(root), image_size=8, per_class=3)
    assert dataset.part_counts() == {"train": 6, "test": 10}


def test_test_data_source_is_kept_as_the_test_set(tmp_path):
    train = _official_folder(tmp_path / "train", {".": 7}, classes=("cat", "dog", "fox"))
    test = _official_folder(tmp_path / "holdout", {".": 2}, classes=("dog", "cat", "fox"), start=100)
    dataset = load_dataset(str(train), image_size=8, test_data=str(test), classes="fox,cat")
    assert dataset.classes == ["fox", "cat"]
    for seed in (0, 1):
        splits = split_dataset(dataset, seed=seed)
        held = load_dataset(str(test), image_size=8, classes="fox,cat")
        assert _pixels(splits.test) == _pixels(held)
        # labelled by class name, not by the test source's own class order
        by_pixel = {tuple(img[:, 4, 4].tolist()): held.classes[int(lab)] for img, lab in zip(held.images, held.labels)}
        for image, label in zip(splits.test.images, splits.test.labels):
            assert splits.test.classes[int(label)] == by_pixel[tuple(image[:, 4, 4].tolist())]
        assert not _pixels(splits.train) & _pixels(held)


def test_test_data_flows_through_the_data_settings(tmp_path):
    from nbtl.data.settings import DataSettings

    train = _official_folder(tmp_path / "train", {".": 6})
    test = _official_folder(tmp_path / "holdout", {".": 2}, start=100)
    settings = DataSettings(image_size=8).with_overrides({"test_data": str(test)})
    assert DataSettings.from_params({k: str(v) for k, v in settings.to_params().items()}) == settings
    splits = split_dataset(load_dataset(str(train), **settings.load_kwargs()), **settings.split_kwargs())
    assert _pixels(splits.test) == _pixels(load_dataset(str(test), image_size=8))


def test_official_parts_with_different_classes_are_one_clear_line(tmp_path):
    root = _official_folder(tmp_path / "pets", {"train": 4, "test": 2})
    _write_image(root / "test" / "emu" / "1.png", (1, 2, 3), (10, 10))
    with pytest.raises(DataError) as error:
        load_dataset(str(root), image_size=8)
    assert "test/ has class folder 'emu' that train/ lacks" in _one_line(error)
    other = _official_folder(tmp_path / "other", {".": 2}, classes=("cat", "cow"))
    with pytest.raises(DataError) as error:
        load_dataset(str(tmp_path / "pets" / "train"), image_size=8, test_data=str(other))
    assert "test source" in _one_line(error) and "'cow'" in _one_line(error)


def test_test_data_with_a_test_folder_too_is_refused(tmp_path):
    root = _official_folder(tmp_path / "pets", {"train": 4, "test": 2})
    with pytest.raises(DataError, match="its own test/ folder"):
        load_dataset(str(root), image_size=8, test_data=str(root / "test"))


def test_classes_named_train_and_test_are_an_ordinary_image_folder(tmp_path):
    root = _official_folder(tmp_path / "odd", {".": 3}, classes=("test", "train"))
    dataset = load_dataset(str(root), image_size=8)
    assert dataset.classes == ["test", "train"] and dataset.parts is None


def test_parallel_decoding_gives_the_serial_pixels_and_names_a_corrupt_file(tmp_path, monkeypatch):
    from nbtl.data import images as decoding

    root = _official_folder(tmp_path / "many", {".": 40}, classes=("a", "b", "c"))
    paths = sorted(root.rglob("*.png"))
    monkeypatch.setenv("NBTL_DECODE_WORKERS", "1")
    serial = decoding.decode_files(paths, 12)
    monkeypatch.setenv("NBTL_DECODE_WORKERS", "3")
    monkeypatch.setattr(decoding, "DECODE_CHUNK", 7)  # several chunks a process, the last one short
    parallel = decoding.decode_files(paths, 12)
    assert torch.equal(serial[0], parallel[0]) and serial[1:] == parallel[1:]
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"cannot read image '.*broken\.png'"):
        decoding.decode_files(sorted(root.rglob("*.png")), 12)
