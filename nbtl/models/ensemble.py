"""``nbtl ensemble``: the K best trials of a finished search, their probabilities averaged.

The trials' best-epoch weights are the ones the search kept on their MLflow runs (``nbtl search
--keep-weights``, :mod:`nbtl.search.handover`); the test split is rebuilt from the search's logged data
settings and checked against the dataset digest it logged. The ensemble is scored against the best single
trial on that test split, and logged as a pyfunc model on its own run (a child of the search's parent run,
``nbtl.role=ensemble``), registered like a search's best model.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from nbtl.data import load_dataset, split_dataset
from nbtl.data.describe import describe_dataset
from nbtl.data.settings import NATIVE, DataSettings
from nbtl.errors import ConfigError, NbtlError
from nbtl.models.classifier import Member, classifier_of, read_members
from nbtl.models.export import ENSEMBLE_NAME, KEPT_ARTIFACT, KEPT_TAG, log_classifier, mlflow_uris
from nbtl.ranking import rank_key
from nbtl.tracking import (
    MODEL_URI_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SEARCH_TAG,
    TrainingRun,
    finished_searches,
    log_dataset,
    resolve_tracking_uri,
    tracking_client,
)

logger = logging.getLogger(__name__)


class EnsembleError(NbtlError):
    """A search that cannot be ensembled (not found, too few kept trials, changed data)."""


@dataclass
class EnsembleResult:
    """The scores (a table: one row per member and one for the ensemble) and where the model went."""

    table: pd.DataFrame
    ensemble: dict[str, float]
    best_single: dict[str, float]
    run_id: str
    logged: Any = None
    members: list[str] = field(default_factory=list)

    @property
    def gain(self) -> float:
        return self.ensemble["accuracy"] - self.best_single["accuracy"]


def find_search(client, name: str, run_id: str | None = None):
    """The parent run of search ``name``: ``run_id`` if given, else its newest FINISHED one."""
    if run_id:
        run = client.get_run(run_id)
        if run.data.tags.get(ROLE_TAG) != "search":
            raise EnsembleError(f"--run {run_id}: not a search's parent run (nbtl.role={run.data.tags.get(ROLE_TAG)})")
        return run
    runs = finished_searches(client, name)
    if not runs:
        known = sorted({r.data.tags[SEARCH_TAG] for r in finished_searches(client)})
        raise EnsembleError(
            f"no finished search {name!r} in {client.tracking_uri}: searches there: {', '.join(known) or 'none'} "
            "(use --tracking-uri for another store)"
        )
    return runs[0]


def kept_trials(client, parent) -> list:
    """The search's trial runs that kept their weights (ranked later, by what the kept weights scored)."""
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' and tags.`{KEPT_TAG}` = 'true'",
        max_results=1000,
    )
    return list(runs)


def search_test_split(parent, image_size: int | None = None):
    """The search's splits, rebuilt from its parent run's params (at ``image_size``, default the search's), and
    the dataset description. The data is checked against the digest the search logged, at the size it logged."""
    import dataclasses

    params = parent.data.params
    settings = DataSettings.from_params(params, where=f"the data settings of search run {parent.info.run_id}")
    inputs = [d.dataset for d in (parent.inputs.dataset_inputs if parent.inputs else [])]
    logged = [d.digest for d in inputs]
    logged_size = next((json.loads(d.profile or "{}").get("image_size") for d in inputs), None)
    checked_size = logged_size or (image_size if settings.image_size == NATIVE else settings.image_size)
    if checked_size is None:
        raise EnsembleError(f"search run {parent.info.run_id} searched at each backbone's own size: give the size")

    def decode(size: int):
        at = dataclasses.replace(settings, image_size=int(size))
        dataset = load_dataset(params["data"], **at.load_kwargs())
        splits = split_dataset(dataset, **at.split_kwargs())
        return splits, describe_dataset(dataset, splits, params["data"], at.image_size, at.test_data)

    splits, described = decode(checked_size)
    if logged and described["digest"] not in logged:
        raise EnsembleError(
            f"the data {params['data']!r} changed since the search ran (digest {described['digest']}, the search "
            f"logged {logged[0]}): its test split would not be the one the trials were scored on; "
            "ensemble where the search's data is unchanged"
        )
    if image_size is not None and int(image_size) != int(checked_size):
        splits, described = decode(image_size)
    return splits, described


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predicted = probabilities.argmax(1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def ensemble_search(
    tracking_uri: str | None,
    name: str,
    top: int,
    *,
    run_id: str | None = None,
    register: str | None = None,
    say: Callable[[str], None] = logger.info,
) -> EnsembleResult:
    """Ensemble the ``top`` best kept trials of search ``name`` (see the module docstring)."""
    import mlflow

    if top < 2:
        raise ConfigError(f"--top {top}: an ensemble needs at least 2 trials")
    uri = resolve_tracking_uri(tracking_uri)
    client = tracking_client(uri)
    parent = find_search(client, name, run_id)
    trials = kept_trials(client, parent)
    if len(trials) < 2:
        raise EnsembleError(
            f"search {name!r} (run {parent.info.run_id}) kept the weights of {len(trials)} trial(s), and an ensemble "
            "needs 2: search again with more finished trials (nbtl search --keep-weights K keeps the best K)"
        )
    if len(trials) < top:
        raise EnsembleError(
            f"search {name!r} (run {parent.info.run_id}) kept the weights of {len(trials)} trial(s), fewer than "
            f"--top {top}: use --top {len(trials)}, or search again with --keep-weights {top}"
        )
    kept: list[tuple[Any, Member, int]] = []
    classes = None
    with tempfile.TemporaryDirectory(prefix="nbtl-ensemble-") as folder, mlflow_uris(uri):
        for trial in trials:
            directory = mlflow.artifacts.download_artifacts(
                run_id=trial.info.run_id, artifact_path=KEPT_ARTIFACT, dst_path=folder, tracking_uri=uri
            )
            found, classes, size = read_members(directory)
            kept += [(trial, Member(m.config, m.state_dict, trial.info.run_id, m.metrics), size) for m in found]
            for file in Path(directory).iterdir():  # the next trial's folder has the same name
                file.unlink()
    # ranked by what the kept weights scored (their checkpoint's metrics, as the search ranked them)
    kept.sort(key=lambda k: rank_key(k[1].metrics))
    trials, members = [t for t, _, _ in kept[:top]], [m for _, m, _ in kept[:top]]
    sizes = sorted({size for _, _, size in kept[:top]})
    if len(sizes) > 1:
        raise EnsembleError(
            f"the top {top} trials of search {name!r} trained at different image sizes ({', '.join(map(str, sizes))} "
            "px), and an ensemble averages one input: use a smaller --top, or search one size"
        )
    image_size = sizes[0]
    splits, described = search_test_split(parent, image_size)
    if list(classes) != list(splits.test.classes):
        raise EnsembleError(f"the kept models' classes {classes[:5]}... are not the search data's: was it changed?")
    labels = splits.test.labels.numpy()
    rows, probabilities = [], []
    for trial, member in zip(trials, members, strict=True):
        classifier = classifier_of([member], classes, image_size)
        p = classifier.logits(splits.test.images).softmax(1).numpy()
        probabilities.append(p)
        rows.append(
            {
                "model": trial.info.run_name,
                "run_id": trial.info.run_id,
                "best_epoch": member.metrics.get("best_epoch"),
                "best_val_accuracy": member.metrics.get("best_val_accuracy"),
                "trial_test_accuracy": member.metrics.get("test_accuracy"),
                **{f"test_{k}": v for k, v in scores(p, labels).items()},
            }
        )
    averaged = np.mean(probabilities, axis=0)
    ensemble = scores(averaged, labels)
    best_single = {"accuracy": rows[0]["test_accuracy"], "macro_f1": rows[0]["test_macro_f1"]}
    rows.append({"model": f"ensemble of {top}", "run_id": "", **{f"test_{k}": v for k, v in ensemble.items()}})
    table = pd.DataFrame(rows)
    gain = ensemble["accuracy"] - best_single["accuracy"]
    experiment = client.get_experiment(parent.info.experiment_id).name
    tags = {
        ROLE_TAG: "ensemble",
        PARENT_TAG: parent.info.run_id,
        SEARCH_TAG: parent.data.tags.get(SEARCH_TAG, name),
        "nbtl.members": ",".join(t.info.run_id for t in trials),
    }
    params = {"top": top, "search_run_id": parent.info.run_id, "members": ",".join(t.info.run_id for t in trials)}
    with TrainingRun(uri, experiment, f"ensemble top-{top} of {name}", params, tags) as run:
        log_dataset(run.client, run.run_id, described, "evaluation")
        metrics = {
            "test_accuracy": ensemble["accuracy"],
            "test_macro_f1": ensemble["macro_f1"],
            "best_single_test_accuracy": best_single["accuracy"],
            "best_single_test_macro_f1": best_single["macro_f1"],
            "test_accuracy_gain": gain,
        }
        run.log_epoch(metrics, step=0)
        run.log_text(table.to_csv(index=False), "ensemble_scores.csv")
        logged = log_classifier(
            uri,
            run.run_id,
            members,
            classes,
            image_size,
            splits.test.images[0].numpy(),
            name=ENSEMBLE_NAME,
            register=register,
            tags={
                **{k: f"{v:.6g}" for k, v in metrics.items()},
                "nbtl.search": name,
                "nbtl.search_run_id": parent.info.run_id,
            },
            metadata={"members_run_ids": [t.info.run_id for t in trials], "metrics": metrics},
        )
        run.set_tags({MODEL_URI_TAG: logged.model_uri})
    say(
        f"ensemble of {top}: test accuracy {ensemble['accuracy']:.4f} vs the best single trial's "
        f"{best_single['accuracy']:.4f} ({gain * 100:+.1f} points)"
    )
    return EnsembleResult(table, ensemble, best_single, run.run_id, logged, [t.info.run_id for t in trials])
