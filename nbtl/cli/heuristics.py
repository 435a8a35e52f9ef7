"""``nbtl recommend``, ``nbtl heuristics learn`` and ``nbtl train``: the command-line side of
:mod:`nbtl.heuristics` and of training one config.

All three read one :class:`~nbtl.data.settings.DataSettings`: ``recommend`` takes it from a search space
(``--space``, default ``default``) and measures the fit on the training split that search makes, then
writes it into its YAML; ``train`` reads it back from that YAML (flags override); ``heuristics learn``
reads each search's from its MLflow parent run.

The parsers; what the commands do is :mod:`nbtl.cli.heuristics_run`, imported when one runs.
"""

from __future__ import annotations

from nbtl.cli.common import (
    DATA_HELP,
    DEFAULT_SPACE,
    TRACKING_HELP,
    add_data_flags,
    add_tracking_flags,
    add_weights_flag,
    command,
)


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
    p.set_defaults(func=command("nbtl.cli.heuristics_run:recommend"))


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
    learn.set_defaults(func=command("nbtl.cli.heuristics_run:learn_recommender"))


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
    t.set_defaults(func=command("nbtl.cli.heuristics_run:train"))
