"""``nbtl ensemble SEARCH --top K``: average the best trials' probabilities, score, log and register."""

from __future__ import annotations

import argparse

from nbtl.cli.common import TRACKING_HELP, check_name, progress
from nbtl.errors import ConfigError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ensemble",
        help="ensemble a finished search's best trials (probabilities averaged), scored on its test split",
        description="Average the class probabilities of the K best trials of a finished search (their best-epoch "
        "weights, kept on their MLflow runs by nbtl search --keep-weights), score the ensemble against the best "
        "single trial on the search's test split, and log it as an MLflow pyfunc model on a run of its own "
        "(a child of the search's parent run), registered as SEARCH-ensemble unless --no-register.",
        epilog="example: nbtl ensemble default --top 3;  then: nbtl predict models:/default-ensemble/1 IMAGES",
    )
    p.add_argument("search", metavar="SEARCH", help="the search's name (its --name, or its space's name)")
    from nbtl.models import KEEP_WEIGHTS

    p.add_argument(
        "--top",
        type=int,
        default=KEEP_WEIGHTS,
        help=f"how many of the best trials to average (default {KEEP_WEIGHTS}, as many as a search keeps)",
    )
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    p.add_argument("--run", metavar="RUN_ID", help="the search's parent run (default: its newest finished one)")
    p.add_argument("--register", metavar="NAME", help="registered model name (default: SEARCH-ensemble)")
    p.add_argument("--no-register", action="store_true", help="log the ensemble's model, do not register it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from nbtl.models.ensemble import ensemble_search

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
