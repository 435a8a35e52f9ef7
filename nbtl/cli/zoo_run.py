"""What ``nbtl zoo`` does (its parser is :mod:`nbtl.cli.zoo`): run the study, print its cells and the heads'
comparison, save the table as CSV."""

from __future__ import annotations

import argparse

import pandas as pd

from nbtl.cli.common import DEFAULT_SPACE, check_name, positive, progress
from nbtl.cli.run_common import settings_overrides, time_budget
from nbtl.config import TrialConfig
from nbtl.data.settings import DataSettings
from nbtl.errors import ConfigError
from nbtl.search import load_space
from nbtl.tracking import name_slug
from nbtl.zoo.report import display_table
from nbtl.zoo.study import ZooOptions, run_zoo


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{flag} needs at least one name, e.g. {flag} linear,spinal")
    return names


def recipe_from(args: argparse.Namespace, space) -> dict:
    """The study's one recipe: frozen, the head's training (HeadRecipe fields); finetune, the space's fixed
    TrialConfig values (but backbone, head and seed, which are the cell's), then the flags."""
    if args.mode == "frozen":
        flags = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "width": args.head_width}
        return {k: v for k, v in flags.items() if v is not None}
    recipe = {
        p.name: p.value
        for p in space.parameters
        if p.fixed and p.name in TrialConfig.keys() and p.name not in ("backbone", "head", "seed")
    }
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "head_width": args.head_width}
    recipe.update({k: v for k, v in flags.items() if v is not None})
    if args.lr is not None:
        recipe.update(lr=args.lr, head_lr=args.lr)
    return recipe


def run(args: argparse.Namespace) -> int:
    for flag in ("epochs", "batch_size", "head_width", "max_concurrent"):
        positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.lr is not None and not args.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    check_name(args.name)
    data = list(args.data) + list(args.more_data or [])
    if not data:
        raise ConfigError(
            "nbtl zoo needs a dataset: nbtl zoo DATA --backbones A,B (several: DATA DATA, or --data repeated)"
        )
    budget = time_budget(args.time_budget)
    space = load_space(args.space or DEFAULT_SPACE)
    settings = DataSettings.from_space(space, settings_overrides(args))
    options = ZooOptions(
        data=data,
        backbones=_names(args.backbones, "--backbones"),
        heads=_names(args.heads, "--heads"),
        settings=settings,
        mode=args.mode,
        folds=args.folds,
        seeds=args.seeds,
        recipe=recipe_from(args, space),
        name=args.name,
        time_budget=budget,
        address=args.address,
        tracking_uri=args.tracking_uri,
        storage_path=args.storage_path,
        max_concurrent=args.max_concurrent,
        cpu=args.cpu,
        gpu=args.gpu,
        use_cache=not args.no_cache,
    )
    result = run_zoo(options, print_fn=progress)

    with pd.option_context("display.max_columns", None, "display.width", 250, "display.float_format", "{:.4g}".format):
        print(f"\nCells (mean ± sd over {options.folds} folds x {options.seeds} seed(s)):")
        print(
            display_table(result.summary).to_string(index=False) if not result.summary.empty else "(no fold finished)"
        )
        if not result.comparison.empty:
            print("\nHeads against the baseline (accuracy difference per fold, 95% t-interval over folds x seeds):")
            print(result.comparison.drop(columns=["metric"]).to_string(index=False))
    failed = result.folds[result.folds["status"] != "FINISHED"]
    if not failed.empty:
        print(f"\n{len(failed)} trial(s) did not finish: {failed['status'].value_counts().to_dict()}")
    out = args.out or f"nbtl_zoo_{name_slug(result.name)}.csv"
    try:
        result.summary.to_csv(out, index=False)
    except OSError as error:
        raise ConfigError(f"cannot write --out {out}: {error.strerror or error}") from error
    print(f"\nTable: {out}  ({result.wall_time_s:.0f}s)")
    print(f"MLflow: {result.tracking_uri} experiment {result.experiment_id}, parent run {result.parent_run_id}")
    return 0 if (result.folds["status"] == "FINISHED").any() else 1
