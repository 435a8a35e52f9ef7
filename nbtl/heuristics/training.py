"""``nbtl train``'s work: train one recommended config (a file written by ``nbtl recommend``, or a search's best
config) as an MLflow run, with the linear probe as its floor, and keep the better of the two by the one ranking.

Below the command line: :func:`train_recommended` takes the config file and settings, says its progress through
``say`` and returns what it kept; ``nbtl train`` parses the flags, calls it and prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nbtl.backbones import load_pretrained_state_dict
from nbtl.config import TrialConfig, dump_config
from nbtl.data import load_dataset, split_dataset
from nbtl.data.settings import DataSettings
from nbtl.errors import ConfigError, one_line
from nbtl.features import PrefixStore
from nbtl.heuristics.recipes import probe_config
from nbtl.heuristics.recommend import load_recommendation, recommended_settings
from nbtl.ranking import rank_key
from nbtl.tracking import CHOSEN_TAG, TrainingRun, check_tracking_uri, name_slug
from nbtl.train import train_trial

__all__ = ["TrainOutcome", "train_recommended"]

logger = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What ``nbtl train`` kept: the run's name, its last epoch's metrics (which carry the best epoch's) and the
    MLflow run (tagged ``nbtl.chosen=true``), with every run it was compared with (name, metrics)."""

    run_name: str
    metrics: dict[str, float]
    run: TrainingRun
    compared: list[tuple[str, dict[str, float]]] = field(default_factory=list)


def train_recommended(
    config_file: str,
    *,
    data: str | None = None,
    overrides: dict[str, Any] | None = None,
    base: DataSettings | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    epochs: int | None = None,
    config_index: int = 1,
    floor: bool = True,
    say: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Train config ``config_index`` (1-based) of ``config_file`` on ``data`` (default: the dataset the file
    names) under the file's data settings (``base`` for what it leaves out, ``overrides`` over it), as one MLflow
    run in ``experiment`` (default ``train-<dataset>``); unless ``floor`` is false, also train the linear probe of
    the same backbone and keep the better of the two on validation (:func:`nbtl.ranking.rank_key`)."""
    say = say or logger.info
    configs, saved = load_recommendation(config_file)
    if config_index > len(configs):
        raise ConfigError(f"--config-index {config_index}: {config_file} holds {len(configs)} config(s)")
    trial_config = configs[config_index - 1]  # parsed and checked once, where the file was read
    if epochs:
        warmup = trial_config.head_warmup_epochs
        if warmup >= epochs:  # the warm-up must leave an epoch to fine-tune
            warmup = epochs - 1
            logger.info("--epochs %d: head_warmup_epochs lowered to %d", epochs, epochs - 1)
        trial_config = replace(trial_config, epochs=epochs, head_warmup_epochs=warmup)
        trial_config.validate(f"config file {config_file} with --epochs {epochs}")
    data = data or saved.get("spec")
    if not data:
        raise ConfigError(f"nbtl train needs --data: {config_file} does not name a dataset")
    settings = recommended_settings(saved, config_file, base=base).with_overrides(overrides or {})
    # the config's own image_size, else its backbone's (native) or the settings' size
    settings = settings.with_overrides(
        {"image_size": trial_config.image_size or settings.size_for(trial_config.backbone)}
    )
    logger.debug("data settings: %s", settings)
    check_tracking_uri(tracking_uri)  # a store that cannot be used fails here, in one line, before any data
    dataset = load_dataset(data, **settings.load_kwargs())
    splits = split_dataset(dataset, **settings.split_kwargs())
    say(
        f"data {dataset.name}: train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)}, "
        f"{settings.image_size}px, augmentation {settings.augmentation or 'none'}"
    )
    # the split's seed is logged as split_seed (DataSettings.to_params): a config's own `seed` seeds its training
    base_params = {"data": data, **settings.to_params(), "config_file": config_file}
    experiment = experiment or f"train-{name_slug(dataset.name)}"
    stem = Path(config_file).stem
    candidates = [(stem, trial_config)]
    if floor and trial_config.pretrained:
        probe = TrialConfig.from_dict(
            {
                **probe_config(trial_config.backbone),
                "epochs": trial_config.epochs,
                "batch_size": trial_config.batch_size,
                "seed": trial_config.seed,
            }
        )
        if probe.freeze_blocks != trial_config.freeze_blocks or trial_config.transfer_blocks not in (
            None,
            probe.transfer_blocks,
        ):
            candidates.append((f"{stem}-probe", probe))
    outcomes = []
    store = PrefixStore()  # in memory; the probe reuses the frozen features a config's head warm-up computed
    for run_name, candidate in candidates:
        if len(candidates) > 1:
            say(f"-- {run_name}: {'the linear probe (floor)' if run_name.endswith('-probe') else 'the config'}")
        params = {**candidate.to_dict(), **base_params}
        final, run = _train_and_track(
            candidate,
            splits,
            settings.augmentation,
            tracking_uri,
            experiment,
            run_name,
            params,
            dataset.name,
            say,
            store,
        )
        outcomes.append((run_name, final, run))
    run_name, final, run = min(outcomes, key=lambda o: rank_key(o[1]))  # the one ranking (nbtl.ranking)
    run.set_tags({CHOSEN_TAG: "true"})  # what readers take as this training's result
    return TrainOutcome(run_name, final, run, [(name, metrics) for name, metrics, _ in outcomes])


def _train_and_track(
    trial_config: TrialConfig,
    splits,
    augmentation,
    tracking_uri: str | None,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    dataset_name: str,
    say: Callable[[str], None],
    store: PrefixStore,
) -> tuple[dict[str, float], TrainingRun]:
    """Train one config as one MLflow run; return its last epoch's metrics and the run."""
    weights = load_pretrained_state_dict(trial_config.backbone) if trial_config.pretrained else None
    run = TrainingRun(
        tracking_uri,
        experiment,
        run_name,
        params,
        {"nbtl.dataset": dataset_name, "nbtl.backbone": trial_config.backbone},
    )
    run.log_text(dump_config(trial_config.to_dict()), "config.yaml")

    def report(metrics, state) -> None:
        run.log_epoch(metrics, step=int(metrics["epoch"]))
        say(
            f"epoch {int(metrics['epoch'])}: val_accuracy {metrics['val_accuracy']:.4f}  "
            f"train_loss {metrics['train_loss']:.4f}  ({metrics['epoch_time_s']:.1f}s)"
        )

    try:
        result = train_trial(
            trial_config, splits, augmentation=augmentation, state_dict=weights, report=report, prefix_store=store
        )
    except KeyboardInterrupt:
        run.end("KILLED", reason="interrupted")
        raise
    except BaseException as error:
        run.end("FAILED", reason=one_line(error))
        raise
    run.end("FINISHED")
    return result.final, run
