"""``nbtl backbones``: list the registered backbones."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "backbones",
        help="list the registered backbones",
        description="List registered backbones with their blocks, input size and weights.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nbtl.backbones import get_spec, list_backbones

    for name in list_backbones():
        spec = get_spec(name)
        print(f"{name:24s} {spec.num_blocks:2d} blocks  {spec.input_size}px  weights: {spec.weights}")
    return 0
