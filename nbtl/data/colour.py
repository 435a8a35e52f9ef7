"""Built-in colour datasets made from images that packages install: nothing is downloaded.

Three sources of different kinds, so that some can tune nbtl and others only report on it:

- ``photo-patches``: square crops of scikit-image's bundled colour photos (``skimage/data/`` in
  the scikit-image wheel); the class is the photo the crop comes from.
- ``emoji``: Noto Color Emoji glyphs (Debian ``fonts-noto-color-emoji``) rendered on white; the
  class is the emoji's category (faces, animals, food, travel, objects), by Unicode code point.
- ``icons``: Oxygen icons (Debian ``oxygen-icon-theme``) on white; the class is the icon's
  freedesktop context (actions, apps, devices, mimetypes, status).

Every image of a source is fixed (crops come from a fixed generator); the ``seed`` only chooses
which images ``per_class`` keeps, as for the other built-ins.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nbtl.data.dataset import ImageDataset
from nbtl.data.images import allocate_images, median_size, open_image, resize_square, to_rgb_array
from nbtl.data.selection import select_per_class
from nbtl.errors import DataError

# ---------------------------------------------------------------------------------------------- photo patches
#: class name -> file in scikit-image's ``data`` folder (all colour, all shipped inside the wheel).
PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "cat": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "galaxies": "hubble_deep_field.jpg",
    "tissue": "ihc.png",
    "retina": "retina.jpg",
    "motorcycle": "motorcycle_left.png",
}
PATCHES_PER_PHOTO = 120
_PATCH_SIDE = (0.2, 0.45)  # crop side as a fraction of the photo's shorter side
_MIN_PATCH_STD = 12.0  # reject near-uniform crops (black sky, retina border): they name no photo
_PATCH_GENERATOR_SEED = 20240607  # fixed: the dataset is the same for every `seed`


def load_photo_patches(image_size: int, per_class: int | None, seed: int) -> ImageDataset:
    """Square crops of eight colour photos bundled with scikit-image; the label is the photo.

    ``PATCHES_PER_PHOTO`` (120) crops per photo, sides 20-45 % of the photo's shorter side, at
    positions drawn by a fixed generator; near-uniform crops are redrawn.
    """
    folder = _skimage_data_folder()
    names = list(PHOTO_FILES)
    labels = np.repeat(np.arange(len(names), dtype=np.int64), PATCHES_PER_PHOTO)
    keep = select_per_class(labels, per_class, seed)
    images = allocate_images(len(keep), image_size)
    pixels = images.numpy()
    sizes = []
    row = 0
    for label, name in enumerate(names):
        photo = to_rgb_array(open_image(folder / PHOTO_FILES[name]))
        sizes.append(photo.shape[:2])
        boxes = _patch_boxes(photo, np.random.default_rng([_PATCH_GENERATOR_SEED, label]))
        wanted = keep[labels[keep] == label] - label * PATCHES_PER_PHOTO
        for top, left, side in boxes[wanted]:
            crop = Image.fromarray(photo[top : top + side, left : left + side])
            pixels[row] = np.asarray(resize_square(crop, image_size)).transpose(2, 0, 1)
            row += 1
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(labels[keep]),
        classes=names,
        name="photo-patches",
        grayscale=False,
        original_size=median_size(np.array(sizes)),
    )


def _patch_boxes(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``PATCHES_PER_PHOTO`` rows of (top, left, side), each crop showing some structure."""
    height, width = photo.shape[:2]
    shorter = min(height, width)
    boxes = []
    for _ in range(PATCHES_PER_PHOTO * 50):
        side = int(rng.uniform(*_PATCH_SIDE) * shorter)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        step = max(1, side // 32)
        if photo[top : top + side : step, left : left + side : step].std() >= _MIN_PATCH_STD:
            boxes.append((top, left, side))
            if len(boxes) == PATCHES_PER_PHOTO:
                return np.array(boxes, dtype=np.int64)
    raise DataError(
        f"photo-patches: too few textured crops in a {width}x{height} photo; "
        "re-install scikit-image (`pip install --force-reinstall scikit-image`)"
    )


def _skimage_data_folder() -> Path:
    spec = importlib.util.find_spec("skimage")
    folder = Path(next(iter(spec.submodule_search_locations or []), "")) / "data" if spec else None
    missing = [] if folder is None else [f for f in PHOTO_FILES.values() if not (folder / f).is_file()]
    if folder is None or missing:
        raise DataError(
            "built-in dataset 'photo-patches' needs the photos bundled with scikit-image"
            + (f" (missing {', '.join(missing)})" if missing else "")
            + "; run `pip install scikit-image` (or `pip install -e '.[dev]'`)"
        )
    return folder


# ---------------------------------------------------------------------------------------------- emoji
NOTO_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
_NOTO_EMOJI_PIXELS = 109  # the one size of the font's colour bitmaps (CBDT)

#: category -> inclusive code point ranges (Unicode's emoji blocks; glyphs the font lacks are skipped).
EMOJI_CATEGORIES = {
    "faces": [
        (0x1F600, 0x1F637),
        (0x1F641, 0x1F644),
        (0x1F910, 0x1F915),
        (0x1F917, 0x1F925),
        (0x1F927, 0x1F92F),
        (0x1F970, 0x1F976),
        (0x1F978, 0x1F97A),
        (0x1F9D0, 0x1F9D0),
        (0x1FAE0, 0x1FAE8),
    ],
    "animals": [(0x1F400, 0x1F43E), (0x1F980, 0x1F9AE), (0x1FAB0, 0x1FABF)],
    "food": [(0x1F345, 0x1F37F), (0x1F950, 0x1F96F), (0x1F9C0, 0x1F9CB), (0x1FAD0, 0x1FADB)],
    "travel": [
        (0x1F680, 0x1F6A8),
        (0x1F6E9, 0x1F6FC),
        (0x1F3CE, 0x1F3CF),
        (0x1F3D4, 0x1F3DF),
        (0x1F3E0, 0x1F3F0),
        (0x2708, 0x2708),
        (0x26F4, 0x26F5),
    ],
    "objects": [(0x1F4B0, 0x1F4FF), (0x1F50B, 0x1F52E)],
}


def load_emoji(image_size: int, per_class: int | None, seed: int) -> ImageDataset:
    """Noto Color Emoji glyphs rendered on white, labelled by category (one image per emoji).

    References
    ----------
    Google, Noto Color Emoji (SIL Open Font License), Debian package ``fonts-noto-color-emoji``.
    """
    from PIL import ImageDraw, ImageFont

    if not NOTO_EMOJI_FONT.is_file():
        raise DataError(
            f"built-in dataset 'emoji' needs {NOTO_EMOJI_FONT}; run `apt-get install fonts-noto-color-emoji`"
        )
    try:
        from fontTools.ttLib import TTFont

        covered = set(TTFont(str(NOTO_EMOJI_FONT), lazy=True).getBestCmap())
        font = ImageFont.truetype(str(NOTO_EMOJI_FONT), _NOTO_EMOJI_PIXELS)
    except Exception as error:  # a corrupt or foreign file at that path
        raise DataError(
            f"cannot read the emoji font {NOTO_EMOJI_FONT}: {error}; "
            "run `apt-get install --reinstall fonts-noto-color-emoji`"
        ) from None
    names = list(EMOJI_CATEGORIES)
    points = [
        (label, code)
        for label, name in enumerate(names)
        for low, high in EMOJI_CATEGORIES[name]
        for code in range(low, high + 1)
        if code in covered
    ]
    labels = np.array([label for label, _ in points], dtype=np.int64)
    keep = select_per_class(labels, per_class, seed)
    images = allocate_images(len(keep), image_size)
    pixels = images.numpy()
    canvas_side = _NOTO_EMOJI_PIXELS * 3 // 2
    for row, index in enumerate(keep):
        glyph = Image.new("RGBA", (canvas_side, canvas_side), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((4, 4), chr(points[index][1]), font=font, embedded_color=True)
        pixels[row] = to_rgb_array(resize_square(_on_white_square(glyph), image_size)).transpose(2, 0, 1)
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(labels[keep]),
        classes=names,
        name="emoji",
        grayscale=False,
        original_size=(_NOTO_EMOJI_PIXELS, _NOTO_EMOJI_PIXELS),
    )


# ---------------------------------------------------------------------------------------------- icons
OXYGEN_ICONS_DIR = Path("/usr/share/icons/oxygen/base")
ICON_CONTEXTS = ("actions", "apps", "devices", "mimetypes", "status")
_ICON_SIZES = ("256x256", "128x128", "64x64", "48x48", "32x32")  # largest first; smaller ones are too coarse


def load_icons(image_size: int, per_class: int | None, seed: int) -> ImageDataset:
    """Oxygen icons on white, labelled by their freedesktop context folder.

    Each icon name is taken once, at the largest size the theme has (32 px or more); a picture under
    several names counts once, and one filed under two contexts is left out.

    References
    ----------
    KDE Oxygen icon theme (LGPL-3), Debian package ``oxygen-icon-theme``.
    """
    if not OXYGEN_ICONS_DIR.is_dir():
        raise DataError(
            f"built-in dataset 'icons' needs the Oxygen icons in {OXYGEN_ICONS_DIR}; "
            "run `apt-get install oxygen-icon-theme`"
        )
    paths, labels = _icon_files()
    keep = select_per_class(labels, per_class, seed)
    images = allocate_images(len(keep), image_size)
    pixels = images.numpy()
    sizes = np.empty((len(keep), 2), dtype=np.int64)
    for row, index in enumerate(keep):
        icon = open_image(paths[index])
        sizes[row] = (icon.height, icon.width)
        pixels[row] = to_rgb_array(resize_square(_on_white_square(icon.convert("RGBA")), image_size)).transpose(2, 0, 1)
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(labels[keep]),
        classes=list(ICON_CONTEXTS),
        name="icons",
        grayscale=False,
        original_size=median_size(sizes),
    )


def _icon_files() -> tuple[list[Path], np.ndarray]:
    """Each icon name of each context once, at its largest size; a picture found under several names
    (links, copies, re-encodings) is kept once, and dropped when it appears in two contexts (its label is ambiguous)."""
    by_content: dict[str, list[tuple[int, Path]]] = {}
    for label, context in enumerate(ICON_CONTEXTS):
        names: set[str] = set()
        for size in _ICON_SIZES:
            folder = OXYGEN_ICONS_DIR / size / context
            for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
                if path.name in names:
                    continue
                names.add(path.name)
                digest = _pixel_digest(path)
                by_content.setdefault(digest, []).append((label, path))
    kept = sorted(
        (label, min(paths)[1])
        for label, paths in (
            (entries[0][0], entries) for entries in by_content.values() if len({label for label, _ in entries}) == 1
        )
    )
    return [path for _, path in kept], np.array([label for label, _ in kept], dtype=np.int64)


def _pixel_digest(path: Path) -> str:
    """A hash of the decoded pixels: the theme holds some pictures twice, encoded differently."""
    try:
        with Image.open(path) as image:
            return hashlib.sha1(repr(image.size).encode() + image.convert("RGBA").tobytes()).hexdigest()
    except (OSError, ValueError, Image.DecompressionBombError):
        return hashlib.sha1(path.read_bytes()).hexdigest()  # open_image names the corrupt file later


def _on_white_square(image: Image.Image) -> Image.Image:
    """The drawn part of an RGBA image (its alpha's bounding box), centred on a white square with a margin."""
    box = image.getchannel("A").getbbox() or (0, 0, image.width, image.height)
    drawn = image.crop(box)
    side = int(max(drawn.size) * 1.1) + 2
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(drawn, ((side - drawn.width) // 2, (side - drawn.height) // 2), drawn)
    return square
