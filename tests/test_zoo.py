"""``nbtl zoo``: the table maths and the paired comparison on known numbers, the folds on real data, the
frozen head; and the real command end to end (embedded Ray Tune, a fresh SQLite MLflow store read back with
``MlflowClient``), frozen on two datasets (one with an official test set) and fine-tuned."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_nbtl, store_untouched
from nbtl.zoo.report import METRICS, classification_metrics, display_table, paired_comparison, summary_table

ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
BACKBONES = "efficientnet_lite0,efficientnet_lite1"
TINY = ("--image-size", "32", "--per-class", "6", "--folds", "2", "--heads", "linear,spinal")


# ---------------------------------------------------------------- the maths, on numbers worked out by hand


def test_classification_metrics_on_known_predictions():
    # class 0: precision 1, recall 2/3, F1 0.8; class 1: precision 0.5, recall 1, F1 2/3; support 3 : 1
    metrics = classification_metrics([0, 0, 0, 1], [0, 0, 1, 1])
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["precision_macro"] == pytest.approx(0.75)
    assert metrics["recall_macro"] == pytest.approx(5 / 6)
    assert metrics["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert metrics["precision_weighted"] == pytest.approx((3 * 1 + 0.5) / 4)
    assert metrics["recall_weighted"] == pytest.approx(0.75)
    assert metrics["f1_weighted"] == pytest.approx((3 * 0.8 + 2 / 3) / 4)
    assert set(metrics) == set(METRICS)


def _folds(accuracies: dict[str, list[float]], backbone: str = "b0") -> pd.DataFrame:
    rows = []
    for head, values in accuracies.items():
        for i, value in enumerate(values):
            row = {"dataset": "d", "backbone": backbone, "head": head, "seed": i // 2, "fold": i % 2}
            rows.append({**row, **{m: value for m in METRICS}})
    return pd.DataFrame(rows)


def test_summary_table_mean_and_sample_sd_per_cell():
    folds = pd.concat([_folds({"linear": [0.8, 0.9, 1.0], "spinal": [0.5]}), _folds({"linear": [0.7, 0.7]}, "b1")])
    table = summary_table(folds)
    assert list(zip(table["backbone"], table["head"])) == [("b0", "linear"), ("b0", "spinal"), ("b1", "linear")]
    first = table.iloc[0]
    assert first["n"] == 3 and first["accuracy_mean"] == pytest.approx(0.9)
    assert first["accuracy_sd"] == pytest.approx(0.1)  # ddof=1: sqrt((0.01 + 0 + 0.01) / 2)
    assert first["f1_weighted_sd"] == pytest.approx(0.1)
    assert table.iloc[1]["n"] == 1 and math.isnan(table.iloc[1]["accuracy_sd"])  # one fold: no spread
    assert table.iloc[2]["accuracy_sd"] == pytest.approx(0.0)
    shown = display_table(table)
    assert list(shown["accuracy"]) == ["0.900 ± 0.100", "0.500", "0.700 ± 0.000"] and "dataset" not in shown


def test_paired_comparison_mean_difference_t_interval_and_wins():
    folds = _folds({"linear": [0.80, 0.85, 0.90, 0.75], "spinal": [0.85, 0.85, 0.95, 0.80]})
    # pairs go by (seed, fold), not by row order: shuffle one head's rows
    folds = pd.concat([folds[folds["head"] == "linear"], folds[folds["head"] == "spinal"].iloc[::-1]])
    (row,) = paired_comparison(folds, baseline="linear").to_dict("records")
    # differences 0.05, 0, 0.05, 0.05: mean 0.0375, sd 0.025, t(0.975, 3) = 3.182446
    half = 3.182446305284263 * 0.025 / 2
    assert row["head"] == "spinal" and row["baseline"] == "linear" and row["n"] == 4
    assert row["mean_diff"] == pytest.approx(0.0375) and row["sd_diff"] == pytest.approx(0.025)
    assert row["ci_low"] == pytest.approx(0.0375 - half) and row["ci_high"] == pytest.approx(0.0375 + half)
    assert (row["wins"], row["losses"], row["ties"]) == (3, 0, 1)


def test_paired_comparison_uses_only_folds_both_heads_measured():
    folds = _folds({"linear": [0.5, 0.6, 0.7], "spinal": [0.6, 0.5]})  # linear's seed-1 fold 0 has no partner
    (row,) = paired_comparison(folds).to_dict("records")
    assert row["n"] == 2 and row["mean_diff"] == pytest.approx(0.0)
    assert (row["wins"], row["losses"], row["ties"]) == (1, 1, 0)
    (single,) = paired_comparison(folds[folds["fold"] == 0]).to_dict("records")
    assert single["n"] == 1 and math.isnan(single["ci_low"])  # one pair: no interval
    assert paired_comparison(folds[folds["head"] == "linear"]).empty  # one head: nothing to compare


# ---------------------------------------------------------------- folds and the frozen head, on real data


def test_study_folds_hold_every_image_out_once_per_seed():
    from nbtl.data import load_dataset
    from nbtl.zoo.cv import study_folds

    data = load_dataset("digits", image_size=16, per_class=8, seed=0)
    folds = study_folds(data, 4, [0, 1])
    assert [(f.seed, f.fold) for f in folds] == [(s, f) for s in (0, 1) for f in range(4)]
    labels = data.labels.numpy()
    for seed in (0, 1):
        mine = [f for f in folds if f.seed == seed]
        held = np.concatenate([f.held_out for f in mine])
        assert sorted(held) == list(range(len(data)))  # each image held out exactly once
        for fold in mine:
            assert not set(fold.rest) & set(fold.held_out) and len(fold.rest) + len(fold.held_out) == len(data)
            assert np.bincount(labels[fold.held_out], minlength=10).tolist() == [2] * 10  # stratified
            assert not set(fold.train) & set(fold.val) and set(fold.test) == set(fold.held_out)
    assert not all(np.array_equal(a.held_out, b.held_out) for a, b in zip(folds[:4], folds[4:]))  # new deal per seed


def test_frozen_head_learns_and_is_seeded():
    from nbtl.zoo.frozen import HeadRecipe, train_head

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 40)) * 3
    labels = np.repeat(np.arange(3), 20)
    features = (centres[labels] + rng.normal(size=(60, 40))).astype(np.float32)
    train, test = np.arange(60) % 4 != 0, np.arange(60) % 4 == 0
    for head in ("linear", "spinal"):
        recipe = HeadRecipe(epochs=30, width=16)
        first = train_head(features[train], labels[train], features[test], head, 3, recipe, seed=1)
        again = train_head(features[train], labels[train], features[test], head, 3, recipe, seed=1)
        assert np.array_equal(first, again)
        assert (first == labels[test]).mean() >= 0.9, head


# ---------------------------------------------------------------- the command, end to end


def _digits_folder(root: Path) -> Path:
    """Real digits as PNG files in an ImageFolder with official train/ and test/ parts (3 classes)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(3):
        images = digits.images[digits.target == label][:6]
        for i, image in enumerate(images):
            part = "test" if i < 2 else "train"
            folder = root / part / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _store(tracking_uri: str, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None, f"no experiment {name}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    return client, parent, children


def _check_cells(client, parent, children, tmp_path: Path, cells: int) -> pd.DataFrame:
    """The parent's table holds, per cell, the mean and sd of its children's fold metrics."""
    directory = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "artifacts")))
    table = pd.read_csv(directory / "zoo_table.csv")
    assert len(table) == cells and (table["n"] == 2).all()
    for row in table.itertuples(index=False):
        mine = [
            c.data.metrics["accuracy"]
            for c in children
            if (c.data.params["dataset"], c.data.params["backbone"], c.data.params["head"])
            == (row.dataset, row.backbone, row.head)
        ]
        assert len(mine) == 2
        assert row.accuracy_mean == pytest.approx(np.mean(mine)) and row.accuracy_sd == pytest.approx(
            np.std(mine, ddof=1)
        )
    heads = pd.read_csv(directory / "zoo_heads.csv")
    assert len(heads) == cells // 2 and (heads["head"] == "spinal").all() and (heads["baseline"] == "linear").all()
    assert (heads["n"] == 2).all() and (heads["wins"] + heads["losses"] + heads["ties"] == 2).all()
    folds = pd.read_csv(directory / "zoo_folds.csv")
    assert len(folds) == len(children) and (folds["status"] == "FINISHED").all()
    assert sorted(folds["run_id"]) == sorted(c.info.run_id for c in children)
    return table


@pytest.mark.e2e
def test_zoo_frozen_two_datasets_end_to_end(tmp_path, tracking_uri, shared_ray):
    folder = _digits_folder(tmp_path / "shapes")
    env = {**ENV, "NBTL_CACHE_DIR": str(tmp_path / "cache"), **shared_ray}
    result = run_nbtl(
        "zoo", "digits", "--data", str(folder), "--backbones", BACKBONES, *TINY,
        "--tracking-uri", tracking_uri, "--name", "zoo-e2e", "--out", "table.csv", "--time-budget", "10m",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert "official test set of 6 kept" in result.stdout and "left)" in result.stdout  # progress: time left
    assert "± " in result.stdout and "Heads against the baseline" in result.stdout
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 4  # nbtl fit's cache: 2 datasets x 2 backbones

    client, parent, children = _store(tracking_uri, "zoo-e2e")
    assert parent.info.status == "FINISHED" and parent.data.tags["nbtl.role"] == "zoo"
    assert parent.data.params["mode"] == "frozen" and parent.data.params["trials"] == "16"
    assert len(children) == 16  # 2 datasets x 2 backbones x 2 heads x 2 folds
    for child in children:
        assert child.info.status == "FINISHED", child.data.tags.get("nbtl.error")
        params = child.data.params
        assert params["mode"] == "frozen" and params["head"] in ("linear", "spinal") and params["fold"] in ("0", "1")
        assert params["backbone"] in BACKBONES.split(",") and params["dataset"] in ("digits", "shapes")
        for metric in METRICS:
            assert 0.0 <= child.data.metrics[metric] <= 1.0, metric
        # the folder's 6 official test images are in no fold: its pool of 12 is held out 6 + 6
        expected = 6 if params["dataset"] == "shapes" else 30
        assert child.data.metrics["n_test"] == expected
    table = _check_cells(client, parent, children, tmp_path, cells=8)
    assert table.round(9).equals(pd.read_csv(tmp_path / "table.csv").round(9))  # --out: the same table
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"accuracy_per_backbone.png", "backbone_dataset_heatmap.png", "backbone_correlation.png"} <= artifacts
    assert parent.data.metrics["trials_finished"] == 16
    assert "shapes.efficientnet_lite0.spinal_minus_linear" in parent.data.metrics


@pytest.mark.e2e
def test_zoo_finetune_end_to_end(tmp_path, tracking_uri, shared_ray):
    result = run_nbtl(
        "zoo", "digits", "--backbones", BACKBONES, *TINY, "--mode", "finetune", "--epochs", "1",
        "--tracking-uri", tracking_uri, "--name", "zoo-ft",
        cwd=tmp_path, env={**ENV, **shared_ray},
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert "epoch 1: val_accuracy=" in result.stdout
    client, parent, children = _store(tracking_uri, "zoo-ft")
    assert parent.info.status == "FINISHED" and parent.data.params["mode"] == "finetune"
    assert parent.data.params["augmentation"] == '{"crop_padding": 4}'  # the default space's, for every backbone
    assert len(children) == 8
    for child in children:
        assert child.info.status == "FINISHED", child.data.tags.get("nbtl.error")
        params = child.data.params
        # the conventional recipe, the same for every backbone; the cell's head
        assert (params["lr"], params["head_lr"], params["freeze_blocks"], params["epochs"]) == (
            "0.03",
            "0.03",
            "0",
            "1",
        )
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1]
        assert child.data.metrics["n_test"] == 30 and 0.0 <= child.data.metrics["f1_macro"] <= 1.0
    _check_cells(client, parent, children, tmp_path, cells=4)
    assert {"accuracy_per_backbone.png", "zoo_table.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert (tmp_path / "nbtl_zoo_zoo-ft.csv").exists()


def test_zoo_bad_head_is_one_line_and_leaves_no_run(tmp_path, tracking_uri):
    result = run_nbtl(
        "zoo", "digits", "--backbones", "efficientnet_lite0", "--heads", "linear,conv",
        "--tracking-uri", tracking_uri, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "nbtl zoo: error: --heads: unknown head 'conv'; use linear, mlp, spinal"
    ]
    assert store_untouched(tmp_path / "mlflow.db")


@pytest.mark.e2e
def test_zoo_time_budget_ends_the_study_with_every_run_closed(tmp_path, tracking_uri):
    # 5 s: mostly spent on data, features, Ray and MLflow before the first trial, so the budget cuts folds off;
    # on a fast machine a fold or two may finish just before it ends (and Ray Tune never gets their last report):
    # those count as finished, from their runs, and the rest are stopped and their runs KILLED
    result = run_nbtl(
        "zoo", "digits", "--backbones", "efficientnet_lite0", *TINY, "--time-budget", "5s",
        "--tracking-uri", tracking_uri, "--name", "zoo-budget",
        cwd=tmp_path, env={**ENV, "NBTL_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    client, parent, children = _store(tracking_uri, "zoo-budget")  # the fixture: no run left RUNNING
    folds = pd.read_csv(client.download_artifacts(parent.info.run_id, "zoo_folds.csv", str(tmp_path)))
    finished = int(parent.data.metrics["trials_finished"])
    assert result.returncode == (1 if finished == 0 else 0), (
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )
    if finished == 0:
        assert "(no fold finished)" in result.stdout and "did not finish" in result.stdout
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_stopped"] >= 1
    assert finished + parent.data.metrics["trials_stopped"] == 4 == len(folds)
    assert set(folds["status"]) <= {"FINISHED", "STOPPED"} and (folds["status"] == "FINISHED").sum() == finished
    # each fold's row agrees with its run: a finished fold's run FINISHED with the same accuracy, a stopped one's KILLED
    by_id = {child.info.run_id: child for child in children}
    for row in folds.itertuples(index=False):
        if row.status == "FINISHED":
            assert by_id[row.run_id].info.status == "FINISHED"
            assert row.accuracy == pytest.approx(by_id[row.run_id].data.metrics["accuracy"])
    stopped = [c for c in children if c.info.status != "FINISHED"]
    assert len(stopped) == len(children) - finished and all(c.info.status == "KILLED" for c in stopped)
