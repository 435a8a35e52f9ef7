"""benchmarks/tasks.py: tuning and reporting tasks, their folders, and the pixel-hash check that keeps them apart.

Real packaged images, real PNG files, the real check (its smoke set): no mocks.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import shutil
import sys
from pathlib import Path

import pytest

from nbtl.data import load_dataset
from nbtl.data.packaged import load_native, native_images
from nbtl.errors import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import tasks  # noqa: E402

DIGITS_LEAK = tasks.Task(
    "digits-leak", "reporting", "sklearn-digits", False, 32, 3, origin="digits", pool=3, test_per_class=3
)


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tasks")


@pytest.fixture(scope="module")
def smoke_audit(smoke_root):
    return tasks.audit(tasks.SMOKE_TUNING_TASKS, tasks.SMOKE_REPORTING_TASKS, smoke_root, [0])


def test_task_lists_keep_the_promises_of_the_issue():
    reporting, tuning = tasks.REPORTING_TASKS, tasks.TUNING_TASKS
    assert len(reporting) >= 5 and sum(task.colour for task in reporting) >= 3
    assert len({task.source for task in reporting}) == len(reporting)
    assert not {task.source for task in reporting} & {task.source for task in tuning}
    for task in reporting:
        assert task.role == "reporting" and task.builtin is None and task.min_test >= 500
        assert 30 <= task.pool <= 150 and task.per_class <= task.pool and 32 <= task.image_size <= 64
    names = {task.name for task in tuning}
    assert {"digits-odd-pc50-40", "fmnist-mixed-pc80-40"} | {name for name, _, _ in tasks.META_TASKS} <= names
    assert all(task.role == "tuning" and task.builtin for task in tuning)
    photo = next(task for task in tuning if task.name == "photo-patches-pc60-48")
    assert photo.seeds == (1,) and "--seed" not in photo.flags() and photo.flags()[:2] == ["--image-size", "48"]


def test_smoke_check_on_real_data_is_disjoint_and_writes_image_folders(smoke_audit, smoke_root):
    summary, problems = smoke_audit
    assert problems == []
    assert len(summary) == len(tasks.SMOKE_TUNING_TASKS) + len(tasks.SMOKE_REPORTING_TASKS)
    for task in tasks.SMOKE_REPORTING_TASKS:
        folder = smoke_root / task.name
        dataset = load_dataset(task.data(smoke_root), task.image_size, per_class=task.per_class)
        assert dataset.part_counts()["train"] == 3 * len(dataset.classes)
        assert dataset.part_counts()["test"] == 3 * len(dataset.classes)
        assert all(path.suffix == ".png" for path in folder.rglob("*") if path.is_file() and path.name[0] != ".")


def test_folder_images_have_the_builtin_pixels(smoke_audit, smoke_root):
    """The file path and the built-in path decode one source image to the same pixels, so the hash check can match
    a reporting image with a tuning one."""
    for task in tasks.SMOKE_REPORTING_TASKS:
        folder = Path(task.data(smoke_root))
        index = json.loads((folder / ".task.json").read_text())["source_index"]
        from_files = load_dataset(folder, tasks.CHECK_SIZE)
        order = [index[key] for key in sorted(index, key=lambda key: (key.split("/")[0] != "train", key))]
        built = load_native(tasks.native(task.origin), tasks.CHECK_SIZE, indices=order)
        assert tasks.pixel_hashes(from_files.images) == tasks.pixel_hashes(built.images), task.name
    # and the same through load_dataset's own built-ins: digits and the Fashion-MNIST test split
    digits = tasks.Task("digits-files", "reporting", "sklearn-digits", False, 32, 3, origin="digits", pool=170)
    folder = Path(digits.data(smoke_root))
    every = sorted(tasks.pixel_hashes(load_dataset("digits", 40).images))
    from_files = tasks.pixel_hashes(load_dataset(folder, 40).images)
    assert len(from_files) > 1700 and set(from_files) <= set(every)
    few = load_dataset("fashion-mnist-test", 28, per_class=2, seed=5)
    assert tasks.pixel_hashes(few.images) == tasks.pixel_hashes(
        load_native(native_images("fashion-mnist-test"), 28, per_class=2, seed=5).images
    )
    assert few.class_counts() == dict.fromkeys(few.classes, 2) and few.grayscale


def test_a_reporting_task_made_of_tuning_images_is_flagged(tmp_path):
    tuning = [tasks.Task("digits-all", "tuning", "sklearn-digits", False, 32, builtin="digits")]
    problems = tasks.check_disjoint(tuning, [DIGITS_LEAK], tmp_path, [0])
    written = [path for path in (tmp_path / DIGITS_LEAK.name).rglob("*.png")]
    assert len(written) == 60 and len(problems) == 60
    assert all(line.startswith("digits-leak: ") and "tuning task digits-all" in line for line in problems)
    assert {line.split()[1] for line in problems} == {str(path.relative_to(written[0].parents[2])) for path in written}


def test_an_image_in_train_and_test_is_flagged_and_a_short_test_set_too(tmp_path):
    folder = Path(DIGITS_LEAK.data(tmp_path))
    shutil.copy(folder / "train" / "7" / "0001.png", folder / "test" / "7" / "9999.png")
    problems = tasks.check_disjoint([], [dataclasses.replace(DIGITS_LEAK, min_test=500)], tmp_path, [0])
    assert "digits-leak: test/7/9999.png equals train/7/0001.png of the same task" in problems
    assert "digits-leak: 31 test images, fewer than the 500 it promises" in problems
    assert len(problems) == 2


def _materialise(root: str) -> str:
    return DIGITS_LEAK.data(Path(root))


def test_data_writes_once_even_from_two_processes_and_refuses_a_changed_recipe(tmp_path):
    with multiprocessing.get_context("fork").Pool(2) as pool:
        paths = pool.map(_materialise, [str(tmp_path)] * 2)
    assert paths[0] == paths[1] == str(tmp_path / DIGITS_LEAK.name)
    assert sorted(path.name for path in tmp_path.iterdir()) == [DIGITS_LEAK.name]  # no scratch folder left
    stamp = (tmp_path / DIGITS_LEAK.name / ".task.json").stat().st_mtime_ns
    assert DIGITS_LEAK.data(tmp_path) == paths[0]
    assert (tmp_path / DIGITS_LEAK.name / ".task.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match=r"delete it to have it written again"):
        dataclasses.replace(DIGITS_LEAK, pool=4).data(tmp_path)
