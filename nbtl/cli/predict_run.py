"""What ``nbtl predict`` does (its parser is :mod:`nbtl.cli.predict`).

The work is :mod:`nbtl.models.predict`'s; this module reads the flags, prints the table (stdout) and writes
the CSV. Progress, warnings and the summary go to stderr, so stdout is the table alone.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nbtl.cli.common import log, positive
from nbtl.errors import ConfigError
from nbtl.models.predict import ERROR_COLUMN, list_images, load_model, predict_files, resolve_model, unreadable
from nbtl.tracking import resolve_tracking_uri

#: Exit status when some images could not be read (the others are classified and listed).
EXIT_UNREADABLE = 1


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
