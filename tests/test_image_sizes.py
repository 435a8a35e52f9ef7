"""Image sizes (issue 18, item 1): ``image_size: native`` gives each backbone the resolution its weights were trained
at, ``image_size`` can be searched like any trial key, and a search decodes the data once per size (its data files,
its prefix entries and its handed-over models each keyed by size)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import run_nbtl
from nbtl.backbones import get_spec, list_backbones, load_pretrained_state_dict
from nbtl.cli.common import image_size_flag
from nbtl.config import TrialConfig
from nbtl.data import load_dataset, split_dataset
from nbtl.data.settings import NATIVE, DataSettings
from nbtl.errors import ConfigError
from nbtl.features import PrefixStore
from nbtl.models.classifier import read_members
from nbtl.search.space import load_space
from nbtl.transfer import build_transfer

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backbone", list_backbones())
def test_native_is_each_backbones_own_resolution(backbone):
    settings = DataSettings(image_size="native")
    assert settings.size_for(backbone) == get_spec(backbone).input_size
    assert settings.for_backbone(backbone).image_size == get_spec(backbone).input_size
    assert DataSettings(image_size=96).size_for(backbone) == 96  # a number is every backbone's


def test_native_sizes_of_the_packaged_backbones():
    sizes = {b: DataSettings(image_size="NATIVE").size_for(b) for b in ("efficientnet_lite0", "efficientnet_lite1")}
    assert sizes == {"efficientnet_lite0": 224, "efficientnet_lite1": 240}


def test_native_refuses_to_decode_at_one_size_and_bad_sizes_say_what_is_allowed():
    with pytest.raises(ConfigError, match="give an image size in pixels"):
        DataSettings(image_size=NATIVE).load_kwargs()
    with pytest.raises(ConfigError, match=r"image_size must be an integer >= 8 \(pixels\), native .* or auto"):
        DataSettings(image_size="big")
    assert DataSettings.from_params({"image_size": "native"}).image_size == NATIVE  # as MLflow logs it


def test_the_image_size_flag_and_a_space_take_native(tmp_path):
    assert image_size_flag("native") == "native" and image_size_flag("160") == 160
    with pytest.raises(argparse.ArgumentTypeError, match="'native'"):
        image_size_flag("large")
    space = yaml.safe_load((REPO / "search_spaces" / "tiny.yaml").read_text())
    space["data"]["image_size"] = "native"
    (tmp_path / "native.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    assert DataSettings.from_space(load_space(tmp_path / "native.yaml")).image_size == NATIVE
    space["data"]["image_size"] = "huge"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    with pytest.raises(ConfigError, match="data: image_size must be"):
        load_space(tmp_path / "bad.yaml")


def test_a_trials_own_image_size_is_a_checked_key_left_out_when_unset():
    assert "image_size" not in TrialConfig().to_dict()
    assert TrialConfig.from_dict({"image_size": 160}).to_dict()["image_size"] == 160
    with pytest.raises(ConfigError, match="image_size must be an integer >= 8"):
        TrialConfig.from_dict({"image_size": 4})


def test_prefix_entries_are_keyed_by_image_size(tmp_path):
    config = TrialConfig.from_dict({"freeze_blocks": 2})
    weights = load_pretrained_state_dict("efficientnet_lite0")
    store = PrefixStore(tmp_path / "prefix")
    entries = {}
    for size in (32, 40):
        splits = split_dataset(load_dataset("digits", image_size=size, per_class=6), seed=0)
        model = build_transfer(config, len(splits.train.classes), state_dict=weights).model
        entries[size] = store.get(model, splits, 2, state_dict=weights)
    assert entries[32].key["image_size"] == 32 and entries[40].key["image_size"] == 40
    assert entries[32].digest != entries[40].digest
    assert entries[32].train.shape[-1] != entries[40].train.shape[-1]
    folders = sorted(p.name for p in (tmp_path / "prefix").iterdir() if p.is_dir())
    assert len(folders) == 2 and "-32px-" in folders[0] and "-40px-" in folders[1]


@pytest.mark.e2e
def test_a_search_over_image_sizes_decodes_each_once_and_hands_over_each_models_size(
    tmp_path, tracking_uri, shared_ray
):
    space = yaml.safe_load((REPO / "search_spaces" / "tiny.yaml").read_text())
    space["parameters"]["image_size"] = {"choices": [32, 40]}
    space["parameters"]["freeze_blocks"] = {"low": 6, "high": "transfer_blocks"}  # quick trials
    (tmp_path / "sizes.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    done = run_nbtl(
        "search", str(tmp_path / "sizes.yaml"), "--data", "digits", "--trials", "4", "--keep-weights", "4",
        "--name", "sizes", "--tracking-uri", tracking_uri, "--storage-path", str(tmp_path / "results"),
        cwd=tmp_path, env=shared_ray,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert "32px" in done.stdout and "40px" in done.stdout  # one data line per size
    assert len(list((tmp_path / "results" / "nbtl_data").glob("*/images.npy"))) == 2
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("search-sizes").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    sizes = [int(r.data.params["image_size"]) for r in children]
    assert len(children) == 4 and set(sizes) == {32, 40}, sizes
    kept = [r for r in children if r.data.tags.get("nbtl.weights_kept") == "true"]
    assert kept
    for run in kept:  # each kept model reads images at the size its trial trained at
        folder = client.download_artifacts(run.info.run_id, "classifier", str(tmp_path / run.info.run_id))
        members, _, image_size = read_members(folder)
        assert image_size == int(run.data.params["image_size"]) == members[0].config["image_size"]
        assert next(v for v in members[0].state_dict.values() if torch.is_floating_point(v)).isfinite().all()
