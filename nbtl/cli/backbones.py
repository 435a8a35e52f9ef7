"""``nbtl backbones``: the registered backbones, their size, cost, ImageNet top-1 and weights.

The parser; what the command does is :mod:`nbtl.cli.backbones_run`, imported when it runs."""

from __future__ import annotations

from nbtl.cli.common import command


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
    p.set_defaults(func=command("nbtl.cli.backbones_run:run"))
