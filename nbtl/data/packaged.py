"""Built-in datasets from images that Debian packages install, each also listed image by image.

A source here is a :class:`NativeImages`: its class names, one label per image, and a way to draw image ``i`` at
the source's own resolution. The built-in loader resizes those images (as every other source is resized) and the
benchmarks write the very same images to PNG files (``benchmarks/tasks.py``), so a folder made from a source and
the built-in give identical pixels; that is what makes a pixel-hash check across them meaningful.

- ``fashion-mnist-test``: the Fashion-MNIST *t10k* split (10000 grayscale 28x28 images), never used by the
  training-split built-in ``fashion-mnist`` (Debian ``dataset-fashion-mnist``).
- ``emoji-more``: Noto Color Emoji glyphs in eight categories (about 790 glyphs; the ``emoji`` built-in keeps its
  five), Debian ``fonts-noto-color-emoji``.
- ``playing-cards``: the 52 cards of 12 French-suited KDE card decks rendered from SVG, class = suit (4 x 156),
  Debian ``kdegames-card-data-kf5`` and ``librsvg2-bin`` (``rsvg-convert``).
- ``wallpaper-tiles``: non-overlapping 64 px tiles of ten KDE Plasma wallpapers, class = wallpaper, Debian
  ``plasma-workspace-wallpapers``.

``native_images("icons")`` and ``native_images("digits")`` list the existing built-ins the same way.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nbtl.data import colour
from nbtl.data.builtin import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, fashion_mnist_dataset, idx_path, read_idx
from nbtl.data.dataset import ImageDataset
from nbtl.data.images import allocate_images, median_size, open_image, resize_square, to_rgb_array
from nbtl.data.selection import select_per_class
from nbtl.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class NativeImages:
    """The images of one source, not yet drawn.

    Parameters
    ----------
    name : str
        The source's name (``load_dataset``'s ``source``).
    classes : list of str
        Class names; label ``i`` is ``classes[i]``.
    labels : numpy.ndarray of shape (N,), dtype int64
        One label per image, in the source's fixed order.
    draw : callable
        ``draw(i)`` is image ``i`` as a PIL image (mode ``L`` or ``RGB``) at the source's own resolution.
    grayscale : bool
        True when every image is single-channel.
    workers : int, default=1
        Images drawn at once by :meth:`draw_many` (sources drawn by a subprocess use more).
    """

    name: str
    classes: list[str]
    labels: np.ndarray
    draw: Callable[[int], Image.Image]
    grayscale: bool = False
    workers: int = 1

    def draw_many(self, indices: Iterable[int]) -> Iterator[Image.Image]:
        """Images ``indices``, in that order."""
        indices = [int(i) for i in indices]
        if self.workers <= 1 or len(indices) < 2:
            yield from map(self.draw, indices)
            return
        with ThreadPoolExecutor(self.workers) as pool:
            yield from pool.map(self.draw, indices)


def load_native(
    native: NativeImages, image_size: int, per_class: int | None = None, seed: int = 0, indices=None
) -> ImageDataset:
    """Resize a source's images into an :class:`ImageDataset`, exactly as a folder of them would be decoded.

    Parameters
    ----------
    native : NativeImages
        The source.
    image_size : int
        Side ``S`` of the stored images (shorter side to ``S``, bilinear, centre square).
    per_class : int or None, default=None
        Keep at most this many images per class, chosen with ``seed``; None keeps all.
    seed : int, default=0
        Seeds the ``per_class`` choice.
    indices : array-like of int, optional
        Only these images, in this order (then ``per_class`` is ignored).

    Returns
    -------
    ImageDataset
        ``images`` uint8 of shape (N, 3, S, S), ``labels`` of shape (N,).
    """
    keep = select_per_class(native.labels, per_class, seed) if indices is None else np.asarray(indices, np.int64)
    images = allocate_images(len(keep), image_size)
    pixels = images.numpy()
    sizes = np.empty((len(keep), 2), dtype=np.int64)
    for row, image in enumerate(native.draw_many(keep)):
        sizes[row] = (image.height, image.width)
        pixels[row] = to_rgb_array(resize_square(image, image_size)).transpose(2, 0, 1)
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(native.labels[keep]),
        classes=list(native.classes),
        name=native.name,
        grayscale=native.grayscale,
        original_size=median_size(sizes),
    )


# ---------------------------------------------------------------------------------------------- Fashion-MNIST t10k
_TEST_IMAGES, _TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"


def fashion_mnist_test() -> NativeImages:
    """The Fashion-MNIST test split (t10k, 10000 images of 28x28), from Debian's ``dataset-fashion-mnist``.

    References
    ----------
    Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
    Algorithms", arXiv:1708.07747, 2017.
    """
    images, labels = _fashion_mnist_test_arrays()
    return NativeImages(
        "fashion-mnist-test",
        list(FASHION_MNIST_CLASSES),
        labels,
        lambda i: Image.fromarray(np.ascontiguousarray(images[i])),
        grayscale=True,
    )


def load_fashion_mnist_test(image_size: int, per_class: int | None, seed: int) -> ImageDataset:
    """The built-in ``fashion-mnist-test``: the t10k split, decoded as the training split is."""
    images, labels = _fashion_mnist_test_arrays()
    return fashion_mnist_dataset(images, labels, image_size, per_class, seed, "fashion-mnist-test")


def _fashion_mnist_test_arrays() -> tuple[np.ndarray, np.ndarray]:
    paths = [idx_path(FASHION_MNIST_DIR, name) for name in (_TEST_IMAGES, _TEST_LABELS)]
    if None in paths:
        raise DataError(
            f"built-in dataset 'fashion-mnist-test' needs {_TEST_IMAGES}.gz and {_TEST_LABELS}.gz in "
            f"{FASHION_MNIST_DIR}; run `apt-get install dataset-fashion-mnist`"
        )
    images, labels = read_idx(paths[0], ndim=3), read_idx(paths[1], ndim=1).astype(np.int64)
    if len(images) != len(labels) or labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise DataError(
            f"Fashion-MNIST t10k files in '{FASHION_MNIST_DIR}' do not match ({len(images)} images, {len(labels)} "
            "labels); run `apt-get install --reinstall dataset-fashion-mnist`"
        )
    return images, labels


# ---------------------------------------------------------------------------------------------- emoji, eight kinds
#: category -> inclusive code point ranges; single code points only, no two categories share one.
EMOJI_MORE_CATEGORIES = {
    "faces": [*colour.EMOJI_CATEGORIES["faces"], (0x1F638, 0x1F640)],
    "people": [
        (0x1F466, 0x1F478),
        (0x1F481, 0x1F487),
        (0x1F645, 0x1F64F),
        (0x1F9D1, 0x1F9DF),
        (0x1F934, 0x1F939),
        (0x1F6B4, 0x1F6B6),
        (0x1F3C3, 0x1F3C4),
        (0x1F3C7, 0x1F3CA),
        (0x1F93C, 0x1F93E),
        (0x1F9B8, 0x1F9B9),
        (0x1F9CD, 0x1F9CF),
        (0x1FAC3, 0x1FAC5),
    ],
    "body": [
        (0x1F440, 0x1F450),
        (0x1F463, 0x1F463),
        (0x1F4AA, 0x1F4AA),
        (0x1F590, 0x1F590),
        (0x1F595, 0x1F596),
        (0x1F90C, 0x1F90F),
        (0x1F918, 0x1F91F),
        (0x1F9B4, 0x1F9B7),
        (0x1F9BB, 0x1F9BB),
        (0x1F9E0, 0x1F9E0),
        (0x1FAC0, 0x1FAC2),
        (0x1FAF0, 0x1FAF8),
        (0x270A, 0x270D),
        (0x261D, 0x261D),
    ],
    "animals": colour.EMOJI_CATEGORIES["animals"],
    "food": colour.EMOJI_CATEGORIES["food"],
    "travel": [*colour.EMOJI_CATEGORIES["travel"], (0x1F5FA, 0x1F5FF)],
    "activities": [(0x1F380, 0x1F393), (0x1F3A0, 0x1F3C2), (0x1F945, 0x1F94F), (0x26BD, 0x26BE), (0x1FA80, 0x1FA8F)],
    "objects": colour.EMOJI_CATEGORIES["objects"],
}


def emoji_more() -> NativeImages:
    """Noto Color Emoji glyphs of :data:`EMOJI_MORE_CATEGORIES`, drawn on white (one image per code point).

    References
    ----------
    Google, Noto Color Emoji (SIL Open Font License), Debian package ``fonts-noto-color-emoji``.
    """
    font, covered = _emoji_font()
    names = list(EMOJI_MORE_CATEGORIES)
    points = sorted(
        {
            code: label
            for label, name in enumerate(names)
            for low, high in EMOJI_MORE_CATEGORIES[name]
            for code in range(low, high + 1)
            if code in covered
        }.items()
    )
    return NativeImages(
        "emoji-more",
        names,
        np.array([label for _, label in points], dtype=np.int64),
        lambda i: _draw_emoji(font, points[i][0]),
    )


def _emoji_font():
    from PIL import ImageFont

    if not colour.NOTO_EMOJI_FONT.is_file():
        raise DataError(
            f"built-in dataset 'emoji-more' needs {colour.NOTO_EMOJI_FONT}; run `apt-get install fonts-noto-color-emoji`"
        )
    try:
        from fontTools.ttLib import TTFont

        covered = set(TTFont(str(colour.NOTO_EMOJI_FONT), lazy=True).getBestCmap())
        return ImageFont.truetype(str(colour.NOTO_EMOJI_FONT), colour._NOTO_EMOJI_PIXELS), covered
    except Exception as error:  # a corrupt or foreign file at that path
        raise DataError(
            f"cannot read the emoji font {colour.NOTO_EMOJI_FONT}: {error}; "
            "run `apt-get install --reinstall fonts-noto-color-emoji`"
        ) from None


def _draw_emoji(font, code: int) -> Image.Image:
    from PIL import ImageDraw

    side = colour._NOTO_EMOJI_PIXELS * 3 // 2  # as colour.load_emoji draws them
    glyph = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text((4, 4), chr(code), font=font, embedded_color=True)
    return colour._on_white_square(glyph)


# ---------------------------------------------------------------------------------------------- Oxygen icons
def oxygen_icons() -> NativeImages:
    """The images of the ``icons`` built-in (:func:`nbtl.data.colour.load_icons`), each on its white square."""
    if not colour.OXYGEN_ICONS_DIR.is_dir():
        raise DataError(
            f"built-in dataset 'icons' needs the Oxygen icons in {colour.OXYGEN_ICONS_DIR}; "
            "run `apt-get install oxygen-icon-theme`"
        )
    paths, labels = colour._icon_files()
    return NativeImages(
        "icons",
        list(colour.ICON_CONTEXTS),
        labels,
        lambda i: colour._on_white_square(open_image(paths[i]).convert("RGBA")),
    )


# ---------------------------------------------------------------------------------------------- digits
def sklearn_digits() -> NativeImages:
    """The images of the ``digits`` built-in as 8x8 grayscale images (values 0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    arrays = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return NativeImages(
        "digits",
        [str(digit) for digit in range(10)],
        np.asarray(bunch.target, dtype=np.int64),
        lambda i: Image.fromarray(arrays[i]),
        grayscale=True,
    )


# ---------------------------------------------------------------------------------------------- playing cards
CARD_DECKS_DIR = Path("/usr/share/carddecks")
#: The French-suited SVG decks of ``kdegames-card-data-kf5`` that ``rsvg-convert`` draws card by card
#: (``svg-xskat-german`` has German suits, ``svg-future``'s cards show no suit, ``svg-konqi-modern`` and
#: ``svg-xskat-french`` give no dimensions).
CARD_DECKS = {  # deck -> height in SVG units of its drawn ace of spades (rsvg-convert --zoom 1)
    "svg-ancient-egyptians": 205, "svg-dondorf": 102, "svg-gm-paris": 95, "svg-jolly-royal": 102,
    "svg-nicu-ornamental": 189, "svg-nicu-white": 189, "svg-oxygen": 101, "svg-oxygen-air": 101,
    "svg-oxygen-white": 101, "svg-penguins": 73, "svg-standard": 96, "svg-tigullio-international": 88,
}  # fmt: skip
CARD_SUITS = ("club", "diamond", "heart", "spade")
CARD_RANKS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "jack", "queen", "king")
_CARD_HEIGHT = 160  # pixels: each deck is drawn at the zoom that makes its ace of spades this tall


def playing_cards() -> NativeImages:
    """Every card of :data:`CARD_DECKS`, drawn from SVG by ``rsvg-convert`` and centred on a white square; the
    label is the suit.

    References
    ----------
    KDE card decks (GPL / LGPL / public domain, see each deck's ``index.desktop``), Debian package
    ``kdegames-card-data-kf5``.
    """
    if shutil.which("rsvg-convert") is None:
        raise DataError("built-in dataset 'playing-cards' needs rsvg-convert; run `apt-get install librsvg2-bin`")
    files = [next(iter(sorted((CARD_DECKS_DIR / deck).glob("*.svgz"))), None) for deck in CARD_DECKS]
    if None in files:
        missing = CARD_DECKS[files.index(None)]
        raise DataError(
            f"built-in dataset 'playing-cards' needs the card deck {CARD_DECKS_DIR / missing}; "
            "run `apt-get install kdegames-card-data-kf5`"
        )
    cards = [(deck, suit, rank) for deck in files for suit in CARD_SUITS for rank in CARD_RANKS]
    labels = np.array([CARD_SUITS.index(suit) for _, suit, _ in cards], dtype=np.int64)
    return NativeImages(
        "playing-cards",
        list(CARD_SUITS),
        labels,
        lambda i: colour._on_white_square(_render_card(*cards[i])),
        workers=2,
    )


def _render_card(deck: Path, suit: str, rank: str) -> Image.Image:
    zoom = round(_CARD_HEIGHT / CARD_DECKS[deck.parent.name], 4)
    return _render_svg_element(deck, f"{rank}_{suit}", zoom)


def _render_svg_element(path: Path, element: str, zoom: float) -> Image.Image:
    """The element ``element`` of an SVG file as an RGBA image cropped to what it draws."""
    with tempfile.TemporaryDirectory(prefix="nbtl-card-") as folder:
        out = Path(folder) / "card.png"
        command = ["rsvg-convert", "--export-id", element, "--zoom", f"{zoom}", "--format", "png", "-o", str(out)]
        done = subprocess.run([*command, str(path)], capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            reason = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise DataError(
                f"rsvg-convert cannot draw '{element}' of {path}: {reason}; "
                "run `apt-get install --reinstall kdegames-card-data-kf5 librsvg2-bin`"
            )
        image = open_image(out).convert("RGBA")
    box = image.getchannel("A").getbbox()  # some decks' elements span a larger, empty area
    return image.crop(box) if box else image


# ---------------------------------------------------------------------------------------------- wallpaper tiles
WALLPAPERS_DIR = Path("/usr/share/wallpapers")
#: Plasma wallpapers (``plasma-workspace-wallpapers``) of different looks; class = wallpaper.
WALLPAPERS = (
    "Autumn", "BytheWater", "Cascade", "ColorfulCups", "DarkestHour", "Elarun", "FallenLeaf", "Kite", "Opal",
    "SafeLanding",
)  # fmt: skip
_WALLPAPER_SHORT_SIDE = 640  # each wallpaper's largest picture is first scaled to this shorter side (Lanczos)
_TILE = 64
_MIN_TILE_STD = 12.0  # near-uniform tiles (a plain sky) name no wallpaper


def wallpaper_tiles() -> NativeImages:
    """Non-overlapping ``64 x 64`` tiles of :data:`WALLPAPERS`, row by row, textured ones only; label = wallpaper.

    References
    ----------
    KDE Plasma wallpapers (LGPL / CC-BY-SA, see each ``metadata.json``), Debian package
    ``plasma-workspace-wallpapers``.
    """
    tiles: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(WALLPAPERS):
        picture = _wallpaper(name)
        height, width = picture.shape[:2]
        for top in range(0, height - _TILE + 1, _TILE):
            for left in range(0, width - _TILE + 1, _TILE):
                tile = picture[top : top + _TILE, left : left + _TILE]
                if tile.std() >= _MIN_TILE_STD:
                    tiles.append(tile)
                    labels.append(label)
    return NativeImages(
        "wallpaper-tiles",
        list(WALLPAPERS),
        np.array(labels, dtype=np.int64),
        lambda i: Image.fromarray(np.ascontiguousarray(tiles[i])),
    )


def _wallpaper(name: str) -> np.ndarray:
    folder = WALLPAPERS_DIR / name / "contents" / "images"
    pictures = sorted(folder.glob("*.*")) if folder.is_dir() else []
    if not pictures:
        raise DataError(
            f"built-in dataset 'wallpaper-tiles' needs the wallpaper {folder}; "
            "run `apt-get install plasma-workspace-wallpapers`"
        )
    largest = open_image(max(pictures, key=lambda path: (_pixel_count(path), path.name)))
    scale = _WALLPAPER_SHORT_SIDE / min(largest.size)
    size = (round(largest.width * scale), round(largest.height * scale))
    return np.asarray(largest.convert("RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)


def _pixel_count(path: Path) -> int:
    try:
        with Image.open(path) as image:  # reads the header only
            return image.width * image.height
    except (OSError, ValueError, Image.DecompressionBombError):
        return 0  # open_image names the file if it is the one chosen


# ---------------------------------------------------------------------------------------------- registry
#: Source name -> its images, listed (the first three are also built-ins of their own, see ``PACKAGED_SOURCES``).
NATIVE_SOURCES: dict[str, Callable[[], NativeImages]] = {
    "fashion-mnist-test": fashion_mnist_test,
    "emoji-more": emoji_more,
    "playing-cards": playing_cards,
    "wallpaper-tiles": wallpaper_tiles,
    "icons": oxygen_icons,
    "digits": sklearn_digits,
}


def native_images(source: str) -> NativeImages:
    """The listed images of ``source`` (a key of :data:`NATIVE_SOURCES`)."""
    if source not in NATIVE_SOURCES:
        raise DataError(f"no listed images for source '{source}'; use one of {', '.join(NATIVE_SOURCES)}")
    return NATIVE_SOURCES[source]()


def _native_loader(source: str) -> Callable[[int, int | None, int], ImageDataset]:
    def load(image_size: int, per_class: int | None, seed: int) -> ImageDataset:
        return load_native(native_images(source), image_size, per_class, seed)

    load.__doc__ = f"The built-in ``{source}``: :func:`{NATIVE_SOURCES[source].__name__}`, resized."
    return load


#: The built-ins this module adds: name -> loader(image_size, per_class, seed).
PACKAGED_SOURCES = {
    "fashion-mnist-test": load_fashion_mnist_test,
    "emoji-more": _native_loader("emoji-more"),
    "playing-cards": _native_loader("playing-cards"),
    "wallpaper-tiles": _native_loader("wallpaper-tiles"),
}
