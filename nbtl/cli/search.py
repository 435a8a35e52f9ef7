"""``nbtl search``: run (or resume) a search over a YAML space and print its table and best config.

The parser; what the command does is :mod:`nbtl.cli.search_run`, imported when it runs."""

from __future__ import annotations

from nbtl.cli.common import (
    DATA_HELP,
    add_data_flags,
    add_ray_flags,
    add_tracking_flags,
    add_weights_flag,
    command,
)
from nbtl.models import KEEP_WEIGHTS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "search",
        help="run a non-binary transfer search (Ray Tune + Optuna, tracked in MLflow)",
        description="Run a search over a YAML space: Optuna proposes trials, Ray Tune runs them (embedded Ray, "
        "or a cluster with --address) and stops weak ones with ASHA; every search is an MLflow parent "
        "run and every trial a child run. Ends with a table of trials and the best config.",
        epilog="examples: nbtl search default --data digits --trials 8;  "
        "nbtl search --resume default   (continue an interrupted search)",
    )
    p.add_argument(
        "space",
        nargs="?",
        help="search space: a YAML file, or the name of a space shipped with nbtl (default, tiny, binary, meta)",
    )
    p.add_argument(
        "--resume",
        metavar="NAME",
        help="continue the interrupted search NAME (its folder under --storage-path) to its trial count; "
        "takes no SPACE or --data: both come from the search's saved state",
    )
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--trials", type=int, help="number of trials (default: the space's search.trials)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: the space's)")
    add_tracking_flags(p, "search name = MLflow experiment and results folder (default: the space's name)")
    add_ray_flags(
        p,
        "where Ray Tune keeps trial results and checkpoints (default: ./nbtl_results)",
        "CPUs per trial (default: the space's resources.cpu)",
        "GPUs per trial, fractions allowed (default: the space's resources.gpu)",
    )
    add_data_flags(p, "default: the space's", "seed of the split, the sampler and the trials (default: the space's)")
    p.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="stop starting trials and end running ones when this much wall time has passed since the "
        "search started (data loading and start points included), e.g. 900, 90s, 15m, 1.5h; "
        "without --trials, trials run until the budget ends (Ray Tune's time_budget_s)",
    )
    p.add_argument(
        "--no-recommend",
        action="store_true",
        help="do not measure the data's fit to start from nbtl recommend's configs (nor the learned prior, when the "
        "space enables it, that reads it); the probe and the conventional recipe still run first",
    )
    p.add_argument(
        "--warm-start",
        metavar="FILE",
        help="run these configs first: a YAML from nbtl recommend (all its configs, best first) or a plain "
        "config such as a search's best_config.yaml; each is moved to the nearest point of the space",
    )
    p.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep every trial's checkpoints when the search ends (default: delete them once the search "
        "finished; an interrupted search keeps what --resume needs)",
    )
    p.add_argument(
        "--register",
        metavar="NAME",
        help="register the best trial's model in the MLflow Model Registry as NAME (default: the search's name); "
        "it is logged on the search's parent run either way",
    )
    p.add_argument(
        "--no-register", action="store_true", help="log the best trial's model on the parent run, do not register it"
    )
    p.add_argument(
        "--keep-weights",
        type=int,
        metavar="K",
        help="the best K trials keep their best-epoch weights on their MLflow runs, for nbtl ensemble "
        f"(default: {KEEP_WEIGHTS}; 0 keeps none and logs no model)",
    )
    p.add_argument(
        "--cache-size",
        metavar="SIZE",
        help="the most the search's frozen-prefix store may take on disk, e.g. 20G or 500M; the entries used "
        "longest ago are removed to stay under it (default: no limit)",
    )
    p.add_argument(
        "--subsample",
        metavar="FRACTION",
        help="train and evaluate the trials on this share of the images (stratified by class; an official test set "
        "stays whole), e.g. 0.25; all: every image; auto (the default): every image unless the time budget affords "
        "no trial on all of them, then the largest share at which the cheapest start point takes half the time left",
    )
    add_weights_flag(p)
    p.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="keep the Optuna study in this database (e.g. sqlite:///optuna.db, postgresql://...), where "
        "optuna-dashboard and optuna.load_study open it (default: optuna.db in the search's results folder)",
    )
    p.set_defaults(func=command("nbtl.cli.search_run:run"))
