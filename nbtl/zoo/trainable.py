"""The Ray Tune side of one zoo trial (one dataset × backbone × head × fold × seed): train, predict the
held-out fold, log the child run, report (through the search's adapter to Ray Tune, :mod:`nbtl.search.trainable`).

``frozen``: a new head on the backbone's cached last-block features (:mod:`nbtl.zoo.frozen`).
``finetune``: :func:`nbtl.train.train_trial`, the trial code of ``nbtl search``, with the study's one recipe;
its best epoch (on a validation part of the fold's training images) predicts the held-out fold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbtl.config import TrialConfig
from nbtl.errors import one_line
from nbtl.heuristics.recipes import conventional_config
from nbtl.search.space import auto_batch_size
from nbtl.search.trainable import current_trial, report_result
from nbtl.tracking import TrialTracker, status_for
from nbtl.train import default_device, train_trial
from nbtl.transfer import build_transfer
from nbtl.zoo.cv import fold_splits
from nbtl.zoo.frozen import HeadRecipe, train_head
from nbtl.zoo.report import classification_metrics


@dataclass(frozen=True)
class ZooContext:
    """What every trial of a study shares, shipped once through Ray's object store."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    mode: str
    recipe: dict[str, Any]  # frozen: HeadRecipe fields; finetune: TrialConfig keys shared by every cell
    augmentation: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)


def trial_name(cell: dict[str, Any]) -> str:
    """``digits/efficientnet_lite0/spinal/s0f1``: the cell, the seed and the fold of a trial."""
    return f"{cell['dataset']}/{cell['backbone']}/{cell['head']}/s{cell['seed']}f{cell['fold']}"


def _predict_frozen(cell, data, context: ZooContext) -> tuple[np.ndarray, dict[str, float]]:
    fold = data["folds"][cell["seed"], cell["fold"]]
    features, labels = data["features"][cell["backbone"]], data["labels"]
    predictions = train_head(
        features[fold.rest],
        labels[fold.rest],
        features[fold.held_out],
        cell["head"],
        int(data["num_classes"]),
        HeadRecipe(**context.recipe),
        seed=int(cell["seed"]),
    )
    return predictions, {}


def finetune_config(cell: dict[str, Any], recipe: dict[str, Any], n_train: int):
    """The :class:`~nbtl.config.TrialConfig` of a fine-tuning trial: the conventional recipe of its
    backbone (:func:`nbtl.heuristics.recipes.conventional_config`), the study's recipe on top, its head and seed."""
    values = {**conventional_config(cell["backbone"]), **recipe, "head": cell["head"], "seed": int(cell["seed"])}
    if values.get("batch_size") in (None, "auto"):
        values["batch_size"] = auto_batch_size(n_train)
    return TrialConfig.from_dict(values, where=f"zoo trial {trial_name(cell)}")


def _predict_finetune(
    config, splits, data, context: ZooContext, tracker, report
) -> tuple[np.ndarray, dict[str, float]]:
    import torch

    weights = data["weights"].get(config.backbone)
    best: dict[str, Any] = {}

    def on_epoch(metrics: dict[str, float], state) -> None:
        if int(metrics["best_epoch"]) == int(metrics["epoch"]):  # keep the best epoch's weights to predict with
            best["model"] = state()["model"]
        tracker.log_epoch({k: v for k, v in metrics.items() if not k.startswith("test_")}, step=int(metrics["epoch"]))
        report({k: metrics[k] for k in ("epoch", "val_accuracy", "val_loss", "best_val_accuracy")})

    result = train_trial(config, splits, augmentation=context.augmentation, state_dict=weights, report=on_epoch)
    model = build_transfer(config, num_classes=len(splits.train.classes), state_dict=weights).model
    model.load_state_dict(best["model"])
    device = default_device()
    model = model.to(device).eval()
    images = splits.test.images
    with torch.no_grad():
        logits = [model(images[i : i + 256].to(device)).float().cpu() for i in range(0, len(images), 256)]
    final = result.final
    return torch.cat(logits).argmax(1).numpy(), {
        "best_epoch": final["best_epoch"],
        "best_val_accuracy": final["best_val_accuracy"],
        "epochs": len(result.history),
        "n_val": len(splits.val),
    }


def zoo_trainable(config: dict[str, Any], data=None, context: ZooContext | None = None) -> None:
    """Ray Tune function trainable: one zoo trial. ``config["cell"]`` names it (dataset index and name,
    backbone, head, fold, seed); ``data`` (by dataset index: features or images, labels, folds, weights)
    arrives once per node through ``tune.with_parameters``."""
    cell = config["cell"]
    this = data[cell["index"]]
    fold = this["folds"][cell["seed"], cell["fold"]]
    params = {k: cell[k] for k in ("dataset", "backbone", "head", "fold", "seed")}
    params["mode"] = context.mode
    if context.mode == "frozen":
        params.update(context.recipe)
    else:  # invalid data or recipe raise here, before a run exists: the driver records the failed trial
        splits = fold_splits(this["dataset"], fold)
        trial_config = finetune_config(cell, context.recipe, len(splits.train))
        params.update(trial_config.to_dict())
    tracker = TrialTracker(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        (trial := current_trial()).trial_id,
        trial_name(cell),
        params,
        {**context.tags, "nbtl.backbone": cell["backbone"], "nbtl.dataset": cell["dataset"]},
        location={"nbtl.ray_node_id": trial.node_id},
    )
    started = time.perf_counter()
    try:
        if context.mode == "frozen":
            predictions, extra = _predict_frozen(cell, this, context)
        else:
            predictions, extra = _predict_finetune(trial_config, splits, this, context, tracker, report_result)
        scored = fold.held_out if context.mode == "frozen" else fold.test
        metrics = {
            **classification_metrics(this["labels"][scored], predictions),
            **extra,
            "train_seconds": time.perf_counter() - started,
            "n_train": len(fold.rest if context.mode == "frozen" else fold.train),
            "n_test": len(scored),
        }
        tracker.log_metrics(metrics, step=0)
    except SystemExit:
        raise  # Ray ended the trial (time budget, Ctrl-C): the driver closes its run
    except BaseException as error:
        tracker.end(status_for(error), reason=one_line(error, with_type=True))
        raise
    tracker.end("FINISHED")
    report_result(metrics)
