"""What ``nbtl backbones`` does (its parser is :mod:`nbtl.cli.backbones`): print the backbones table."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from nbtl.backbones import backbones_table


def run(args: argparse.Namespace) -> int:
    table = backbones_table(family=args.family, installed=args.installed)
    if table.empty:
        print("nbtl backbones: no registered backbone has its weights installed here", file=sys.stderr)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
        return 0
    shown = table.drop(columns=["location"])
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:g}"))
    return 0
