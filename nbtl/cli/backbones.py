"""``nbtl backbones``: the registered backbones, their size, cost, ImageNet top-1 and weights."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "backbones",
        help="list the registered backbones",
        description=(
            "List the registered backbones: blocks, native input size, parameters (millions), GFLOPs at "
            "the native size, ImageNet-1K top-1 (%), and whether their weights are installed here "
            "('installed'), torchvision will download them on first use ('download'), or a package "
            "must be installed. No network is built and nothing is downloaded. Any timm CNN is a backbone too, "
            "named timm:<model> (e.g. timm:resnet50), not listed here."
        ),
    )
    p.add_argument("--family", metavar="F", help="only this family (e.g. resnet, vit, efficientnet_lite)")
    p.add_argument("--installed", action="store_true", help="only backbones whose weights are installed here")
    p.add_argument(
        "--format",
        choices=("table", "csv"),
        default="table",
        help="a table to read (default), or CSV with the weights' file paths too",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from nbtl.backbones import backbones_table

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
