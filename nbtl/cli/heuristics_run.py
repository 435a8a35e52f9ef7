"""What ``nbtl recommend``, ``nbtl heuristics learn`` and ``nbtl train`` do (their parsers are
:mod:`nbtl.cli.heuristics`): call :mod:`nbtl.api` and :mod:`nbtl.heuristics`, print what they found, write the files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from nbtl.api import recommend as recommend_configs
from nbtl.api import train as train_config
from nbtl.backbones import parse_weights
from nbtl.cli.common import DATA_FLAGS, check_name, log, positive, progress
from nbtl.cli.run_common import data_overrides
from nbtl.errors import ConfigError
from nbtl.heuristics.meta import learn, meta_rows, read_meta_csv
from nbtl.heuristics.recommend import format_recommendation
from nbtl.search import load_space
from nbtl.tracking import check_tracking_uri, finished_trials, name_slug


def _search_command(args: argparse.Namespace, out: Path) -> str:
    """The ``nbtl search`` command that starts from a recommendation, with the same space and data flags."""
    flags = "".join(
        f" {flag} {getattr(args, key)}" for key, flag in DATA_FLAGS.items() if getattr(args, key) is not None
    )
    return f"nbtl search {args.space} --data {args.data}{flags} --warm-start {out}"


def recommend(args: argparse.Namespace) -> int:
    backbones = None
    if args.backbones is not None:
        backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
        if not backbones or len(set(backbones)) != len(backbones):
            raise ConfigError(f"--backbones must name distinct backbones, got {args.backbones!r}; see nbtl backbones")
    space = load_space(args.space)
    result = recommend_configs(
        args.data,
        space=space,
        backbones=backbones,
        **data_overrides(args),
        weights=parse_weights(args.weights, backbones or space.backbones()),
        rules=args.rules,
        recommender=args.recommender,
        learned=not args.no_learned,
        use_cache=not args.no_cache,
    )
    task = result.task
    print(
        f"Dataset {task.dataset_name}: {int(task.dataset['n_images'])} training images, "
        f"{int(task.dataset['n_classes'])} classes, {task.dataset['images_per_class']:.0f} per class, "
        f"{'grayscale' if task.dataset['grayscale'] else 'colour'}, source side {int(task.dataset['original_side'])}px"
    )
    print(
        "Backbones by "
        + result.ranked_by
        + ": "
        + ", ".join(
            f"{r['backbone']} ({_number(r['logme_best'], '.4g')}, probe {_number(r['probe_best'], '.3f')})"
            for r in result.backbone_ranking
        )
    )
    print(format_recommendation(result))
    out = Path(args.out or f"nbtl_recommended_{name_slug(task.dataset_name)}.yaml")
    try:
        out.write_text(result.to_yaml())
        if args.fit_out:
            task.tables.to_csv(args.fit_out, index=False)
    except OSError as error:
        raise ConfigError(f"cannot write {error.filename}: {error.strerror}") from None
    print(
        f"\nWrote {out} in {result.seconds:.1f}s. Run it: nbtl train {out}   or start a search from it: "
        f"{_search_command(args, out)}"
    )
    return 0


def learn_recommender(args: argparse.Namespace) -> int:
    rows, sources = [], []
    for path in args.meta:
        rows.extend(read_meta_csv(path))
        sources.append(str(path))
    if not args.no_store:
        uri = check_tracking_uri(args.tracking_uri)
        trials = finished_trials(uri)
        log.info("%s: %d finished trials", uri, len(trials))
        rows.extend(meta_rows(trials, log=log.info))
        sources.append(uri)
    if not sources:
        raise ConfigError("nothing to learn from: drop --no-store or pass --meta CSV")
    model = learn(rows, " + ".join(sources))
    out = Path(args.out)
    meta_out = Path(args.meta_out) if args.meta_out else out.with_suffix(".csv")
    model.save(out)
    try:
        pd.DataFrame(rows).to_csv(meta_out, index=False)
    except OSError as error:
        raise ConfigError(f"cannot write --meta-out {meta_out}: {error.strerror}") from None
    info = model.info
    print(
        f"Learned from {info['rows']} trials on {len(info['tasks_seen'])} tasks: alpha={model.alpha:g} "
        f"({info['selection']}, {info['structure']}), training MAE {info['train_mean_absolute_error']:.4f}"
        + (f", leave-one-task-out MAE {info['cv_mean_absolute_error']:.4f}" if "cv_mean_absolute_error" in info else "")
    )
    print(f"Recommender: {out}\nMeta-dataset: {meta_out}\nUse it: nbtl recommend DATA --recommender {out}")
    return 0


def _number(value, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``n/a`` when a measure could not be computed (too few images)."""
    return "n/a" if value is None or value != value else format(value, spec)


def train(args: argparse.Namespace) -> int:
    for flag in ("epochs", "config_index"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    overrides = data_overrides(args)
    check_name(args.name)
    outcome = train_config(
        args.config,
        args.data,
        config_index=args.config_index,
        epochs=args.epochs,
        floor=not args.no_floor,
        **overrides,
        tracking_uri=args.tracking_uri,
        name=args.name,
        say=progress,
    )
    final, run = outcome.metrics, outcome.run
    if len(outcome.compared) > 1:
        scores = ", ".join(f"{name} {metrics['best_val_accuracy']:.4f}" for name, metrics in outcome.compared)
        print(f"kept {outcome.run_name}: the better validation accuracy of {len(outcome.compared)} runs ({scores})")
    print(
        f"best_val_accuracy {final['best_val_accuracy']:.4f} (epoch {int(final['best_epoch'])}), "
        f"test_accuracy {final['test_accuracy']:.4f}, test_macro_f1 {final['test_macro_f1']:.4f}"
    )
    print(f"MLflow: {run.tracking_uri} experiment {run.experiment_id}, run {run.run_id}")
    return 0
