"""``nbtl zoo``: compare backbones and heads by cross-validation, the way the papers do, in one command.

The parser; what the command does is :mod:`nbtl.cli.zoo_run`, imported when it runs."""

from __future__ import annotations

from nbtl.cli.common import DATA_HELP, DEFAULT_SPACE, add_data_flags, add_ray_flags, add_tracking_flags, command


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "zoo",
        help="compare backbones x heads by stratified k-fold cross-validation (Ray Tune, tracked in MLflow)",
        description="A zoo study: every dataset x backbone x head x fold x seed is a Ray Tune trial and an MLflow "
        "child run of the study's parent run. --mode frozen (Puls et al.) trains a new head on the frozen "
        "backbone's last-block features (nbtl fit's cache); --mode finetune (Albardi et al.) fine-tunes the "
        "whole network with one recipe (the conventional one, the space's fixed values and the flags) and the "
        "space's augmentation for every backbone. Prints mean +- sd per cell of accuracy and macro / weighted "
        "precision, recall and F1, and every head against the linear one (mean difference with its 95 % "
        "t-interval, wins / losses); saves the table as CSV and logs tables and plots on the parent run.",
        epilog="examples: nbtl zoo digits --backbones efficientnet_lite0,efficientnet_lite1 --heads linear,spinal;  "
        "nbtl zoo digits fashion-mnist --backbones efficientnet_lite0,efficientnet_lite1 --mode finetune "
        "--folds 3 --time-budget 30m   (several datasets: give several DATA, or --data repeated)",
    )
    p.add_argument("data", nargs="*", metavar="DATA", help=DATA_HELP + "; several for a study across datasets")
    p.add_argument("--data", action="append", dest="more_data", metavar="DATA", help="one more dataset (repeatable)")
    p.add_argument("--backbones", required=True, help="comma-separated backbone names (see nbtl backbones)")
    p.add_argument(
        "--heads", default="linear,spinal", help="comma-separated heads: linear, mlp, spinal (default: %(default)s)"
    )
    p.add_argument("--mode", choices=("frozen", "finetune"), default="frozen", help="default: %(default)s")
    p.add_argument("--folds", type=int, default=5, help="stratified folds (default: %(default)s)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="repetitions of the cross-validation, each with its own folds and training seed (default: %(default)s)",
    )
    p.add_argument(
        "--space",
        help=f"search space whose data settings (image size, validation share, augmentation) and fixed values "
        f"(epochs, batch size, optimizer...) the study uses (default: {DEFAULT_SPACE})",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="finetune: epochs per fold (default: the space's); frozen: passes over the fold's features (default: 100)",
    )
    p.add_argument(
        "--lr",
        type=float,
        help="finetune: lr of blocks and head (default: the conventional 0.03); frozen: Adam's lr (default: 1e-3)",
    )
    p.add_argument("--batch-size", type=int, help="mini-batch size (default: the space's; frozen: 64)")
    p.add_argument(
        "--head-width", type=int, help="hidden width of the mlp and spinal heads (default: the space's; frozen: 128)"
    )
    add_data_flags(
        p, "default: the space's", "seed of the per-class choice, the folds and the first training seed (default: 0)"
    )
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="end the study when this much wall time has passed (e.g. 900, 90s, 15m, 1.5h): folds not started "
        "by then are left out of the table (Ray Tune's time_budget_s)",
    )
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: as many as the CPUs allow)")
    add_ray_flags(
        p,
        "where Ray Tune keeps the trials' results (default: a temporary folder)",
        "CPUs per trial (default: %(default)s)",
        "GPUs per trial, fractions allowed (default: %(default)s)",
        cpu_default=1.0,
        gpu_default=0.0,
    )
    add_tracking_flags(p, "MLflow experiment (default: zoo-<dataset names>)")
    p.add_argument("--out", help="CSV file for the table (default: nbtl_zoo_<name>.csv here)")
    p.add_argument("--no-cache", action="store_true", help="frozen: neither read nor write nbtl fit's feature cache")
    p.set_defaults(func=command("nbtl.cli.zoo_run:run"))
