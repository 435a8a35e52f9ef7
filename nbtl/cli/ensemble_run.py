"""What ``nbtl ensemble`` does (its parser is :mod:`nbtl.cli.ensemble`): ensemble a search's best trials, print
their scores and the ensemble's model."""

from __future__ import annotations

import argparse

import pandas as pd

from nbtl.cli.common import check_name, progress
from nbtl.errors import ConfigError
from nbtl.models.ensemble import ensemble_search


def run(args: argparse.Namespace) -> int:
    check_name(args.search, "SEARCH")
    if args.register is not None and args.no_register:
        raise ConfigError("--register and --no-register contradict each other: give one of them")
    register = None if args.no_register else (args.register or f"{args.search}-ensemble")
    result = ensemble_search(args.tracking_uri, args.search, args.top, run_id=args.run, register=register, say=progress)
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.4f}".format):
        print(result.table.drop(columns="run_id").to_string(index=False))
    logged = result.logged
    uri = logged.uri
    print(
        f"\nEnsemble of {len(result.members)}: test accuracy {result.ensemble['accuracy']:.4f}, best single trial "
        f"{result.best_single['accuracy']:.4f} ({result.gain * 100:+.1f} points); MLflow run {result.run_id}"
    )
    print(f"Model: {uri}  (classify with: nbtl predict {uri} IMAGES)")
    return 0
