"""``nbtl predict MODEL IMAGES...``: classify images with a logged or registered nbtl model.

The work is :mod:`nbtl.models.predict`'s; this module reads the flags, prints the table (stdout) and writes
the CSV. Progress, warnings and the summary go to stderr, so stdout is the table alone.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nbtl.cli.common import TRACKING_HELP, log, positive
from nbtl.errors import ConfigError

#: Exit status when some images could not be read (the others are classified and listed).
EXIT_UNREADABLE = 1


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="classify images with a model a search logged or registered",
        description="Classify images with a model nbtl logged (the best trial of a search, or an ensemble): "
        "prints one row per image, in the order given, with its most probable class and probability and "
        "the next ones (class_2/probability_2 ... up to --top-k). An image that cannot be read gets a "
        "warning naming it and a row with an error column; the others go on.",
        epilog="exit status: 0 every image classified, 1 some could not be read (listed with an error), "
        "2 bad input (a path or model that is not there). "
        "examples: nbtl predict digits photos/;  nbtl predict models:/digits/2 a.png b.jpg --top-k 1;  "
        "nbtl predict runs:/RUN_ID/model images.csv --out predictions.csv",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-ID, runs:/RUN_ID/model), "
        "a local MLflow model folder, or a search's name: its registered model's newest version, else the "
        "model its newest finished run logged",
    )
    p.add_argument(
        "images",
        metavar="IMAGES",
        nargs="+",
        help="image files, folders (searched recursively for image files, sorted) or CSV files listing image "
        "paths (column path, image, file or filename, else the first; relative to the CSV's folder)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=3,
        metavar="K",
        help="columns for the K most probable classes per image: class, probability, class_2, probability_2, "
        "... class_K, probability_K (default: 3; at most the model's number of classes)",
    )
    p.add_argument(
        "--out",
        metavar="CSV",
        help="also write the table to this CSV file: the same columns, plus error (empty for a classified image)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="images sent to the model at once (default: 64)"
    )
    p.add_argument(
        "--allow-foreign-models",
        action="store_true",
        help="also load a model nbtl did not log, with mlflow.pyfunc.load_model: that RUNS the model's code and "
        "unpickles its objects, so only for a model whose every writer you trust (default: such a model is "
        "refused, and an nbtl model is rebuilt from its weights without running anything stored with it)",
    )
    p.add_argument("--tracking-uri", help=TRACKING_HELP)
    p.set_defaults(func=run)


def _check_out(out: str | None) -> Path | None:
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder: give a CSV file's name, e.g. {path / 'predictions.csv'}")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {out}: folder '{path.parent}' not found; create it or write the CSV elsewhere")
    return path


def _text(table) -> str:
    """The table as aligned text: text columns left-aligned, probabilities with 4 decimals, blanks for none."""
    shown = table.copy()
    formatters = {}
    for column in shown.columns:
        if column.startswith("probability"):
            shown[column] = [f"{v:.4f}" if v == v and v is not None else "" for v in shown[column]]
        else:
            shown[column] = shown[column].fillna("").astype(str)
            width = max([len(column), *map(len, shown[column])])
            formatters[column] = lambda value, width=width: f"{value:<{width}}"
    text = shown.to_string(index=False, formatters=formatters, justify="left")
    return "\n".join(line.rstrip() for line in text.splitlines())


def _images(count: int) -> str:
    return f"{count} image{'' if count == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    from nbtl.models.predict import ERROR_COLUMN, list_images, load_model, predict_files, resolve_model, unreadable
    from nbtl.tracking import resolve_tracking_uri

    positive(args.top_k, "--top-k")
    positive(args.batch_size, "--batch-size")
    out = _check_out(args.out)
    paths = list_images(args.images)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    model = load_model(resolve_model(args.model, tracking_uri), tracking_uri, allow_foreign=args.allow_foreign_models)
    if args.top_k > len(model.classes):
        log.info("--top-k %d: the model has %d classes; showing all of them", args.top_k, len(model.classes))
    log.info("classifying %s with %s (%d classes)", _images(len(paths)), model.uri, len(model.classes))
    table = predict_files(
        model, paths, top_k=args.top_k, batch_size=args.batch_size, progress=log.isEnabledFor(logging.INFO)
    )
    failed = unreadable(table)
    print(_text(table if failed else table.drop(columns=ERROR_COLUMN)), flush=True)
    if out is not None:
        try:
            table.to_csv(out, index=False)
        except OSError as error:
            raise ConfigError(f"--out {args.out}: cannot write the CSV ({error.strerror or error})") from None
    written = f"; table written to {out}" if out is not None else ""
    if failed:
        log.warning(
            "%d of %s could not be read (rows with an error); the other %d classified%s",
            failed,
            _images(len(table)),
            len(table) - failed,
            written,
        )
        return EXIT_UNREADABLE
    log.info("classified %s with %s%s", _images(len(table)), model.uri, written)
    return 0
