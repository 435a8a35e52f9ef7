"""``nbtl fit``: how well frozen backbones' features fit a dataset, block by block.

The parser; what the command does is :mod:`nbtl.cli.fit_run`, imported when it runs."""

from __future__ import annotations

from nbtl.cli.common import DATA_HELP, add_data_flags, add_tracking_flags, add_weights_flag, command


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="measure how well frozen backbones' features fit a dataset, block by block (tracked in MLflow)",
        description="For every backbone, extract frozen features at the end of every block (cached on disk) and "
        "compute LogME, H-score, kNN and linear-probe accuracy, LEEP and NCE. Prints the table, each "
        "backbone's best block by LogME and the dataset's meta-features, saves the table as CSV and "
        "logs it as one MLflow run.",
        epilog="example: nbtl fit digits --backbones efficientnet_lite0,efficientnet_lite1 --out fit.csv",
    )
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--backbones", required=True, help="comma-separated backbone names (see nbtl backbones)")
    add_weights_flag(p)
    add_data_flags(p, "default: 64", "seed of the per-class choice and the folds (default: 0)")
    p.add_argument("--out", help="CSV file for the table (default: nbtl_fit_<dataset name>.csv here)")
    add_tracking_flags(p, "MLflow experiment (default: fit-<dataset name>)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.set_defaults(func=command("nbtl.cli.fit_run:run"))
