"""What every command shares: the data and tracking flags (defined once), their checks, the one-line
error formatter, logging for ``-v`` / ``-q``, the progress printer, and :func:`command`, which loads what a command
does only when it runs.

Imported by every parser, and so by ``nbtl --help``: of nbtl it imports only :mod:`nbtl.errors`. What the commands'
run modules share besides is in :mod:`nbtl.cli.run_common`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nbtl.errors import ConfigError, NbtlError, one_line  # noqa: F401  (one_line: re-exported for the commands)

#: The exit status of a user error (bad flag, file, space or data); 130 is an interrupt (Ctrl-C).
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_DISK_FULL = 1  # a fault of the machine, not of the input
#: The search space a recommendation and a training run take their data settings from unless told otherwise.
DEFAULT_SPACE = "default"
DATA_HELP = (
    "dataset: 'digits', 'fashion-mnist' (Debian's IDX files, or fashion-mnist:DIR), 'fashion-mnist-test', "
    "'photo-patches', 'emoji', 'emoji-more', 'icons', 'playing-cards', 'wallpaper-tiles', an ImageFolder "
    "directory, or a CSV of path,label"
)
TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)"
#: Data flags and the DataSettings field each sets.
DATA_FLAGS = {
    "image_size": "--image-size",
    "per_class": "--per-class",
    "classes": "--classes",
    "seed": "--seed",
    "test_data": "--test-data",
}

log = logging.getLogger("nbtl.cli")


def add_data_flags(parser: argparse.ArgumentParser, image_size_help: str, seed_help: str) -> None:
    """``--image-size``, ``--per-class``, ``--classes``, ``--seed`` and ``--test-data``; every default is None (= the
    search space's, the recommendation's, else :class:`~nbtl.data.settings.DataSettings`'), so a flag only ever
    overrides."""
    parser.add_argument(
        "--image-size",
        type=image_size_flag,
        metavar="PX",
        help=f"resize images to this square size once ({image_size_help}); 'native': each backbone's own "
        "(224 for EfficientNet-Lite0), for nbtl search and nbtl train; 'auto': the largest size at which a search's "
        "start points fit in a quarter of its --time-budget",
    )
    parser.add_argument("--per-class", type=int, help="use at most this many images per class")
    parser.add_argument("--classes", help="keep only these classes, by name or 0-based index, e.g. 0,2,4")
    parser.add_argument("--seed", type=int, help=seed_help)
    parser.add_argument(
        "--test-data",
        metavar="DIR",
        help="the official test images (an ImageFolder or CSV with the same classes): kept as the test set, and only "
        "DATA is split (an ImageFolder with train/ and test/ sub-folders keeps its test/ without this flag)",
    )


def image_size_flag(value: str) -> int | str:
    """``--image-size``: pixels, or ``native``."""
    if value.strip().lower() in ("native", "auto"):
        return value.strip().lower()
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size in pixels (e.g. 224), 'native' or 'auto'") from None


def add_weights_flag(parser: argparse.ArgumentParser) -> None:
    """``--weights NAME=PATH``, repeatable: a local state dict file for backbone NAME instead of its default
    weights (a torchvision ``.pth``, or one saved with ``torch.save(model.state_dict(), path)``)."""
    parser.add_argument(
        "--weights",
        action="append",
        metavar="NAME=PATH",
        help="use this local weights file (.pth state dict, read with weights_only=True) for backbone NAME instead "
        "of its default weights; repeat for several backbones",
    )


def add_tracking_flags(parser: argparse.ArgumentParser, name_help: str) -> None:
    parser.add_argument("--tracking-uri", help=TRACKING_HELP)
    parser.add_argument("--name", help=name_help)


def add_ray_flags(
    parser: argparse.ArgumentParser,
    storage_help: str,
    cpu_help: str,
    gpu_help: str,
    cpu_default: float | None = None,
    gpu_default: float | None = None,
) -> None:
    """Where the trials run: ``--address`` (a Ray cluster; default embedded Ray), ``--storage-path`` (Ray
    Tune's results) and the resources of one trial (``--cpu``, ``--gpu``), for the commands that run trials."""
    parser.add_argument(
        "--address", help="join a running Ray cluster, e.g. 127.0.0.1:6379 or 'auto' (default: embedded Ray)"
    )
    parser.add_argument("--storage-path", help=storage_help)
    parser.add_argument("--cpu", type=float, default=cpu_default, help=cpu_help)
    parser.add_argument("--gpu", type=float, default=gpu_default, help=gpu_help)


def positive(value: int | float | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be >= 1, got {value}")


def check_name(name: str | None, flag: str = "--name") -> str | None:
    """A search or experiment name, which becomes a folder under the results folder: one plain path
    component (no separator, not hidden, not ``.`` or ``..``)."""
    if name is None:
        return None
    if (
        not name.strip()
        or name != name.strip()
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
        or any(ord(c) < 32 for c in name)
    ):
        raise ConfigError(
            f"{flag} {name!r}: a name becomes a folder (under the results folder) and an MLflow "
            "experiment, so give one folder name: not empty, no / or \\, not starting with '.', "
            "e.g. digits-search"
        )
    return name


def command(reference: str) -> Callable[[argparse.Namespace], int]:
    """A command's ``func`` (``set_defaults(func=command("nbtl.cli.search_run:run"))``): ``module:function``, imported
    when the command runs. The one lazy import of the command line: a command's work (torch, Ray, MLflow and the rest
    of nbtl) loads only then, so that ``nbtl --help`` and every parser stay light."""
    module, _, name = reference.partition(":")

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(args)

    return run


class _Formatter(logging.Formatter):
    """INFO lines as they are; other levels prefixed with theirs (``warning: ...``, ``debug nbtl.x: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno == logging.INFO:
            return message
        if record.levelno == logging.DEBUG:
            return f"debug {record.name}: {message}"
        return f"{record.levelname.lower()}: {message}"


def configure_logging(verbose: int, quiet: bool) -> int:
    """nbtl's loggers at INFO, DEBUG with ``-v``, WARNING with ``-q``, written to stderr; returns the level.
    The terminal's progress printer (:func:`progress`) follows the same level."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger("nbtl")
    for handler in [h for h in root.handlers if getattr(h, "nbtl_cli", False)]:
        root.removeHandler(handler)  # main() called again in one process: one handler, not two
    handler = logging.StreamHandler(sys.stderr)
    handler.nbtl_cli = True
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(level)
    return level


def progress(line: str) -> None:
    """A progress line on stdout (the ``print_fn`` of searches and training); silent with ``-q``."""
    if log.isEnabledFor(logging.INFO):
        print(line, flush=True)


@contextmanager
def live_status() -> Iterator[tuple[Callable[[str], None], Callable[[str], None] | None]]:
    """``(print_fn, status_fn)`` for a search: on a terminal, one status line kept at the bottom (tqdm) that
    ``status_fn`` rewrites, with the progress lines printed above it; otherwise (a file, a pipe, CI) or with ``-q``
    the plain progress lines and no status line. The line is removed when the search ends."""
    if not (sys.stdout.isatty() and log.isEnabledFor(logging.INFO)):
        yield progress, None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, bar_format="{desc}", file=sys.stdout, leave=False, dynamic_ncols=True)

    def say(line: str) -> None:
        tqdm.write(line, file=sys.stdout)  # above the status line, which tqdm draws again below it

    def status(text: str) -> None:
        bar.set_description_str(text[: max(20, (bar.ncols or 80) - 1)], refresh=True)

    try:
        yield say, status
    finally:
        bar.close()
