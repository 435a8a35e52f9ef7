"""The smallest data nbtl accepts (2 classes x 3 images, real PNG files) either works or is refused in one line,
by every command that reads data (issue 19: `nbtl recommend` crashed formatting a fit measure it could not
compute)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from conftest import new_store, run_nbtl


def test_recommend_fit_train_and_zoo_on_two_classes_of_three_images(tmp_path):
    digits = load_digits()
    data = tmp_path / "data"
    for label in (0, 1):
        folder = data / str(label)
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:3]):
            Image.fromarray((image * 16).astype(np.uint8)).save(folder / f"{i}.png")
    store = ["--tracking-uri", new_store(tmp_path)]

    done = run_nbtl("recommend", str(data), "--out", str(tmp_path / "rec.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    ranking = done.stdout.split("Backbones by", 1)[1].split("\n", 1)[0]
    assert "None" not in ranking and "nan" not in ranking, ranking

    done = run_nbtl("fit", str(data), "--backbones", "efficientnet_lite0", *store, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    done = run_nbtl("train", str(tmp_path / "rec.yaml"), "--data", str(data), "--epochs", "1", *store, cwd=tmp_path)
    assert done.returncode == 0 and "best_val_accuracy" in done.stdout, done.stderr[-2000:]

    done = run_nbtl(
        "zoo", str(data), "--backbones", "efficientnet_lite0", "--heads", "linear", "--folds", "2", *store,
        "--storage-path", str(tmp_path / "results"), cwd=tmp_path,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "needs at least 4" in lines[0], done.stderr[-2000:]
    for output in (done.stdout, done.stderr):
        assert "Traceback" not in output
