"""``nbtl recommend``, ``nbtl heuristics learn`` and ``nbtl train``: the command-line side of
:mod:`nbtl.heuristics` and of training one config.

All three read one :class:`~nbtl.data.settings.DataSettings`: ``recommend`` takes it from a search space
(``--space``, default ``default``) and measures the fit on the training split that search makes, then
writes it into its YAML; ``train`` reads it back from that YAML (flags override); ``heuristics learn``
reads each search's from its MLflow parent run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nbtl.cli.common import (
    DATA_FLAGS,
    DATA_HELP,
    DEFAULT_SPACE,
    TRACKING_HELP,
    add_data_flags,
    add_tracking_flags,
    add_weights_flag,
    check_name,
    check_tracking_uri,
    data_overrides,
    load_space,
    log,
    parse_weights,
    positive,
    progress,
    slug,
)
from nbtl.errors import ConfigError


def add_parsers(subparsers) -> None:
    _add_recommend(subparsers)
    _add_heuristics(subparsers)
    _add_train(subparsers)


def _add_recommend(subparsers) -> None:
    p = subparsers.add_parser(
        "recommend",
        help="recommend transfer settings from fit measures, without a search",
        description="Measure how well each backbone's frozen features fit the training split, block by block "
        "(LogME, H-score, kNN, linear probe, LEEP, NCE; cached), apply the rules in heuristics/rules.yaml, "
        "and let the learned recommender (heuristics/recommender.json) propose the config of its portfolio "
        "that it predicts best here, if it beats the rules' config. Prints every "
        "setting with the measure or rule that drove it and the predicted validation accuracy, and writes a "
        "YAML that nbtl train and nbtl search --warm-start read. The data settings (image size, split, "
        "seed, augmentation) are the search space's, so the training split is the one that search makes; "
        "they are written into the YAML for nbtl train.",
        epilog="example: nbtl recommend digits --image-size 32 --out recommended.yaml && nbtl train recommended.yaml",
    )
    p.add_argument("data", help=DATA_HELP)
    p.add_argument(
        "--backbones",
        help="comma-separated backbones to rank (default: the space's backbones); a backbone named here is kept "
        "even where the space leaves it out",
    )
    p.add_argument(
        "--space",
        default=DEFAULT_SPACE,
        help="search space whose backbones to rank, whose ranges and choices every recommended config is clipped "
        "to (each moved setting says so), and whose data settings (image size, split fractions, seed, "
        "augmentation) to use: a YAML file or a shipped space's name (default: %(default)s)",
    )
    add_data_flags(p, "default: the space's", "seed of the per-class choice and the split (default: the space's)")
    add_weights_flag(p)
    p.add_argument("--rules", help="rules YAML (default: heuristics/rules.yaml)")
    p.add_argument("--recommender", help="learned recommender JSON (default: heuristics/recommender.json when present)")
    p.add_argument("--no-learned", action="store_true", help="rules only: do not consult the learned recommender")
    p.add_argument("--out", help="YAML to write (default: nbtl_recommended_<dataset>.yaml here)")
    p.add_argument("--fit-out", help="also save the fit table of every backbone and block as CSV")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.set_defaults(func=recommend)


def _add_heuristics(subparsers) -> None:
    h = subparsers.add_parser(
        "heuristics",
        help="build the learned recommender from finished trials",
        description="Heuristics maintenance commands.",
    )
    hs = h.add_subparsers(dest="heuristics_command", required=True)
    learn = hs.add_parser(
        "learn",
        help="fit the learned recommender on every finished trial in an MLflow store",
        description="Read every finished trial (all epochs run) of every search in the MLflow store, measure each "
        "searched dataset's fit on the search's own training split (its data settings are read from its "
        "parent run; the data must be readable here; features are cached), write the meta-dataset (one "
        "row per trial) as CSV and fit the recommender on it, saved as JSON.",
        epilog="example: nbtl heuristics learn --tracking-uri sqlite:///mlflow.db --out my_recommender.json",
    )
    learn.add_argument("--tracking-uri", help=f"MLflow store to read ({TRACKING_HELP.split('(', 1)[1]}")
    learn.add_argument(
        "--meta",
        action="append",
        default=[],
        help="also learn from this meta-dataset CSV (e.g. heuristics/meta_dataset.csv); repeatable",
    )
    learn.add_argument("--no-store", action="store_true", help="learn from the --meta CSVs only, read no MLflow store")
    learn.add_argument(
        "--out", default="nbtl_recommender.json", help="recommender JSON to write (default: %(default)s)"
    )
    learn.add_argument("--meta-out", help="meta-dataset CSV to write (default: next to --out, .csv)")
    learn.set_defaults(func=learn_recommender)


def _add_train(subparsers) -> None:
    t = subparsers.add_parser(
        "train",
        help="train one config (e.g. from nbtl recommend) and track it in MLflow",
        description="Train a single config: a YAML written by nbtl recommend (its first config, or --config-index) "
        "or a plain config mapping such as a search's best_config.yaml. Same split, augmentation and "
        "metrics as a search trial: the data settings are the ones nbtl recommend wrote into the file "
        f"(else the {DEFAULT_SPACE} space's), flags override them; logged as one MLflow run.",
        epilog="example: nbtl train recommended.yaml --data digits",
    )
    t.add_argument("config", help="config YAML")
    t.add_argument("--data", help="dataset (default: the one nbtl recommend wrote in the file)")
    add_data_flags(t, "default: the file's", "seed of the per-class choice and the split (default: the file's)")
    t.add_argument(
        "--config-index", type=int, default=1, help="which config of a recommendation file (default: 1, the first)"
    )
    t.add_argument("--epochs", type=int, help="override the config's epochs")
    add_tracking_flags(t, "MLflow experiment (default: train-<dataset name>)")
    t.add_argument(
        "--no-floor",
        action="store_true",
        help="do not also train the linear probe (every block frozen, a linear head: seconds) as a floor; "
        "by default both are trained and the one with the better validation accuracy is kept",
    )
    t.set_defaults(func=train)


def _search_command(args: argparse.Namespace, out: Path) -> str:
    """The ``nbtl search`` command that starts from a recommendation, with the same space and data flags."""
    flags = "".join(
        f" {flag} {getattr(args, key)}" for key, flag in DATA_FLAGS.items() if getattr(args, key) is not None
    )
    return f"nbtl search {args.space} --data {args.data}{flags} --warm-start {out}"


def recommend(args: argparse.Namespace) -> int:
    from nbtl.api import recommend as recommend_configs
    from nbtl.heuristics.recommend import format_recommendation

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
    out = Path(args.out or f"nbtl_recommended_{slug(task.dataset_name)}.yaml")
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
    import pandas as pd

    from nbtl.heuristics.meta import learn, meta_rows, read_meta_csv
    from nbtl.tracking import finished_trials

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
    from nbtl.api import train as train_config

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
