"""``nbtl recommend``: measure a dataset's fit per backbone and block, apply the rules, consult the
learned recommender, and write a config YAML that ``nbtl train`` and ``nbtl search --warm-start`` read.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from nbtl.backbones import get_spec
from nbtl.config import TrialConfig, without_unused
from nbtl.data import load_dataset, split_dataset
from nbtl.data.settings import DataSettings
from nbtl.data.splits import stratified_sample
from nbtl.fit import block_features, fit_table, meta_features
from nbtl.heuristics.learned import TARGET, LearnedRecommender
from nbtl.heuristics.rules import Rules
from nbtl.heuristics.signals import HeuristicsError, backbone_signals, dataset_signals, rank_backbones
from nbtl.safe_yaml import load_yaml

if TYPE_CHECKING:
    from nbtl.search.space import SearchSpace

__all__ = [
    "Recommendation",
    "TaskFit",
    "fit_sample",
    "format_recommendation",
    "load_recommendation",
    "load_recommended_configs",
    "measure_task",
    "recommend",
    "recommended_settings",
    "training_split",
]

logger = logging.getLogger(__name__)

RECOMMENDATION_FORMAT = "nbtl-recommendation"
#: The learned recommender replaces the rules' config only when it predicts at least this gain.
MIN_GAIN = 0.002
#: The fit measures see at most this many training images: a stratified sample (:func:`fit_sample`), the same for
#: every backbone. LogME and a probe's accuracy settle long before, while extracting every block's features of a
#: large dataset at 224 px takes most of an hour on a CPU (issue 18's scale run: 42,000 images, 40 minutes and more).
#: Every task of the meta-dataset the rules and the recommender were fitted on has fewer (at most 700).
FIT_MAX_IMAGES = 2000


@dataclass
class TaskFit:
    """A dataset's signals and the fit table and signals of every backbone."""

    data: str
    dataset_name: str
    meta: dict[str, Any]
    dataset: dict[str, float]
    backbones: dict[str, dict[str, float]]
    tables: Any  # pandas.DataFrame of every backbone's fit table
    seconds: float
    settings: DataSettings | None = None  # the data settings the fit was measured with
    images: int | None = None  # the training images the measures saw (a sample of a large split: FIT_MAX_IMAGES)

    def row(self, backbone: str) -> dict[str, float]:
        """Dataset and backbone signals together, the inputs the rules and the model read."""
        return {**self.dataset, **self.backbones[backbone]}


def training_split(data: str, settings: DataSettings):
    """The training split of ``data`` under ``settings``: the images ``nbtl search`` trains on with the
    same settings (same per-class choice, fractions and seed), never its validation or test images."""
    return split_dataset(load_dataset(data, **settings.load_kwargs()), **settings.split_kwargs()).train


def measure_task(
    data: str,
    backbones: list[str],
    settings: DataSettings | None = None,
    *,
    image_size: int | None = None,
    per_class: int | None = None,
    classes: str | None = None,
    seed: int | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    fit_curve: str = "logme",
    peak_tolerance: float = 0.0,
    use_cache: bool = True,
    log: Callable[[str], None] | None = None,
    train=None,
    weights: dict[str, str] | None = None,
    max_images: int | None = FIT_MAX_IMAGES,
) -> TaskFit:
    """Fit measures of every backbone on the training split of ``data``.

    The split is :func:`training_split` under ``settings`` (default :class:`DataSettings`; the keyword
    settings, when given, override it), the one ``nbtl search`` makes with the same settings, so the
    measures never see the validation or test images the search (or a recommended run) is judged on. A
    caller that holds that split already (``nbtl search``) passes it as ``train`` and nothing is decoded
    again. Progress goes to ``log`` (default: this module's logger, at INFO). ``weights`` maps a backbone to a
    local weights file used instead of its default weights. A training split of more than ``max_images`` images
    (default :data:`FIT_MAX_IMAGES`; None: no limit) is measured on a stratified sample of that many
    (:func:`fit_sample`); the dataset's size and balance (``meta``) are the whole split's.
    """
    import pandas as pd

    settings = (settings or DataSettings()).with_overrides(
        {
            "image_size": image_size,
            "per_class": per_class,
            "classes": classes,
            "split_seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        }
    )
    say = log or logger.info
    for name in backbones:
        get_spec(name)
    started = time.perf_counter()
    if train is None:
        train = training_split(data, settings)
    logger.debug("measuring fit on %d training images of %s with %s", len(train), data, settings)
    meta = meta_features(train)
    measured = train
    if max_images is not None and len(train) > max_images:
        measured = fit_sample(train, max_images, settings.split_seed)
        say(
            f"fit measured on {len(measured):,} of the {len(train):,} training images (a sample stratified by class; "
            f"at most {max_images:,})"
        )
    tables, signals = [], {}
    for name in backbones:
        features = block_features(measured, name, weights_path=(weights or {}).get(name), use_cache=use_cache)
        table = fit_table(features, random_state=settings.split_seed)
        tables.append(table)
        signals[name] = backbone_signals(table, fit_curve=fit_curve, tolerance=peak_tolerance)
        say(
            f"{name}: features {'from cache' if features.from_cache else 'extracted'}, fit peak at block "
            f"{int(signals[name]['fit_peak_block'])} of {int(signals[name]['num_blocks'])}, "
            f"best LogME {signals[name]['logme_best']:.4g}, best probe {signals[name]['probe_best']:.3f}"
        )
    return TaskFit(
        data=data,
        dataset_name=train.name,
        meta=meta,
        dataset=dataset_signals(meta),
        backbones=signals,
        tables=pd.concat(tables, ignore_index=True),
        seconds=time.perf_counter() - started,
        settings=settings,
        images=len(measured),
    )


def fit_sample(train, max_images: int, seed: int | None = 0):
    """At most ``max_images`` images of ``train`` (an :class:`~nbtl.data.ImageDataset`), in their order, drawn
    per class in proportion to its size (at least one image of every class present) with ``seed``
    (:func:`nbtl.data.splits.stratified_sample`); ``train`` itself when it holds no more. Only the chosen images are
    copied out of a memory-mapped split."""
    if len(train) <= max_images:
        return train
    return train.subset(stratified_sample(train.labels.numpy(), max_images, seed))


@dataclass
class Recommendation:
    """What ``nbtl recommend`` found: configs best first, each with reasons and predicted accuracy."""

    data: dict[str, Any]
    configs: list[dict[str, Any]]
    backbone_ranking: list[dict[str, Any]]
    signals: dict[str, float]
    recommender: str | None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    ranked_by: str = "logme_best"  # the backbone signal the ranking used (the rules' rank_by)
    task: TaskFit | None = None  # the measured fit it was made from (not written to the YAML)

    def to_yaml(self) -> str:
        header = (
            "# Written by nbtl recommend. Run it:  nbtl train THIS_FILE --data DATA   or start a search from it:\n"
            "#   nbtl search search_spaces/default.yaml --data DATA --warm-start THIS_FILE\n"
        )
        document = {
            "format": RECOMMENDATION_FORMAT,
            "version": 1,
            "data": self.data,
            "configs": self.configs,
            "backbone_ranking": self.backbone_ranking,
            "signals": {k: _plain(v) for k, v in self.signals.items()},
            "recommender": self.recommender,
            "seconds": round(self.seconds, 1),
        }
        return header + yaml.safe_dump(document, sort_keys=False, width=120)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else round(float(value), 5)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _predict(model: LearnedRecommender | None, task: TaskFit, config: dict[str, Any]) -> float | None:
    if model is None:
        return None
    return float(model.predict_rows([{**config, **task.row(config["backbone"])}])[0])


def _choose(
    model: LearnedRecommender,
    task: TaskFit,
    rules_config: dict[str, Any],
    rule_reasons: dict[str, str],
    ranking: list[str],
) -> tuple[dict[str, Any], dict[str, str], float] | None:
    """The portfolio config with the highest predicted accuracy on this task, if it beats the rules' config.

    A portfolio config keeps its backbone when that backbone was measured here, else takes the first-ranked
    one; its transferred and frozen blocks are kept as fractions of the backbone's blocks; epochs and batch
    size stay the rules'.
    """
    baseline = _predict(model, task, rules_config)
    best = None
    for entry in model.portfolio:
        config = {
            k: v
            for k, v in entry["config"].items()
            if k in rules_config or (k == "head_width" and entry["config"].get("head") != "linear")
        }
        backbone = config.get("backbone") if config.get("backbone") in task.backbones else ranking[0]
        blocks = int(task.backbones[backbone]["num_blocks"])
        transfer = int(round(entry["transfer_fraction"] * blocks))
        config.update(
            backbone=backbone,
            transfer_blocks=transfer,
            freeze_blocks=min(transfer, int(round(entry["freeze_fraction"] * blocks))),
            epochs=rules_config["epochs"],
            batch_size=rules_config["batch_size"],
        )
        predicted = _predict(model, task, config)
        if best is None or predicted > best[0]:
            best = (predicted, config, entry)
    if best is None or best[0] < baseline + MIN_GAIN:
        return None
    predicted, config, entry = best
    origin = (
        f"learned recommender (from {entry['task']}, {entry[TARGET]:.3f} there; predicted {predicted:.3f} "
        f"here against the rules' {baseline:.3f}): of the {len(model.portfolio)} configs that trained best on the "
        "meta-dataset's tasks, this one has the highest predicted validation accuracy on this data"
    )
    reasons = {
        key: (rule_reasons.get(key, "") if config.get(key) == rules_config.get(key) else origin) for key in config
    }
    return config, reasons, predicted


def _clip_to_space(entry: dict[str, Any], space: SearchSpace, model: LearnedRecommender | None, task: TaskFit) -> None:
    """Move ``entry``'s config inside ``space``; each moved setting's reason says so."""
    clipped, changes = space.clip(entry["config"])
    if not changes:
        return
    entry["config"] = clipped
    for change in changes:
        key = change.split(":", 1)[0]
        moved = change.split(":", 1)[1].strip()
        said = entry["reasons"].get(key)
        entry["reasons"][key] = (
            f"{said}; clipped to the space {space.name!r}: {moved}"
            if said
            else (f"clipped to the space {space.name!r}: {moved}")
        )
    if entry["config"].get("backbone") in task.backbones:
        entry["predicted_val_accuracy"] = _plain(_predict(model, task, entry["config"]))


def recommend(
    task: TaskFit,
    rules: Rules,
    model: LearnedRecommender | None = None,
    data_settings: DataSettings | Mapping[str, Any] | None = None,
    space: SearchSpace | None = None,
) -> Recommendation:
    """Turn a measured task into recommended configs (see ``nbtl recommend --help``).

    ``data_settings`` (default: the task's own) are written into the recommendation, so ``nbtl train``
    trains on the same images, with the same augmentation, as the search they were measured for. With a
    ``space``, every config is moved inside it (:meth:`~nbtl.search.space.SearchSpace.clip`): what the space
    moved is added to that setting's reason, and the prediction is the moved config's."""
    started = time.perf_counter()
    backbones = list(task.backbones)
    ranking = rank_backbones(task.backbones, by=rules.rank_by)
    top = ranking[0]
    signals = {**task.row(top), "backbone_rank": 1.0}
    rule_config, rule_reasons = rules.apply(signals, top)
    rule_reasons["backbone"] = (
        f"ranked first of {len(backbones)} backbones by {rules.rank_by} ({signals.get(rules.rank_by, math.nan):.4g})"
    )
    rules_entry = {
        "source": "rules",
        "predicted_val_accuracy": _plain(_predict(model, task, rule_config)),
        "config": rule_config,
        "reasons": rule_reasons,
    }
    # The rules' config comes first: on the shipped meta-tasks, left out one at a time, it trained better than the
    # learned recommender's pick (benchmarks/leave_one_task_out.py); the pick is the second config to try.
    configs = [rules_entry]
    notes = []
    if model is not None:
        chosen = _choose(model, task, rule_config, rule_reasons, ranking)
        if chosen is not None:
            learned_config, learned_reasons, predicted = chosen
            configs.append(
                {
                    "source": "learned recommender",
                    "predicted_val_accuracy": _plain(predicted),
                    "config": learned_config,
                    "reasons": learned_reasons,
                }
            )
        else:
            notes.append("no config of the learned recommender's portfolio is predicted to beat the rules' config")
    if space is not None:
        space = space.resolved(int(task.dataset["n_images"]))  # batch_size: auto, as the search would set it
    for entry in configs:
        if space is not None:
            _clip_to_space(entry, space, model, task)
        TrialConfig.from_dict(entry["config"], where=f"recommended config ({entry['source']})")
        entry["config"] = {k: _plain(v) for k, v in without_unused(entry["config"]).items()}
    backbone_ranking = [
        {
            "backbone": name,
            **{
                k: _plain(task.backbones[name][k])
                for k in ("logme_best", "probe_best", "knn_best", "leep", "nce", "fit_peak_block", "num_blocks")
            },
        }
        for name in ranking
    ]
    if isinstance(data_settings, Mapping):
        data_settings = DataSettings.from_params(data_settings)
    settings = data_settings or task.settings
    data = {"spec": task.data, "name": task.dataset_name, **(settings.to_dict() if settings is not None else {})}
    return Recommendation(
        data=data,
        configs=configs,
        backbone_ranking=backbone_ranking,
        signals={k: v for k, v in signals.items() if k != "backbone_rank"},
        recommender=(model.info.get("source") if model is not None else None),
        seconds=task.seconds + time.perf_counter() - started,
        notes=notes,
        ranked_by=rules.rank_by,
        task=task,
    )


def load_recommended_configs(path: str | Path) -> list[dict[str, Any]]:
    """The configs in a file written by ``nbtl recommend`` (best first), or the one config of a plain
    config YAML (e.g. a search's ``best_config.yaml``). Each is validated as a :class:`TrialConfig`."""
    return [config.to_dict() for config in load_recommendation(path)[0]]


def load_recommendation(path: str | Path) -> tuple[list[TrialConfig], dict[str, Any]]:
    """The configs of :func:`load_recommended_configs`, parsed once here (``nbtl train`` passes them on as
    :class:`TrialConfig`), and the ``data`` mapping ``nbtl recommend`` wrote (``spec``, ``name`` and the
    :class:`DataSettings` fields; empty for a plain config file). Read the settings with
    :func:`recommended_settings`."""
    path = Path(path)
    try:
        document = load_yaml(path.read_text(), f"config file {path}")
    except OSError as error:
        raise HeuristicsError(f"config file {path}: cannot read it ({error.strerror}); check the path") from None
    except yaml.YAMLError as error:
        raise HeuristicsError(f"config file {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    data: dict[str, Any] = {}
    if isinstance(document, dict) and document.get("format") == RECOMMENDATION_FORMAT:
        entries = document.get("configs") or []
        configs = [entry.get("config") for entry in entries if isinstance(entry, dict)]
        data = dict(document.get("data") or {})
    elif isinstance(document, dict):
        configs = [document]
    else:
        configs = []
    if not configs or not all(isinstance(c, dict) for c in configs):
        raise HeuristicsError(f"config file {path}: expected a config mapping or the output of nbtl recommend")
    return [TrialConfig.from_dict(c, where=f"config file {path}") for c in configs], data


def recommended_settings(data: Mapping[str, Any], path: str | Path, base: DataSettings) -> DataSettings:
    """The data settings of a recommendation's ``data`` mapping (from :func:`load_recommendation`); a setting
    the file does not hold (a plain config, or a file from an older nbtl) keeps its value in ``base``."""
    return DataSettings.from_params(data, where=f"config file {path}: data", base=base)


def format_recommendation(recommendation: Recommendation) -> str:
    """The configs, one setting a line with the rule or measure that drove it, and the notes."""
    lines = []
    for number, entry in enumerate(recommendation.configs, start=1):
        predicted = entry.get("predicted_val_accuracy")
        guess = f", predicted validation accuracy {predicted:.3f}" if predicted is not None else ""
        lines.append(f"Config {number} ({entry['source']}{guess}):")
        for key, value in entry["config"].items():
            reason, clipped, moved = entry["reasons"].get(key, "").partition("; clipped to the space")
            if "): " in reason:  # "rule-id (signal=value, ...): because" -> "rule-id (signal=value, ...)"
                short = reason.split("): ", 1)[0] + ")"
            elif ": " in reason and " " not in reason.split(": ", 1)[0]:  # "rule-id: because" -> "rule-id"
                short = reason.split(": ", 1)[0]
            else:
                short = reason.split(" (", 1)[0]
            if clipped:
                short += clipped + moved if short else clipped.lstrip("; ") + moved
            lines.append(f"  {key + ':':<16} {str(value):<20} # {short}")
    lines.extend(f"Note: {note}" for note in recommendation.notes)
    return "\n".join(lines)
