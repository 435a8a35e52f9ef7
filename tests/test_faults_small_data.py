"""The smallest data nbtl accepts (2 classes x 3 images, real PNG files) either works or is refused in one line
(issue 19: `nbtl recommend` crashed formatting a fit measure it could not compute)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from conftest import run_nbtl


def test_recommend_on_two_classes_of_three_images(tmp_path):
    digits = load_digits()
    for label in (0, 1):
        folder = tmp_path / "data" / str(label)
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:3]):
            Image.fromarray((image * 16).astype(np.uint8)).save(folder / f"{i}.png")
    done = run_nbtl("recommend", str(tmp_path / "data"), "--out", str(tmp_path / "rec.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "None" not in done.stdout.split("Backbones by", 1)[1].split("\n", 1)[0]
    assert (tmp_path / "rec.yaml").is_file()
