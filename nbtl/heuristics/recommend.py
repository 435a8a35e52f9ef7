"""``nbtl recommend``: measure a dataset's fit per backbone and block, apply the rules, refine with the
learned recommender, and write a config YAML that ``nbtl train`` and ``nbtl search --warm-start`` read.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from nbtl.config import TrialConfig
from nbtl.heuristics.learned import LearnedRecommender
from nbtl.heuristics.rules import Rules
from nbtl.heuristics.signals import HeuristicsError, backbone_signals, dataset_signals, rank_backbones

__all__ = ["Recommendation", "TaskFit", "candidate_values", "load_recommended_configs", "measure_task", "recommend"]

RECOMMENDATION_FORMAT = "nbtl-recommendation"
#: Float ranges of the space are tried at this many points by the learned refinement.
FLOAT_POINTS = 7
#: The learned recommender changes a rule's setting only when it predicts at least this gain.
MIN_GAIN = 0.002


@dataclass
class TaskFit:
    """A dataset's signals and the fit table and signals of every backbone."""

    data: str
    dataset_name: str
    meta: dict[str, Any]
    dataset: dict[str, float]
    backbones: dict[str, dict[str, float]]
    tables: Any                      # pandas.DataFrame of every backbone's fit table
    seconds: float

    def row(self, backbone: str) -> dict[str, float]:
        """Dataset and backbone signals together, the inputs the rules and the model read."""
        return {**self.dataset, **self.backbones[backbone]}


def measure_task(data: str, backbones: list[str], *, image_size: int, per_class: int | None = None,
                 classes: str | None = None, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 fit_curve: str = "logme", peak_tolerance: float = 0.0, use_cache: bool = True,
                 log: Callable[[str], None] | None = None) -> TaskFit:
    """Fit measures of every backbone on the training split of ``data``.

    The split is the one ``nbtl search`` makes with the same seed and fractions, so the measures
    never see the validation or test images the search (or a recommended run) is judged on.
    """
    import pandas as pd

    from nbtl.backbones import get_spec
    from nbtl.data import load_dataset, split_dataset
    from nbtl.fit import block_features, fit_table, meta_features

    for name in backbones:
        get_spec(name)
    started = time.perf_counter()
    dataset = load_dataset(data, image_size=image_size, per_class=per_class, seed=seed, classes=classes)
    train = split_dataset(dataset, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed).train
    meta = meta_features(train)
    tables, signals = [], {}
    for name in backbones:
        features = block_features(train, name, use_cache=use_cache)
        table = fit_table(features, random_state=seed)
        tables.append(table)
        signals[name] = backbone_signals(table, fit_curve=fit_curve, tolerance=peak_tolerance)
        if log:
            log(f"{name}: features {'from cache' if features.from_cache else 'extracted'}, fit peak at block "
                f"{int(signals[name]['fit_peak_block'])} of {int(signals[name]['num_blocks'])}, "
                f"best LogME {signals[name]['logme_best']:.4g}, best probe {signals[name]['probe_best']:.3f}")
    return TaskFit(data=data, dataset_name=dataset.name, meta=meta, dataset=dataset_signals(meta), backbones=signals,
                   tables=pd.concat(tables, ignore_index=True), seconds=time.perf_counter() - started)


def candidate_values(space, backbone: str) -> dict[str, list[Any]]:
    """Values of each searched parameter of ``space`` that the learned refinement tries."""
    from nbtl.backbones import get_spec

    num_blocks = get_spec(backbone).num_blocks
    values: dict[str, list[Any]] = {}
    for p in space.parameters:
        if p.fixed or p.name in ("backbone", "pretrained", "epochs", "batch_size", "seed"):
            continue
        if p.choices is not None:
            values[p.name] = list(p.choices)
        elif p.name in ("transfer_blocks", "freeze_blocks"):
            values[p.name] = list(range(0, num_blocks + 1))
        else:
            low, high = float(p.low), float(p.high)
            grid = np.geomspace(low, high, FLOAT_POINTS) if p.log else np.linspace(low, high, FLOAT_POINTS)
            values[p.name] = [float(f"{v:.4g}") for v in grid]
    return values


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

    def to_yaml(self) -> str:
        header = ("# Written by nbtl recommend. Run it:  nbtl train THIS_FILE --data DATA   or start a search from it:\n"
                  "#   nbtl search search_spaces/default.yaml --data DATA --warm-start THIS_FILE\n")
        document = {"format": RECOMMENDATION_FORMAT, "version": 1, "data": self.data,
                    "configs": self.configs, "backbone_ranking": self.backbone_ranking,
                    "signals": {k: _plain(v) for k, v in self.signals.items()}, "recommender": self.recommender,
                    "seconds": round(self.seconds, 1)}
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


def _refine(model: LearnedRecommender, task: TaskFit, space, start: dict[str, Any], backbones: list[str],
            reasons: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Coordinate ascent from the rules' config over the space's values, by predicted accuracy."""
    config, reasons = dict(start), dict(reasons)
    best = _predict(model, task, config)
    for _ in range(3):
        improved = False
        options = {"backbone": backbones, **candidate_values(space, config["backbone"])}
        for key, values in options.items():
            scored = []
            for value in values:
                trial = {**config, key: value}
                if key == "backbone":
                    blocks = int(task.backbones[value]["num_blocks"])
                    trial["transfer_blocks"] = min(int(trial["transfer_blocks"]), blocks)
                if int(trial.get("freeze_blocks") or 0) > int(trial["transfer_blocks"]):
                    continue
                scored.append((_predict(model, task, trial), value, trial))
            if not scored:
                continue
            predicted, value, trial = max(scored, key=lambda item: item[0])
            if predicted > best + MIN_GAIN and value != config.get(key):
                reasons[key] = (f"learned recommender: {value!r} instead of {config.get(key)!r} raises the predicted "
                                f"validation accuracy from {best:.3f} to {predicted:.3f}")
                config, best, improved = trial, predicted, True
        if not improved:
            break
    return config, reasons


def recommend(task: TaskFit, rules: Rules, model: LearnedRecommender | None = None, space=None,
              data_settings: dict[str, Any] | None = None) -> Recommendation:
    """Turn a measured task into recommended configs (see ``nbtl recommend --help``)."""
    started = time.perf_counter()
    backbones = list(task.backbones)
    ranking = rank_backbones(task.backbones, by=rules.rank_by)
    top = ranking[0]
    signals = {**task.row(top), "backbone_rank": 1.0}
    rule_config, rule_reasons = rules.apply(signals, top)
    rule_reasons["backbone"] = (f"ranked first of {len(backbones)} backbones by {rules.rank_by} "
                                f"({signals.get(rules.rank_by, math.nan):.4g})")
    rules_entry = {"source": "rules", "predicted_val_accuracy": _plain(_predict(model, task, rule_config)),
                   "config": rule_config, "reasons": rule_reasons}
    configs = []
    notes = []
    if model is not None and space is not None:
        learned_config, learned_reasons = _refine(model, task, space, rule_config, backbones, rule_reasons)
        if learned_config != rule_config:
            configs.append({"source": "rules + learned recommender",
                            "predicted_val_accuracy": _plain(_predict(model, task, learned_config)),
                            "config": learned_config, "reasons": learned_reasons})
        else:
            notes.append("the learned recommender found no setting that raises the predicted accuracy of the rules' config")
    configs.append(rules_entry)
    for entry in configs:
        TrialConfig.from_dict(entry["config"], where=f"recommended config ({entry['source']})")
        entry["config"] = {k: _plain(v) for k, v in entry["config"].items()}
    backbone_ranking = [{"backbone": name, **{k: _plain(task.backbones[name][k]) for k in
                        ("logme_best", "probe_best", "knn_best", "leep", "nce", "fit_peak_block", "num_blocks")}}
                        for name in ranking]
    data = {"spec": task.data, "name": task.dataset_name, **(data_settings or {})}
    return Recommendation(data=data, configs=configs, backbone_ranking=backbone_ranking,
                          signals={k: v for k, v in signals.items() if k != "backbone_rank"},
                          recommender=(model.info.get("source") if model is not None else None),
                          seconds=task.seconds + time.perf_counter() - started, notes=notes)


def load_recommended_configs(path: str | Path) -> list[dict[str, Any]]:
    """The configs in a file written by ``nbtl recommend`` (best first), or the one config of a plain
    config YAML (e.g. a search's ``best_config.yaml``). Each is validated as a :class:`TrialConfig`."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise HeuristicsError(f"config file {path}: cannot read it ({error.strerror}); check the path") from None
    except yaml.YAMLError as error:
        raise HeuristicsError(f"config file {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if isinstance(document, dict) and document.get("format") == RECOMMENDATION_FORMAT:
        entries = document.get("configs") or []
        configs = [entry.get("config") for entry in entries if isinstance(entry, dict)]
    elif isinstance(document, dict):
        configs = [document]
    else:
        configs = []
    if not configs or not all(isinstance(c, dict) for c in configs):
        raise HeuristicsError(f"config file {path}: expected a config mapping or the output of nbtl recommend")
    return [TrialConfig.from_dict(c, where=f"config file {path}").to_dict() for c in configs]


def print_recommendation(recommendation: Recommendation, out=sys.stdout) -> None:
    for number, entry in enumerate(recommendation.configs, start=1):
        predicted = entry.get("predicted_val_accuracy")
        guess = f", predicted validation accuracy {predicted:.3f}" if predicted is not None else ""
        print(f"Config {number} ({entry['source']}{guess}):", file=out)
        for key, value in entry["config"].items():
            reason = entry["reasons"].get(key, "")
            short = reason.split("): ", 1)[0] + ")" if "): " in reason else reason
            print(f"  {key + ':':<16} {str(value):<20} # {short}", file=out)
    for note in recommendation.notes:
        print(f"Note: {note}", file=out)
