"""The ``nbtl`` command line: the one package that talks to the terminal.

One parser module per command group (:mod:`~nbtl.cli.search`, :mod:`~nbtl.cli.fit`, :mod:`~nbtl.cli.heuristics`
for ``recommend``, ``heuristics learn`` and ``train``, :mod:`~nbtl.cli.backbones`, :mod:`~nbtl.cli.zoo`,
:mod:`~nbtl.cli.predict`, :mod:`~nbtl.cli.ensemble`), the options they share in :mod:`~nbtl.cli.common`. Each
subparser names its command with ``set_defaults(func=command("nbtl.cli.<group>_run:<function>"))``: the run module,
which imports what the command needs (torch, Ray, MLflow, the rest of nbtl) at its top, loads only when the
command runs, so ``nbtl --help`` imports none of it.

User errors (:class:`nbtl.errors.NbtlError`) end in one line on stderr and exit status 2; Ctrl-C ends in
one line and exit status 130. ``-v`` shows nbtl's debug lines, ``-q`` hides progress (errors and results
still show).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence

from nbtl import __version__
from nbtl.cli import backbones, ensemble, fit, heuristics, predict, search, zoo
from nbtl.cli.common import EXIT_DISK_FULL, EXIT_INTERRUPTED, EXIT_USER_ERROR, configure_logging, one_line
from nbtl.errors import NbtlError, disk_full_reason

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "build_parser", "main"]

log = logging.getLogger("nbtl.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbtl", description="Hyperparameter search for non-binary transfer learning of image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"nbtl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    search.add_parser(subparsers)
    backbones.add_parser(subparsers)
    fit.add_parser(subparsers)
    heuristics.add_parsers(subparsers)
    zoo.add_parser(subparsers)
    predict.add_parser(subparsers)
    ensemble.add_parser(subparsers)
    _add_verbosity(parser, top=True)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``-v`` / ``-q`` on ``parser`` and on every command below it, so they may come before or after the
    command (a command's own default is suppressed, so it never undoes the top-level flag)."""
    unset = {} if top else {"default": argparse.SUPPRESS}
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="also show nbtl's debug lines (on stderr)",
        **({"default": 0} if top else unset),
    )
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="show no progress, only warnings, errors and the results", **unset
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_verbosity(command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    log.debug(
        "nbtl %s, Python %s: %s",
        __version__,
        platform.python_version(),
        " ".join(sys.argv[1:] if argv is None else argv),
    )
    try:
        return args.func(args)
    except NbtlError as error:
        print(f"nbtl {args.command}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"nbtl {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `nbtl backbones | head`: the reader left; as the Python docs advise, no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as error:
        full = disk_full_reason(error)
        if full is None:
            raise
        print(f"nbtl {args.command}: error: {full}", file=sys.stderr)
        return EXIT_DISK_FULL
