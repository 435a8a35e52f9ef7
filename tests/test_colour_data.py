"""The colour built-ins (photo-patches, emoji, icons): real packaged images, decoded for real."""

from __future__ import annotations

import pytest
import torch

from nbtl.data import colour, load_dataset, split_dataset
from nbtl.errors import DataError

# name -> (classes, fewest images in a class); the emoji and icon sets need their Debian packages.
PROMISED = {
    "photo-patches": (list(colour.PHOTO_FILES), colour.PATCHES_PER_PHOTO),
    "emoji": (list(colour.EMOJI_CATEGORIES), 60),
    "icons": (list(colour.ICON_CONTEXTS), 60),
}
NEEDS = {
    "emoji": (colour.NOTO_EMOJI_FONT.is_file(), "run `apt-get install fonts-noto-color-emoji` to test it"),
    "icons": (colour.OXYGEN_ICONS_DIR.is_dir(), "run `apt-get install oxygen-icon-theme` to test it"),
}
pytest.importorskip("skimage", reason="photo-patches needs scikit-image's bundled photos: pip install scikit-image")


def _available(name: str):
    present, how = NEEDS.get(name, (True, ""))
    return pytest.param(name, marks=pytest.mark.skipif(not present, reason=f"{name}: {how}"))


NAMES = [_available(name) for name in PROMISED]


@pytest.fixture(scope="module")
def loaded() -> dict:
    """Each available source once, in full, at 24 px (shared: decoding is the slow part)."""
    return {name: load_dataset(name, image_size=24) for name in PROMISED if NEEDS.get(name, (True,))[0]}


@pytest.mark.parametrize("name", NAMES)
def test_loads_promised_classes_and_counts_in_colour(loaded, name):
    dataset = loaded[name]
    classes, fewest = PROMISED[name]
    counts = dataset.class_counts()
    assert dataset.classes == classes and len(classes) >= 4 and dataset.name == name
    assert min(counts.values()) >= max(fewest, 60), counts
    assert dataset.images.shape == (len(dataset), 3, 24, 24) and dataset.images.dtype == torch.uint8
    assert not dataset.grayscale and min(dataset.original_size) >= 32
    # colour: the channels differ for a good share of the images
    spread = (dataset.images.float().amax(1) - dataset.images.float().amin(1)).mean(dim=(1, 2))
    assert (spread > 10).float().mean() > 0.5
    # no two images are the same
    flat = dataset.images.reshape(len(dataset), -1)
    assert len(torch.unique(flat, dim=0)) == len(dataset)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_images_and_per_class_and_classes_select(loaded, name):
    few = load_dataset(name, image_size=24, per_class=8, seed=3)
    again = load_dataset(name, image_size=24, per_class=8, seed=3)
    other = load_dataset(name, image_size=24, per_class=8, seed=4)
    assert few.fingerprint() == again.fingerprint() != other.fingerprint()
    assert set(few.class_counts().values()) == {8}
    # the kept images are the full dataset's images (per_class only chooses among them)
    full = loaded[name].images.reshape(len(loaded[name]), -1)
    assert all(bool((full == image.reshape(1, -1)).all(1).any()) for image in few.images[:5])
    classes = loaded[name].classes
    chosen = load_dataset(name, image_size=24, per_class=8, seed=3, classes=f"{classes[2]},0")
    assert chosen.classes == [classes[2], classes[0]] and chosen.class_counts() == {classes[2]: 8, classes[0]: 8}
    splits = split_dataset(chosen, seed=1)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 16
    assert set(splits.test.labels.tolist()) == {0, 1}


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(colour, "NOTO_EMOJI_FONT", tmp_path / "NotoColorEmoji.ttf")
    with pytest.raises(DataError, match=r"apt-get install fonts-noto-color-emoji"):
        load_dataset("emoji", image_size=8)
    monkeypatch.setattr(colour, "OXYGEN_ICONS_DIR", tmp_path / "oxygen")
    with pytest.raises(DataError, match=r"apt-get install oxygen-icon-theme"):
        load_dataset("icons", image_size=8)
    monkeypatch.setattr(colour, "PHOTO_FILES", {**colour.PHOTO_FILES, "gone": "no_such_photo.png"})
    with pytest.raises(DataError, match=r"missing no_such_photo.png.*pip install scikit-image"):
        load_dataset("photo-patches", image_size=8)
