"""The ``nbtl`` command line. The one module that talks to the terminal.

User errors (:class:`nbtl.errors.NbtlError`) end in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from nbtl import __version__

EXIT_USER_ERROR = 2


def _add_search(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="run a non-binary transfer search (Ray Tune + Optuna, tracked in MLflow)",
        description="Run a search over a YAML space: Optuna proposes trials, Ray Tune runs them (embedded Ray, "
                    "or a cluster with --address) and stops weak ones with ASHA; every search is an MLflow parent "
                    "run and every trial a child run. Ends with a table of trials and the best config.",
        epilog="examples: nbtl search search_spaces/default.yaml --data digits --trials 8;  "
               "nbtl search --resume default   (continue an interrupted search)")
    p.add_argument("space", nargs="?", help="search space YAML (e.g. search_spaces/default.yaml)")
    p.add_argument("--resume", metavar="NAME",
                   help="continue the interrupted search NAME (its folder under --storage-path) to its trial count; "
                        "takes no SPACE or --data: both come from the search's saved state")
    p.add_argument("--data",
                   help="dataset: 'digits', 'fashion-mnist' (Debian's IDX files, or fashion-mnist:DIR), 'photo-patches', 'emoji', 'icons', an ImageFolder "
                        "directory, or a CSV of path,label")
    p.add_argument("--trials", type=int, help="number of trials (default: the space's search.trials)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once (default: the space's)")
    p.add_argument("--name", help="search name = MLflow experiment (default: the space's name)")
    p.add_argument("--address", help="join a running Ray cluster, e.g. 127.0.0.1:6379 or 'auto' (default: embedded Ray)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--storage-path", help="where Ray Tune keeps trial results and checkpoints (default: ./nbtl_results)")
    p.add_argument("--image-size", type=int, help="resize images to this square size once (default: the space's)")
    p.add_argument("--per-class", type=int, help="use at most this many images per class")
    p.add_argument("--classes", help="keep only these classes, by name or 0-based index, e.g. 0,2,4")
    p.add_argument("--seed", type=int, help="seed of the split, the sampler and the trials")
    p.add_argument("--cpu", type=float, help="CPUs per trial (default: the space's resources.cpu)")
    p.add_argument("--gpu", type=float, help="GPUs per trial, fractions allowed (default: the space's resources.gpu)")
    p.add_argument("--time-budget", metavar="DURATION",
                   help="stop starting trials and end running ones when this much wall time has passed since the "
                        "search started (data loading and start points included), e.g. 900, 90s, 15m, 1.5h; "
                        "without --trials, trials run until the budget ends (Ray Tune's time_budget_s)")
    p.add_argument("--no-recommend", action="store_true",
                   help="do not measure the data's fit to start from nbtl recommend's configs (and the learned prior "
                        "that reads it); the probe and the conventional recipe still run first")
    p.add_argument("--warm-start", metavar="FILE",
                   help="run these configs first: a YAML from nbtl recommend (all its configs, best first) or a plain "
                        "config such as a search's best_config.yaml; each is moved to the nearest point of the space")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbtl", description="Hyperparameter search for non-binary transfer learning "
                                     "of image classifiers.")
    parser.add_argument("--version", action="version", version=f"nbtl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_search(subparsers)
    p = subparsers.add_parser("backbones", help="list the registered backbones",
                              description="List registered backbones with their blocks, input size and weights.")
    p.set_defaults()
    _add_fit(subparsers)
    from nbtl import cli_heuristics

    cli_heuristics.add_parsers(subparsers)
    return parser


def _add_fit(subparsers) -> None:
    p = subparsers.add_parser(
        "fit", help="measure how well frozen backbones' features fit a dataset, block by block (tracked in MLflow)",
        description="For every backbone, extract frozen features at the end of every block (cached on disk) and "
                    "compute LogME, H-score, kNN and linear-probe accuracy, LEEP and NCE. Prints the table, each "
                    "backbone's best block by LogME and the dataset's meta-features, saves the table as CSV and "
                    "logs it as one MLflow run.",
        epilog="example: nbtl fit digits --backbones efficientnet_lite0,efficientnet_lite1 --out fit.csv")
    p.add_argument("data", help="dataset: 'digits', 'fashion-mnist' (or fashion-mnist:DIR), 'photo-patches', 'emoji', 'icons', an ImageFolder directory, "
                                "or a CSV of path,label")
    p.add_argument("--backbones", required=True, help="comma-separated backbone names (see nbtl backbones)")
    p.add_argument("--image-size", type=int, default=64, help="resize images to this square size (default: 64)")
    p.add_argument("--per-class", type=int, help="use at most this many images per class")
    p.add_argument("--classes", help="keep only these classes, by name or 0-based index, e.g. 0,2,4")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class choice and the folds (default: 0)")
    p.add_argument("--out", help="CSV file for the table (default: nbtl_fit_<dataset name>.csv here)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--name", help="MLflow experiment (default: fit-<dataset name>)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")


def _slug(text) -> str:
    """``text`` as a file- and experiment-name-safe word (e.g. a dataset name)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "data"


def _positive(value: int | None, flag: str) -> None:
    from nbtl.errors import ConfigError

    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be >= 1, got {value}")


def cmd_search(args: argparse.Namespace) -> int:
    from nbtl.errors import ConfigError
    from nbtl.search import load_space
    from nbtl.search.runner import SearchOptions, run_search

    for flag in ("trials", "max_concurrent", "image_size", "per_class"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.resume:
        ignored = [f"--{k.replace('_', '-')}" for k in ("data", "trials", "max_concurrent", "name", "image_size",
                                                         "per_class", "classes", "seed", "cpu", "gpu", "warm_start",
                                                         "time_budget") if getattr(args, k) is not None]
        if args.space or ignored:
            raise ConfigError(f"--resume {args.resume} continues a search with its own space and settings: "
                              f"drop {', '.join(([args.space] if args.space else []) + ignored)}")
        from nbtl.search.runner import resume_search

        result = resume_search(args.resume, storage_path=args.storage_path, address=args.address,
                               tracking_uri=args.tracking_uri, print_fn=lambda line: print(line, flush=True))
        return _report(result)
    if not args.space or not args.data:
        raise ConfigError("nbtl search needs a SPACE file and --data (or --resume NAME); see nbtl search --help")
    from nbtl.search.space import parse_duration

    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {args.seed}")
    budget = None
    if args.time_budget is not None:
        try:
            budget = parse_duration(args.time_budget)
        except ConfigError as error:
            raise ConfigError(f"--time-budget: {error}") from None
    space = load_space(args.space)
    warm_start = _warm_start(args.warm_start, space) if args.warm_start else []
    options = SearchOptions(data=args.data, name=args.name, trials=args.trials, max_concurrent=args.max_concurrent,
                            address=args.address, tracking_uri=args.tracking_uri, storage_path=args.storage_path,
                            image_size=args.image_size, per_class=args.per_class, seed=args.seed, cpu=args.cpu,
                            gpu=args.gpu, classes=args.classes, warm_start=warm_start, time_budget=budget,
                            recommend=not args.no_recommend)
    result = run_search(space, options, print_fn=lambda line: print(line, flush=True))
    return _report(result)


def _warm_start(path: str, space) -> list[dict]:
    """The configs of ``path`` as points of ``space``, saying what had to move to fit it."""
    from nbtl.heuristics.recommend import load_recommended_configs
    from nbtl.search.start import StartPoints

    found = StartPoints()
    for number, config in enumerate(load_recommended_configs(path), start=1):
        found.add(space, config, f"{number} ({path})", lambda line: print(line, file=sys.stderr), kind="warm start")
    print(f"warm start: {len(found.points)} config(s) from {path} run first", flush=True)
    return found.points


def _report(result) -> int:
    import pandas as pd

    from nbtl.search.space import dump_config

    shown = [c for c in result.table.columns if c not in ("run_id", "error") or result.table[c].astype(bool).any()]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print("\nTrials (best first):")
        print(result.table[shown].to_string(index=False))
    if result.best is None:
        print("\nNo trial finished; see the errors above and the failed runs in MLflow.")
        return 1
    best = result.best
    print(f"\nBest trial: {best['trial_id']} (MLflow run {best['run_id']}): "
          f"best_val_accuracy={best['best_val_accuracy']:.4f} test_accuracy={best['test_accuracy']:.4f}")
    print("Best config:")
    print(dump_config(best["config"]), end="")
    if result.tracking_uri.startswith(("http://", "https://")):
        where = f"open {result.tracking_uri.rstrip('/')}/#/experiments/{result.experiment_id}/runs/{result.parent_run_id}"
    else:
        where = f"open with: mlflow ui --backend-store-uri {result.tracking_uri}"
    print(f"\nMLflow: {result.tracking_uri} experiment {result.experiment_id}, parent run {result.parent_run_id}  ({where})")
    print(f"Results: {result.experiment_path}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from nbtl.backbones import get_spec, list_backbones

    for name in list_backbones():
        spec = get_spec(name)
        print(f"{name:24s} {spec.num_blocks:2d} blocks  {spec.input_size}px  weights: {spec.weights}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    import pandas as pd

    from nbtl.backbones import get_spec
    from nbtl.data import load_dataset
    from nbtl.errors import ConfigError
    from nbtl.fit import block_features, fit_table, meta_features
    from nbtl.tracking import log_fit

    for flag in ("image_size", "per_class"):
        _positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if not backbones:
        raise ConfigError("--backbones needs at least one backbone name, e.g. efficientnet_lite0; see nbtl backbones")
    if len(set(backbones)) != len(backbones):
        raise ConfigError(f"--backbones names a backbone twice: {args.backbones}")
    for name in backbones:
        get_spec(name)  # an unknown backbone fails here, before any data is loaded
    dataset = load_dataset(args.data, image_size=args.image_size, per_class=args.per_class, seed=args.seed,
                           classes=args.classes)
    meta = meta_features(dataset)
    tables = []
    for name in backbones:
        features = block_features(dataset, name, use_cache=not args.no_cache)
        source = "cache" if features.from_cache else "extracted"
        print(f"{name}: {features.num_blocks} blocks, features {source}", file=sys.stderr, flush=True)
        tables.append(fit_table(features, random_state=args.seed))
    table = pd.concat(tables, ignore_index=True)

    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
    print()
    metrics: dict[str, float] = {}
    for name in backbones:
        rows = table[table["backbone"] == name]
        if rows["logme"].notna().any():
            best = rows.loc[rows["logme"].idxmax()]
            metrics[f"{name}.best_logme"] = float(best["logme"])
            metrics[f"{name}.best_block"] = int(best["block"])
            print(f"{name}: best block by LogME is {int(best['block'])} (logme={best['logme']:.4g}, "
                  f"feature_dim={int(best['feature_dim'])})")
        else:
            print(f"{name}: no finite LogME on any block")
    print("\nDataset meta-features:")
    for key, value in meta.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")

    slug = _slug(meta["name"])
    out = args.out or f"nbtl_fit_{slug}.csv"
    try:
        table.to_csv(out, index=False)
    except OSError as error:
        raise ConfigError(f"cannot write --out {out}: {error.strerror or error}") from error
    params = {"data": args.data, "backbones": ",".join(backbones), "image_size": args.image_size,
              "per_class": args.per_class, "classes": args.classes, "seed": args.seed,
              **{f"meta.{k}": v for k, v in meta.items()}}
    uri, experiment_id, run_id = log_fit(args.tracking_uri, args.name or f"fit-{slug}", params,
                                         {"nbtl.data": args.data}, table, metrics)
    print(f"\nTable: {out}")
    print(f"MLflow: {uri} experiment {experiment_id}, run {run_id}")
    return 0


def _heuristics_command(name: str):
    def run(args: argparse.Namespace) -> int:
        from nbtl import cli_heuristics

        return getattr(cli_heuristics, name)(args)
    return run


COMMANDS = {"search": cmd_search, "backbones": cmd_backbones, "fit": cmd_fit,
            "recommend": _heuristics_command("cmd_recommend"), "heuristics": _heuristics_command("cmd_heuristics"),
            "train": _heuristics_command("cmd_train")}


def main(argv: Sequence[str] | None = None) -> int:
    from nbtl.errors import NbtlError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except NbtlError as error:
        print(f"nbtl {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"nbtl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
