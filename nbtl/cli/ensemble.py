"""``nbtl ensemble SEARCH --top K``: average the best trials' probabilities, score, log and register.

The parser; what the command does is :mod:`nbtl.cli.ensemble_run`, imported when it runs."""

from __future__ import annotations

from nbtl.cli.common import TRACKING_HELP, command
from nbtl.models import KEEP_WEIGHTS


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
    p.set_defaults(func=command("nbtl.cli.ensemble_run:run"))
