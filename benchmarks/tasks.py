"""The benchmarks' tasks, in two disjoint lists: tuning tasks (rules, spaces and priors were tuned on them) and
reporting tasks (only ever measured).

A tuning task is a built-in dataset as it is (the meta-dataset's tasks of ``build_meta_dataset.py``, and the two
digits / Fashion-MNIST class subsets the equal-time benchmark once reported on). A reporting task is a folder
``<root>/<name>/train/<class>/<n>.png`` + ``.../test/<class>/<n>.png`` written once from a packaged source that no
tuning task uses (:mod:`nbtl.data.packaged`), lossless and at the source's own resolution: a training pool of the
small size users have (30-150 per class) and an official test set of at least 500 images.

``check_disjoint`` proves that no reporting image is a tuning image: it hashes the pixels of every image of every
tuning task (each seed) and of every reporting image, all decoded the same way at one size.

    python benchmarks/tasks.py --check      # writes the reporting folders if needed, checks them all
    python benchmarks/tasks.py --smoke      # the same on small versions of every task (seconds)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from build_meta_dataset import SMOKE_TASKS as META_SMOKE_TASKS  # noqa: E402
from build_meta_dataset import TASKS as META_TASKS  # noqa: E402

#: Where ``Task.data`` writes the reporting folders unless told otherwise.
DEFAULT_ROOT = Path(os.environ.get("NBTL_TASKS_DIR", "~/.cache/nbtl/tasks")).expanduser()
#: The one size every image is decoded at for the disjointness check.
CHECK_SIZE = 32
_SPLIT_SEED = 20240917  # fixed: which images go to train/ and test/ never changes
_RECIPE_VERSION = 1
_SOURCE_OF = {"digits": "sklearn-digits", "fashion-mnist": "fashion-mnist-train", "photo-patches": "skimage-photos"}


@dataclass(frozen=True)
class Task:
    """One benchmark task.

    ``role`` is ``"tuning"``, ``"reporting"`` or ``"smoke"``; ``source`` names the image source (the thing the
    disjointness check is about, e.g. ``"fashion-mnist-t10k"``); ``colour`` says whether its images are colour.

    A task on a built-in dataset names it in ``builtin``. A task on files names in ``origin`` the packaged source
    (:data:`nbtl.data.packaged.NATIVE_SOURCES`) its folder is written from: ``pool`` training images per class and
    at most ``test_per_class`` test images per class (None: all the rest), none of them equal (at
    :data:`CHECK_SIZE`) to another image of the task or to any image of the built-ins in ``avoid``. ``seeds`` are
    seeds the task's data was chosen with besides the benchmark's (a meta-dataset task's ``--seed``);
    ``min_test`` is the smallest official test set the task promises.
    """

    name: str
    role: str
    source: str
    colour: bool
    image_size: int
    per_class: int | None = None
    classes: str | None = None
    builtin: str | None = None  # the --data value when the task is a built-in dataset as it is
    origin: str | None = None
    pool: int | None = None
    test_per_class: int | None = None
    avoid: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    min_test: int = 0

    def data(self, root: Path) -> str:
        """The ``--data`` value of this task; a task on files is written under ``root`` first (once).

        Writing goes to a temporary folder renamed into place, so two processes may call this at once.

        Raises
        ------
        nbtl.errors.DataError
            If the source is missing (what to install), or ``root/<name>`` exists but was written otherwise.
        """
        if self.builtin is not None:
            return self.builtin
        return str(_materialise(self, Path(root)))

    def flags(self) -> list[str]:
        """``--image-size``, ``--per-class`` and ``--classes`` of this task (not ``--data``, not ``--seed``)."""
        flags = ["--image-size", str(self.image_size)]
        flags += ["--per-class", str(self.per_class)] if self.per_class else []
        return flags + (["--classes", self.classes] if self.classes else [])

    def smoke(self) -> Task:
        """A small version of this task (3 training and at most 3 test images per class, ``avoid`` left to the full
        check), for quick checks."""
        if self.builtin is not None:
            return replace(self, name=f"{self.name}-smoke", role="smoke", per_class=min(self.per_class or 12, 12))
        return replace(
            self, name=f"{self.name}-smoke", role="smoke", per_class=3, pool=3, test_per_class=3, avoid=(), min_test=0
        )


def _meta_task(name: str, data: str, flags: list[str], role: str = "tuning") -> Task:
    value = dict(zip(flags[::2], flags[1::2]))
    return Task(
        name,
        role,
        _SOURCE_OF.get(data, data),
        data == "photo-patches",
        int(value.get("--image-size", 64)),
        int(value["--per-class"]) if "--per-class" in value else None,
        value.get("--classes"),
        builtin=data,
        seeds=(int(value.get("--seed", 0)),),
    )


#: Rules, spaces and priors were tuned on these: the meta-dataset's tasks (digits, Fashion-MNIST *training-split*
#: subsets, scikit-image photo crops) and the equal-time benchmark's former digits / Fashion-MNIST reporting tasks.
TUNING_TASKS: list[Task] = [_meta_task(*task) for task in META_TASKS] + [
    Task("digits-odd-pc50-40", "tuning", "sklearn-digits", False, 40, 50, "1,3,5,7,9", "digits", seeds=(0, 1, 2)),
    Task(
        "fmnist-mixed-pc80-40", "tuning", "fashion-mnist-train", False, 40, 80, "1,3,6,7,8", "fashion-mnist",
        seeds=(0, 1, 2),
    ),
]  # fmt: skip

#: Only ever measured; sources no tuning task uses. Sizes: 32 px for 28 px Fashion-MNIST, 48 px for emoji and icons
#: (their detail is lost at 32), 64 px for cards (a suit's corner index is ~4 px at 48), 40 px for 64 px textures;
#: all small enough for 2-minute searches on 2 CPUs.
REPORTING_TASKS: list[Task] = [
    Task(
        "fmnist-t10k-pc50-32", "reporting", "fashion-mnist-t10k", False, 32, 50, origin="fashion-mnist-test",
        pool=100, test_per_class=60, avoid=("fashion-mnist",), min_test=500,
    ),
    Task(
        "emoji-more-pc30-48", "reporting", "noto-color-emoji", True, 48, 30, origin="emoji-more", pool=30,
        min_test=500,
    ),
    Task(
        "icons-pc40-48", "reporting", "oxygen-icons", True, 48, 40, origin="icons", pool=40, test_per_class=150,
        min_test=500,
    ),
    Task(
        "cards-suit-pc30-64", "reporting", "kde-card-decks", True, 64, 30, origin="playing-cards", pool=30,
        min_test=500,
    ),
    Task(
        "wallpaper-tiles-pc40-40", "reporting", "plasma-wallpapers", True, 40, 40, origin="wallpaper-tiles",
        pool=40, test_per_class=60, min_test=500,
    ),
]  # fmt: skip
#: Reporting tasks at the resolution the backbones were trained at (issue 18): the colour sources whose images are
#: larger than 224 px (Oxygen icons, KDE card decks), the same recipe in folders of their own, decoded at 224 px.
#: For GPU machines or long budgets: ``equal_time.py --tasks reporting-224`` (not in the default ``reporting``).
HIGH_RES_TASKS: list[Task] = [
    replace(task, name=task.name.rsplit("-", 1)[0] + "-224", image_size=224)
    for task in REPORTING_TASKS
    if task.origin in ("icons", "playing-cards")
]
SMOKE_TASK = Task("smoke-photo-patches", "smoke", "skimage-photos", True, 32, 12, "0,1,2,3", builtin="photo-patches")
#: The smoke set of the check: the smoke tasks of the benchmarks as tuning tasks, small versions of the reporting ones.
SMOKE_TUNING_TASKS: list[Task] = [SMOKE_TASK] + [_meta_task(*task, role="smoke") for task in META_SMOKE_TASKS]
SMOKE_REPORTING_TASKS: list[Task] = [task.smoke() for task in REPORTING_TASKS]

assert not {t.name for t in TUNING_TASKS} & {t.name for t in REPORTING_TASKS + HIGH_RES_TASKS}
assert not {t.source for t in TUNING_TASKS} & {t.source for t in REPORTING_TASKS}


# ---------------------------------------------------------------------------------------------- pixel hashes
def pixel_hashes(images) -> list[str]:
    """sha1 of each image's uint8 bytes; ``images`` is a uint8 tensor or array of shape (N, 3, S, S)."""
    array = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
    return [hashlib.sha1(row.tobytes()).hexdigest() for row in array]


def _native_hash(image) -> str:
    """The hash of one PIL image as :func:`nbtl.data.load_dataset` would decode it at :data:`CHECK_SIZE`."""
    from nbtl.data.images import resize_square, to_rgb_array

    return pixel_hashes(to_rgb_array(resize_square(image, CHECK_SIZE)).transpose(2, 0, 1)[None])[0]


# ---------------------------------------------------------------------------------------------- writing folders
@cache
def native(origin: str):
    """:func:`nbtl.data.packaged.native_images` of ``origin``, listed once per process."""
    from nbtl.data.packaged import native_images

    return native_images(origin)


def _recipe(task: Task) -> dict:
    return {
        "version": _RECIPE_VERSION,
        "origin": task.origin,
        "pool": task.pool,
        "test_per_class": task.test_per_class,
        "avoid": list(task.avoid),
        "check_size": CHECK_SIZE,
        "split_seed": _SPLIT_SEED,
    }


def _materialise(task: Task, root: Path) -> Path:
    from nbtl.errors import DataError

    if task.origin is None or not task.pool:
        raise DataError(f"task '{task.name}' has neither builtin nor origin and pool; give one of them")
    target = root / task.name
    if not target.exists():
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{task.name}.", dir=root))
        try:
            _write_folder(task, scratch)
            try:
                os.rename(scratch, target)
            except OSError:
                if not target.exists():  # not a lost race: a real failure
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    manifest = target / ".task.json"
    recipe = json.loads(manifest.read_text())["recipe"] if manifest.is_file() else None
    if recipe != _recipe(task):
        raise DataError(
            f"'{target}' was not written by this version of task '{task.name}' (benchmarks/tasks.py); "
            "delete it to have it written again"
        )
    return target


def _write_folder(task: Task, folder: Path) -> None:
    """Write ``folder/train/<class>/<n>.png`` and ``folder/test/...`` and the manifest ``folder/.task.json``."""
    from nbtl.data import load_dataset
    from nbtl.errors import DataError

    images = native(task.origin)
    avoided = {h for name in task.avoid for h in pixel_hashes(load_dataset(name, CHECK_SIZE).images)}
    seen: set[str] = set()
    files: dict[str, int] = {}
    counts: dict[str, dict[str, int]] = {}
    for label, name in enumerate(images.classes):
        order = np.random.default_rng([_SPLIT_SEED, label]).permutation(np.flatnonzero(images.labels == label))
        wanted = task.pool + (task.test_per_class if task.test_per_class is not None else len(order))
        taken, skipped, start = [], 0, 0
        while len(taken) < wanted and start < len(order):  # drawn in small batches: only what is kept, and a few
            batch = order[start : start + min(16, wanted - len(taken) + 2)]
            start += len(batch)
            for index, image in zip(batch, images.draw_many(batch)):
                digest = _native_hash(image)
                if digest in seen or digest in avoided:
                    skipped += 1
                elif len(taken) < wanted:
                    seen.add(digest)
                    taken.append((int(index), image))
        if len(taken) <= task.pool:
            raise DataError(
                f"task '{task.name}': class {name!r} of '{task.origin}' has {len(taken)} usable images, fewer than "
                f"its pool of {task.pool} plus one test image; lower the pool or re-install the source"
            )
        safe = name.replace("/", "-")
        counts[safe] = {"train": task.pool, "test": len(taken) - task.pool, "skipped_equal": skipped}
        for position, (index, image) in enumerate(taken):
            part = "train" if position < task.pool else "test"
            path = folder / part / safe / f"{position:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, format="PNG")
            files[str(path.relative_to(folder))] = index
    manifest = {"recipe": _recipe(task), "task": task.name, "counts": counts, "source_index": files}
    (folder / ".task.json").write_text(json.dumps(manifest, indent=1))


# ---------------------------------------------------------------------------------------------- the check
def audit(tuning: list[Task], reporting: list[Task], root: Path, seeds: list[int]) -> tuple[list[str], list[str]]:
    """A summary line per task, and one problem line per reporting image that collides (see ``check_disjoint``)
    or per reporting task whose test set is smaller than it promises."""
    from nbtl.data import load_dataset
    from nbtl.data.listing import list_official_folder, official_part_folders

    owners: dict[str, str] = {}
    summary, problems = [], []
    for task in tuning:
        task_seeds = sorted(set(seeds) | set(task.seeds))
        images = 0
        for seed in task_seeds:
            dataset = load_dataset(task.data(root), CHECK_SIZE, task.per_class, seed, task.classes)
            images += len(dataset)
            for position, digest in enumerate(pixel_hashes(dataset.images)):
                owners.setdefault(digest, f"tuning task {task.name} (seed {seed}, image {position})")
        summary.append(_line(task, images, len(dataset.classes), task.per_class, None, f"seeds {task_seeds}"))
    for task in reporting:
        data = task.data(root)
        dataset = load_dataset(data, CHECK_SIZE)
        if task.builtin is None:
            listing, parts = list_official_folder(Path(data), official_part_folders(Path(data)))
            names = [str(Path(path).relative_to(data)) for path in listing.paths]
        else:
            parts, names = ["all"] * len(dataset), [f"image {i}" for i in range(len(dataset))]
        first: dict[str, str] = {}
        for name, digest in zip(names, pixel_hashes(dataset.images), strict=True):
            if digest in owners:
                problems.append(f"{task.name}: {name} equals an image of {owners[digest]}")
            if digest in first:
                problems.append(f"{task.name}: {name} equals {first[digest]} of the same task")
            first.setdefault(digest, name)
        parts = np.asarray(parts)
        test = int((parts == "test").sum())
        if test < task.min_test:
            problems.append(f"{task.name}: {test} test images, fewer than the {task.min_test} it promises")
        pool = task.pool if task.builtin is None else task.per_class
        summary.append(_line(task, len(dataset), len(dataset.classes), pool, test, data))
    return summary, problems


def check_disjoint(tuning: list[Task], reporting: list[Task], root: Path, seeds: list[int]) -> list[str]:
    """One line per reporting image whose pixels also occur in a tuning task's images; empty when disjoint.

    Every tuning task is loaded for each of ``seeds`` and of its own ``seeds``, every reporting task whole (both
    parts), all at :data:`CHECK_SIZE` through :func:`nbtl.data.load_dataset`; an image is the sha1 of its uint8
    pixels. A reporting image found twice in its own task (in train and test, say) gets a line too, and so does a
    reporting task with fewer test images than its ``min_test``.
    """
    return audit(tuning, reporting, root, seeds)[1]


def _line(task: Task, images: int, classes: int, pool: int | None, test: int | None, where: str) -> str:
    return (
        f"{task.name:28} {task.role:9} {images:6} images {classes:3} classes  train pool "
        f"{(str(pool) + '/class') if pool else 'all':>9}  test {test if test is not None else '-':>5}  "
        f"source {task.source:20} {'colour' if task.colour else 'gray  '}  {where}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--check", action="store_true", help="check every tuning and reporting task")
    which.add_argument("--smoke", action="store_true", help="check the smoke set (small versions, seconds)")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="where reporting folders go (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="benchmark seeds of the tuning tasks (default: %(default)s)")
    args = parser.parse_args(argv)
    from nbtl.errors import NbtlError

    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    tuning, reporting = (
        (SMOKE_TUNING_TASKS, SMOKE_REPORTING_TASKS) if args.smoke else (TUNING_TASKS, REPORTING_TASKS + HIGH_RES_TASKS)
    )
    started = time.perf_counter()
    try:
        summary, problems = audit(tuning, reporting, Path(args.root).expanduser(), seeds)
    except NbtlError as error:
        print(f"tasks: {error}", file=sys.stderr)
        return 2
    print("\n".join(summary + problems))
    verdict = f"{len(problems)} problem(s)" if problems else "disjoint"
    print(
        f"== {verdict}: {len(tuning)} tuning, {len(reporting)} reporting tasks in {time.perf_counter() - started:.0f} s"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
