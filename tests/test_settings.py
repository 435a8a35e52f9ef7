"""One data-settings object for search, recommend, heuristics learn and train: same settings, same images.

Real digits, real feature extraction and training, a real MLflow store."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import REPO, run_nbtl
from nbtl.data.settings import MAX_SEED, MIN_IMAGE_SIZE, DataSettings
from nbtl.errors import ConfigError
from nbtl.search import load_space

TINY = REPO / "search_spaces" / "tiny.yaml"


def test_settings_round_trip_through_params_and_yaml():
    settings = DataSettings(
        image_size=24,
        val_fraction=0.25,
        test_fraction=0.1,
        per_class=7,
        classes="0,2,4",
        split_seed=5,
        augmentation={"hflip": True, "crop_padding": 2},
    )
    params = {k: str(v) for k, v in settings.to_params().items()}  # MLflow keeps strings
    assert DataSettings.from_params(params) == settings
    assert DataSettings.from_params(yaml.safe_load(yaml.safe_dump(settings.to_dict()))) == settings
    # no augmentation is written as {} and read back as none, not as "unset, take the base's"
    base = DataSettings(augmentation={"crop_padding": 4})
    assert DataSettings.from_params(DataSettings().to_dict(), base=base).augmentation is None
    assert DataSettings.from_params({"image_size": 16}, base=base) == dataclasses.replace(base, image_size=16)


def test_settings_from_a_space_with_overrides():
    space = load_space(TINY)
    settings = DataSettings.from_space(space)
    assert (
        settings.image_size,
        settings.val_fraction,
        settings.test_fraction,
        settings.per_class,
        settings.split_seed,
        settings.augmentation,
    ) == (32, 0.2, 0.2, 20, 0, None)
    assert DataSettings.from_space(load_space("default")).augmentation == {"crop_padding": 4}
    overridden = DataSettings.from_space(space, {"image_size": 16, "split_seed": 3, "per_class": None})
    assert (overridden.image_size, overridden.split_seed, overridden.per_class) == (16, 3, 20)
    with pytest.raises(ConfigError, match="unknown setting 'seed'"):
        DataSettings.from_space(space, {"seed": 3})  # the split's seed has one name in Python too


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("split_seed", -5, f"0..{MAX_SEED}"),
        ("split_seed", MAX_SEED + 1, f"0..{MAX_SEED}"),
        ("image_size", 2, f">= {MIN_IMAGE_SIZE}"),
        ("val_fraction", 0.6, "between 0 and 0.5"),
        ("per_class", 1, ">= 3"),
        ("augmentation", {"blur": 1}, "blur"),
        ("test_data", True, "test_data must name a dataset source"),
    ],
)
def test_bad_settings_are_one_line_errors(key, value, fragment):
    with pytest.raises(ConfigError) as error:
        DataSettings.from_params({key: value}, where="rec.yaml: data")
    message = str(error.value)
    assert message.startswith("rec.yaml: data: ") and fragment in message and "\n" not in message


def test_recommend_measures_fit_on_the_search_training_split():
    """Same settings, same training images as the search's own split; the old fixed 0.15/0.15 split differs."""
    from nbtl.heuristics.recommend import measure_task, training_split
    from nbtl.search.prepare import SearchOptions, prepare

    space = load_space(TINY)  # val/test 0.2: not the 0.15/0.15 recommend used to split with
    prepared = prepare(space, SearchOptions(data="digits", image_size=16, per_class=8, seed=3), print)
    settings = DataSettings.from_space(space, {"image_size": 16, "per_class": 8, "split_seed": 3})
    assert prepared.data_settings == settings
    train = training_split("digits", settings)
    assert torch.equal(train.images, prepared.splits.train.images)
    assert torch.equal(train.labels, prepared.splits.train.labels)
    default_split = training_split("digits", dataclasses.replace(settings, val_fraction=0.15, test_fraction=0.15))
    assert len(default_split) > len(train)  # it would hold images the search validates and tests on
    task = measure_task("digits", ["efficientnet_lite0"], settings)
    assert task.settings == settings and task.dataset["n_images"] == len(prepared.splits.train)


def test_search_keeps_the_test_data_of_its_settings(tmp_path):
    """--test-data reaches the search's split through the data settings: the test set is exactly those images."""
    from PIL import Image

    from nbtl.cli import build_parser
    from nbtl.cli.run_common import data_overrides
    from nbtl.search.prepare import SearchOptions, prepare

    for folder, count, shade in (("train", 6, 0), ("holdout", 3, 100)):
        for label, name in enumerate(("cat", "dog")):
            for i in range(count):
                path = tmp_path / folder / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (10, 10), (shade + i, 50 * label, 9)).save(path)
    args = build_parser().parse_args(["search", str(TINY), "--data", str(tmp_path / "train"), "--test-data", "x"])
    assert data_overrides(args)["test_data"] == "x"
    options = SearchOptions(data=str(tmp_path / "train"), image_size=8)
    options.test_data = str(tmp_path / "holdout")  # as `nbtl search --test-data` sets it
    prepared = prepare(load_space(TINY), options, print)
    assert prepared.data_settings.test_data == str(tmp_path / "holdout")
    shades = sorted(prepared.splits.test.images[:, 0, 0, 0].tolist())
    assert shades == [100, 100, 101, 101, 102, 102]
    assert len(prepared.splits.train) + len(prepared.splits.val) == 12


def test_recommendation_carries_the_settings_and_train_uses_them(tmp_path, tracking_uri):
    document = yaml.safe_load(TINY.read_text())
    document["data"].update(val_fraction=0.25, test_fraction=0.25, augmentation={"hflip": True, "crop_padding": 2})
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    done = run_nbtl(
        "recommend",
        "digits",
        "--space",
        "space.yaml",
        "--image-size",
        "16",
        "--per-class",
        "8",
        "--backbones",
        "efficientnet_lite0",
        "--no-learned",
        "--out",
        "rec.yaml",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    settings = DataSettings(
        image_size=16,
        val_fraction=0.25,
        test_fraction=0.25,
        per_class=8,
        split_seed=0,
        augmentation={"hflip": True, "crop_padding": 2},
    )
    recommendation = yaml.safe_load((tmp_path / "rec.yaml").read_text())
    assert recommendation["data"] == {"spec": "digits", "name": "digits", **settings.to_dict()}
    assert "--image-size 16 --per-class 8" in done.stdout  # the suggested search uses the same settings

    done = run_nbtl(
        "train", "rec.yaml", "--epochs", "1", "--no-floor", "--seed", "3", "--tracking-uri", tracking_uri, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train-digits").experiment_id])
    params = run.data.params
    assert json.loads(params["augmentation"]) == {"hflip": True, "crop_padding": 2}
    assert (params["image_size"], params["val_fraction"], params["test_fraction"], params["per_class"]) == (
        "16",
        "0.25",
        "0.25",
        "8",
    )
    assert params["split_seed"] == "3"  # a flag overrides the file
    # 8 per class split 2 / 2 / 4 (0.25 each): the file's fractions, not the 0.15 default (1 / 1 / 6)
    assert "train 40 / val 20 / test 20" in done.stdout


def test_heuristics_learn_measures_on_the_settings_of_the_runs():
    """``meta_rows`` reads a search's data settings from its trials' rows (the parent run's params, strings)."""
    from nbtl.heuristics.meta import meta_rows
    from nbtl.heuristics.recommend import measure_task

    seen = []

    def measure(data, backbones, settings):
        seen.append(settings)
        return measure_task(data, backbones, settings)

    row = {
        "data": "digits",
        "image_size": "16",
        "per_class": "8",
        "classes": "None",
        "seed": "12345",
        "split_seed": "2",
        "val_fraction": "0.25",
        "test_fraction": "0.25",
        "augmentation": '{"crop_padding": 2}',
        "backbone": "efficientnet_lite0",
        "lr": "0.01",
        "best_val_accuracy": 0.5,
        "run_id": "r1",
    }
    rows = meta_rows([row], measure=measure)
    assert seen == [
        DataSettings(
            image_size=16,
            val_fraction=0.25,
            test_fraction=0.25,
            per_class=8,
            split_seed=2,
            augmentation={"crop_padding": 2},
        )
    ]
    assert rows[0]["split_seed"] == 2 and rows[0]["val_fraction"] == 0.25 and "split=0.25/0.25" in rows[0]["task"]


def test_the_split_seed_is_written_as_split_seed_and_read_under_either_name():
    settings = DataSettings(image_size=16, split_seed=7)
    params = {k: str(v) for k, v in settings.to_params().items()}
    assert params["split_seed"] == "7" and "seed" not in params  # a trial's own seed is the only `seed` param
    assert DataSettings.from_params(params) == settings
    older = {**{k: v for k, v in params.items() if k != "split_seed"}, "seed": "7"}  # a store written before
    assert DataSettings.from_params(older) == settings
    assert DataSettings.from_params({**params, "seed": "99"}).split_seed == 7  # split_seed wins over a trial's seed
