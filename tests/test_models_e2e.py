"""End to end: a tiny real search hands over its model. The best trial's best-epoch weights are logged on the
parent run as a pyfunc model and registered; loaded in a fresh process they predict the test split as the
trial's own evaluation scored it; the best trials keep their weights, which ``nbtl ensemble`` averages; the
search's data is an MLflow dataset input of every run; names tell searches and trials apart."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from sklearn.metrics import accuracy_score, f1_score

from conftest import REPO, new_store, run_nbtl
from nbtl.data import load_dataset, split_dataset
from nbtl.data.settings import DataSettings
from nbtl.models.classifier import load_classifier, read_members
from nbtl.models.ensemble import EnsembleError, ensemble_search
from nbtl.models.export import KEPT_ARTIFACT, KEPT_TAG, mlflow_uris, png_bytes
from nbtl.tracking import search_experiment

pytestmark = pytest.mark.e2e

NAME = "default"  # the name MLflow's own experiment has, but for its case: the search's must not be confused with it
TRIALS = 3


@pytest.fixture(scope="module")
def search(tmp_path_factory, shared_ray):
    """One tiny search (3 trials on digits), its store and its test split."""
    folder = tmp_path_factory.mktemp("models")
    uri = new_store(folder)
    done = run_nbtl(
        "search", str(REPO / "search_spaces" / "tiny.yaml"), "--data", "digits", "--trials", str(TRIALS),
        "--name", NAME, "--tracking-uri", uri, "--storage-path", str(folder / "results"),
        cwd=folder, env=shared_ray,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(search_experiment(NAME))
    [parent] = client.search_runs([experiment.experiment_id], filter_string="tags.`nbtl.role` = 'search'")
    trials = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    # $RAY_ADDRESS (a Ray job's driver has it set) joins that head, as --address does: the test process's own head
    assert parent.data.tags["nbtl.ray_address"] == shared_ray["RAY_ADDRESS"]
    settings = DataSettings.from_params(parent.data.params)
    splits = split_dataset(load_dataset("digits", **settings.load_kwargs()), **settings.split_kwargs())
    return {"uri": uri, "folder": folder, "client": client, "parent": parent, "trials": trials, "splits": splits,
            "stdout": done.stdout}  # fmt: skip


def _scores(predicted: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return accuracy_score(labels, predicted), f1_score(labels, predicted, average="macro", zero_division=0)


FRESH_PROCESS = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
images = [bytes.fromhex(h) for h in json.load(open(sys.argv[3]))]
out = model.predict(pd.DataFrame({"image": images}))
print(json.dumps({"classes": out["class"].tolist(), "metadata": model.metadata.metadata}))
"""


def test_best_model_is_registered_and_predicts_the_test_split_as_its_trial_did(search, tmp_path):
    client, parent, splits = search["client"], search["parent"], search["splits"]
    # registered under the search's name, version 1, with the search's metrics as tags
    version = client.get_model_version(NAME, "1")
    tags = version.tags
    best = client.get_run(tags["nbtl.run_id"])
    assert parent.data.tags["nbtl.best_run_id"] == best.info.run_id == tags["nbtl.run_id"]
    assert float(tags["test_accuracy"]) == pytest.approx(best.data.metrics["test_accuracy"], abs=1e-6)
    assert float(tags["best_val_accuracy"]) == pytest.approx(parent.data.metrics["best_val_accuracy"], abs=1e-6)
    assert parent.data.tags["nbtl.registered_model"] == f"models:/{NAME}/1"
    assert f"Model: models:/{NAME}/1" in search["stdout"]
    # the parent run's description (MLflow renders it as markdown): the top trials, the model and how to use it
    note = parent.data.tags["mlflow.note.content"]
    assert f"Model: `models:/{NAME}/1`" in note and f"nbtl predict models:/{NAME}/1" in note, note
    assert f"| {tags['nbtl.trial_id']} |" in note.splitlines()[6], note  # the first row is the best trial

    # a fresh process: mlflow.pyfunc.load_model and the test split's images as PNG files' bytes
    images = tmp_path / "test_images.json"
    images.write_text(json.dumps([png_bytes(image.numpy()).hex() for image in splits.test.images]))
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, search["uri"], f"models:/{NAME}/1", str(images)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    classes = splits.test.classes
    predicted = np.array([classes.index(c) for c in answer["classes"]])
    labels = splits.test.labels.numpy()
    # the trial's own evaluation, at its best epoch, scored the test split so
    accuracy, macro_f1 = _scores(predicted, labels)
    assert accuracy == pytest.approx(best.data.metrics["test_accuracy"], abs=1e-9)
    assert macro_f1 == pytest.approx(best.data.metrics["test_macro_f1"], abs=1e-9)
    # ... and image by image: the trial's kept weights, evaluated on the stored test tensors (no PNG, no MLflow model)
    kept = load_classifier(client.download_artifacts(best.info.run_id, KEPT_ARTIFACT, str(tmp_path)))
    assert (kept.logits(splits.test.images).argmax(1).numpy() == predicted).all()
    # the model carries its classes, image size and the trial's config
    metadata = answer["metadata"]
    assert metadata["classes"] == classes and metadata["image_size"] == splits.test.images.shape[-1]
    assert metadata["trial_configs"][0]["backbone"] == best.data.params["backbone"]
    with mlflow_uris(search["uri"]):
        model = mlflow.models.get_model_info(f"runs:/{parent.info.run_id}/model")
    assert model.signature.inputs.input_names() == ["image"] and model.saved_input_example_info


def test_the_best_trials_keep_their_weights_and_the_checkpoints_are_gone(search, tmp_path):
    client, trials, splits = search["client"], search["trials"], search["splits"]
    kept = [t for t in trials if t.data.tags.get(KEPT_TAG) == "true"]
    assert len(kept) == min(3, len(trials))
    for trial in kept:
        assert {a.path for a in client.list_artifacts(trial.info.run_id, KEPT_ARTIFACT)} == {
            f"{KEPT_ARTIFACT}/classifier.json",
            f"{KEPT_ARTIFACT}/member0.pt",
        }
        # the kept weights score the test split as their epoch's metrics, kept with them, say
        directory = client.download_artifacts(trial.info.run_id, KEPT_ARTIFACT, str(tmp_path / trial.info.run_id))
        [member], _, _ = read_members(directory)
        predicted = load_classifier(directory).logits(splits.test.images).argmax(1).numpy()
        assert _scores(predicted, splits.test.labels.numpy())[0] == pytest.approx(member.metrics["test_accuracy"])
        assert trial.data.tags["nbtl.kept_epoch"] == str(int(member.metrics["best_epoch"]))
    assert not list((search["folder"] / "results" / NAME).glob("*/checkpoint_*"))


def test_every_run_has_the_search_data_as_an_mlflow_dataset_input(search):
    client, parent, splits = search["client"], search["parent"], search["splits"]
    [entry] = client.get_run(parent.info.run_id).inputs.dataset_inputs
    dataset = entry.dataset
    assert dataset.name == "digits" and len(dataset.digest) == 16
    assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", "search")]
    profile = json.loads(dataset.profile)
    assert (profile["train"], profile["val"], profile["test"]) == (len(splits.train), len(splits.val), len(splits.test))
    assert profile["classes"] == 10
    for trial in search["trials"]:
        [trial_input] = client.get_run(trial.info.run_id).inputs.dataset_inputs
        assert trial_input.dataset.digest == dataset.digest
        assert [t.value for t in trial_input.tags] == ["training"]


def test_names_tell_searches_and_trials_apart(search):
    client, parent = search["client"], search["parent"]
    names = {e.name for e in client.search_experiments()}
    assert search_experiment(NAME) == f"search-{NAME}" in names and NAME not in names
    assert parent.info.run_name.startswith(f"{NAME} ")
    run_names = [t.info.run_name for t in search["trials"]]
    assert len(set(run_names)) == len(run_names)
    for trial in search["trials"]:
        assert trial.info.run_name.startswith(trial.data.tags["nbtl.trial_id"] + " efficientnet_lite0 transfer=")


def test_ensemble_of_the_kept_trials_is_scored_logged_and_registered(search, tmp_path):
    client, splits = search["client"], search["splits"]
    done = run_nbtl("ensemble", NAME, "--top", "2", "--tracking-uri", search["uri"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Ensemble of 2: test accuracy" in done.stdout and f"models:/{NAME}-ensemble/1" in done.stdout

    version = client.get_model_version(f"{NAME}-ensemble", "1")
    run = client.get_run(version.run_id)
    assert (
        run.data.tags["nbtl.role"] == "ensemble" and run.data.tags["mlflow.parentRunId"] == search["parent"].info.run_id
    )
    members = run.data.tags["nbtl.members"].split(",")
    # the best 2 by what their kept weights scored (the search's own ranking: results.csv, best first)
    table = pd.read_csv(client.download_artifacts(search["parent"].info.run_id, "results.csv", str(tmp_path)))
    kept = {t.info.run_id for t in search["trials"] if t.data.tags.get(KEPT_TAG) == "true"}
    assert members == [r for r in table["run_id"] if r in kept][:2]

    # the ensemble's accuracy is the kept weights' probabilities, averaged
    probabilities = []
    for i, member in enumerate(members):
        directory = client.download_artifacts(member, KEPT_ARTIFACT, str(tmp_path / str(i)))
        probabilities.append(load_classifier(directory).logits(splits.test.images).softmax(1))
    averaged = torch.stack(probabilities).mean(0).numpy()
    labels = splits.test.labels.numpy()
    accuracy, _ = _scores(averaged.argmax(1), labels)
    assert run.data.metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    single, _ = _scores(probabilities[0].numpy().argmax(1), labels)
    assert run.data.metrics["best_single_test_accuracy"] == pytest.approx(single, abs=1e-9)
    assert run.data.metrics["test_accuracy_gain"] == pytest.approx(accuracy - single, abs=1e-9)
    assert float(version.tags["test_accuracy"]) == pytest.approx(accuracy, abs=1e-6)

    # the registered ensemble predicts as the averaged probabilities do
    with mlflow_uris(search["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}-ensemble/1")
    out = model.predict(pd.DataFrame({"image": [png_bytes(i.numpy()) for i in splits.test.images[:8]]}))
    assert out["class"].tolist() == [splits.test.classes[j] for j in averaged[:8].argmax(1)]
    assert np.allclose(np.stack(out["probabilities"].tolist()), averaged[:8], atol=1e-5)

    # too few kept trials: one line, exit 2
    refused = run_nbtl("ensemble", NAME, "--top", "9", "--tracking-uri", search["uri"], cwd=tmp_path)
    assert refused.returncode == 2 and "--keep-weights 9" in refused.stderr, refused.stderr
    with pytest.raises(EnsembleError, match=f"no finished search 'nope' in .*: searches there: {NAME} "):
        ensemble_search(search["uri"], "nope", 2)
