"""End to end: nbtl recommend on real data writes a config YAML that nbtl train and nbtl search --warm-start
run (real torch, real Ray, a real MLflow store), and nbtl heuristics learn learns from that store."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, nbtl_in_one_interpreter, run_nbtl, selected_tests
from nbtl.search import load_space
from nbtl.tracking import search_experiment

E2E = pytest.mark.e2e  # starts Ray and trains: the end-to-end suite


@E2E
def test_recommend_train_warm_start_and_learn(tmp_path, tracking_uri, shared_ray):
    # 1. recommend: fit measures on the training split, rules, learned recommender, reasons, predicted accuracy
    done = run_nbtl(
        "recommend",
        "digits",
        "--image-size",
        "32",
        "--per-class",
        "15",
        "--out",
        "rec.yaml",
        "--fit-out",
        "fit.csv",
        "--no-cache",  # the features are extracted here, so their progress shows
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # stderr is a pipe, not a terminal: plain lines, no tqdm bar redrawn with carriage returns
    assert "efficientnet_lite0 features @ 32px: " in done.stderr and "\r" not in done.stderr, done.stderr[-2000:]
    document = yaml.safe_load((tmp_path / "rec.yaml").read_text())
    assert document["format"] == "nbtl-recommendation"
    # the data settings of the search it was measured for (default.yaml's split and augmentation)
    assert document["data"] == {
        "spec": "digits",
        "name": "digits",
        "image_size": 32,
        "per_class": 15,
        "classes": None,
        "split_seed": 0,  # the split's seed, named as in MLflow
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "augmentation": {"crop_padding": 4},
        "test_data": None,
    }
    # the default space's backbones, and no other (default.yaml searches efficientnet_lite0 and lite1)
    assert {r["backbone"] for r in document["backbone_ranking"]} == set(load_space("default").backbones())
    assert len(document["backbone_ranking"]) == 2
    first = document["configs"][0]
    assert set(first["reasons"]) >= set(first["config"])  # every setting says why
    assert 0.0 <= first["predicted_val_accuracy"] <= 1.0  # the shipped learned recommender predicts
    assert first["source"] == "rules"
    # inside the space they were recommended for, its batch_size: auto resolved for the training split
    n_train = int(re.search(r"^Dataset digits: (\d+) training images", done.stdout, re.M).group(1))
    space = load_space("default").resolved(n_train)
    for entry in document["configs"]:
        assert space.clip(entry["config"]) == (entry["config"], []), entry
    assert "transfer-to-fit-peak" in first["reasons"]["transfer_blocks"]
    fit = pd.read_csv(tmp_path / "fit.csv")
    assert set(fit["backbone"]) == {"efficientnet_lite0", "efficientnet_lite1"} and fit["logme"].notna().all()
    assert "Config 1 (" in done.stdout and "# transfer-to-fit-peak (fit_peak_block=" in done.stdout

    # 2. a single training run of the first config, on the data the file names, tracked in MLflow
    done = run_nbtl("train", "rec.yaml", "--epochs", "1", "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best_val_accuracy" in done.stdout
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("train-digits")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    # the config, and the linear probe trained as its floor; the better on validation is tagged and reported
    assert set(runs) == {"rec", "rec-probe"} and all(r.info.status == "FINISHED" for r in runs.values())
    probe, run = runs["rec-probe"], runs["rec"]
    assert probe.data.params["freeze_blocks"] == probe.data.params["transfer_blocks"] == "9"
    kept = max(runs.values(), key=lambda r: (r.data.metrics["best_val_accuracy"], -r.data.metrics["best_val_loss"]))
    assert [r.info.run_name for r in runs.values() if r.data.tags.get("nbtl.chosen") == "true"] == [kept.info.run_name]
    assert f"kept {kept.info.run_name}:" in done.stdout
    assert f"test_accuracy {kept.data.metrics['test_accuracy']:.4f}" in done.stdout
    assert run.data.params["lr"] == str(first["config"]["lr"])
    assert run.data.params["transfer_blocks"] == str(first["config"]["transfer_blocks"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]

    # 3. a search that runs the recommended configs first (moved to the nearest point of the tiny space)
    done = run_nbtl(
        "search",
        str(REPO / "search_spaces" / "tiny.yaml"),
        "--data",
        "digits",
        "--trials",
        "2",
        "--keep-weights",  # the model hand-over is tested in test_models_e2e and test_mlflow_ui
        "0",
        "--warm-start",
        "rec.yaml",
        "--tracking-uri",
        tracking_uri,
        "--storage-path",
        str(tmp_path / "results"),
        "--name",
        "warm",
        cwd=tmp_path,
        env=shared_ray,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warm start: " in done.stdout
    space = load_space(REPO / "search_spaces" / "tiny.yaml")
    points = [space.project(entry["config"])[0] for entry in document["configs"]]
    parent = client.search_runs(
        [client.get_experiment_by_name(search_experiment("warm")).experiment_id],
        filter_string="tags.`nbtl.role` = 'search'",
    )[0]
    children = client.search_runs([parent.info.experiment_id], filter_string="tags.`nbtl.role` = 'trial'")
    assert len(children) == 2
    # the search's trials are the recommended configs (as points of the tiny space), whatever order Ray ran them in
    ran = [{k: c.data.params[k] for k in points[0]} for c in children]
    for point in points[:2]:
        assert {k: str(v) for k, v in point.items()} in ran

    # 4. learn from the shipped meta-dataset plus this store's finished trials; plain JSON out
    done = run_nbtl(
        "heuristics",
        "learn",
        "--tracking-uri",
        tracking_uri,
        "--meta",
        str(REPO / "heuristics" / "meta_dataset.csv"),
        "--out",
        "learned.json",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    model = json.loads((tmp_path / "learned.json").read_text())
    assert model["format"] == "nbtl-learned-recommender" and model["info"]["rows"] > 0
    meta = pd.read_csv(tmp_path / "learned.csv")
    finished = {
        c.info.run_id
        for c in children
        if c.info.status == "FINISHED" and c.data.tags.get("nbtl.stopped_early") != "true"
    }
    assert finished and finished <= set(meta["run_id"])
    assert set(meta.loc[meta["run_id"].isin(finished), "task"]) == {"digits per_class=20 32px split=0.2/0.2 seed=0"}


ONE_LINE_FAILURES = [
    (["recommend", "digits", "--backbones", "resnet_nine"], "resnet_nine"),
    (["train", "missing.yaml", "--data", "digits"], "cannot read it"),
    (
        ["search", str(REPO / "search_spaces" / "tiny.yaml"), "--data", "digits", "--warm-start", "missing.yaml"],
        "cannot read it",
    ),
    (["recommend", "digits", "--rules", "nowhere.yaml"], "rules file nowhere.yaml"),
    (["heuristics", "learn", "--no-store", "--meta", "nowhere.csv"], "nowhere.csv"),
]


@pytest.fixture(scope="module", autouse=True)
def failures(ahead, tmp_path_factory, request):
    """The commands that must fail in one line, each in a folder of its own, run one after another through
    nbtl's entry point in one interpreter (``nbtl_in_one_interpreter``), started with the module (while its
    first test runs): ``failures()`` waits for them and gives their results by command line."""
    if "test_heuristics_commands_fail_in_one_line" not in selected_tests(request):
        return None
    cases = {" ".join(args): (args, tmp_path_factory.mktemp("fails"), 600) for args, _ in ONE_LINE_FAILURES}
    ahead.call("failures", nbtl_in_one_interpreter, cases, tmp_path_factory.mktemp("failures"))
    return lambda: ahead["failures"]


@pytest.mark.parametrize("args, message", ONE_LINE_FAILURES)
def test_heuristics_commands_fail_in_one_line(failures, args, message):
    done = failures()[" ".join(args)]
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
