"""What every torchvision family shares: building the network, finding its weights, registering a variant.

A torchvision variant is one :func:`register_torchvision` call in its family's module, next to
the family's cut function (timm's one-file-per-family layout). The network is
``torchvision.models.get_model(name, weights=None)`` (random init, nothing downloaded); its
default weights are a torchvision ``Weights`` enum member (the enum's ``DEFAULT``), read from the
torch hub cache ``torch.hub.get_dir()/checkpoints/<file of weights.url>`` where torchvision
keeps them, and downloaded there first when absent and online.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from nbtl.backbones._backbone import BackboneParts
from nbtl.backbones._info import WeightsInfo
from nbtl.backbones._registry import register_backbone
from nbtl.backbones._weights import hub_checkpoint_path, load_hub_checkpoint

#: Normalisation of torchvision's ImageNet weights (``weights.transforms()``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_torchvision(name: str, **kwargs) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, **kwargs)``: random init, nothing downloaded."""
    import torchvision

    return torchvision.models.get_model(name, weights=None, **kwargs)


def torchvision_weights(name: str, weights: str) -> dict:
    """The state dict of torchvision weights enum member ``weights`` (``"<Enum>.<member>"``) from
    the torch hub cache (downloaded there first when absent and online)."""
    import torchvision

    return load_hub_checkpoint(torchvision.models.get_weight(weights).url, name)


def torchvision_info(weights: str) -> WeightsInfo:
    """Size, cost and ImageNet top-1 of torchvision weights enum member ``weights`` (its ``meta``),
    and whether its file is in the torch hub cache; nothing built or downloaded."""
    import torchvision

    member = torchvision.models.get_weight(weights)
    meta, path = member.meta, hub_checkpoint_path(member.url)
    return WeightsInfo(
        source=f"torchvision {weights}",
        installed=path.is_file(),
        location=str(path),
        num_params=meta.get("num_params"),
        gflops=meta.get("_ops"),
        top1=meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
        torchvision_weights=weights,
        url=member.url,
    )


def classifier_in_features(head: nn.Module) -> int:
    """``in_features`` of the first ``nn.Linear`` in ``head``."""
    return next(m.in_features for m in head.modules() if isinstance(m, nn.Linear))


def register_torchvision(
    name: str,
    *,
    family: str,
    cut: Callable[[nn.Module], BackboneParts],
    num_blocks: int,
    weights: str,
    input_size: int = 224,
    min_input_size: int = 32,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    build=None,
    **build_kwargs,
) -> None:
    """Register ``torchvision.models.<name>`` as backbone ``name``.

    Parameters
    ----------
    name : str
        Both the registry name and ``torchvision.models.get_model``'s name.
    family : str
        Architecture family (``BackboneSpec.family``).
    cut : callable
        The family's ``cut(native) -> BackboneParts``.
    num_blocks : int
        Blocks ``cut`` yields for this network (checked whenever it is built).
    weights : str
        torchvision weights enum member, ``"<Enum>.<member>"``, e.g. ``"ResNet50_Weights.IMAGENET1K_V2"``:
        the enum's ``DEFAULT``.
    input_size : int, default=224
        ``crop_size`` of the weights' evaluation transform.
    min_input_size : int, default=32
        Smallest square input the forward accepts.
    mean, std : tuple of 3 floats
        Normalisation of the weights' transform (ImageNet's unless the network re-normalises).
    build : callable, optional
        ``build(name, **build_kwargs) -> nn.Module`` instead of :func:`build_torchvision`.
    **build_kwargs
        Passed to ``get_model`` (e.g. ``init_weights=True``).
    """
    register_backbone(
        name,
        family=family,
        num_blocks=num_blocks,
        input_size=input_size,
        min_input_size=min_input_size,
        mean=mean,
        std=std,
        weights=f"torchvision {weights}",
        cut=cut,
        default_weights=partial(torchvision_weights, name, weights),
        native_format=f"torchvision.models.{name}().state_dict()",
        describe=partial(torchvision_info, weights),
    )(partial(build or build_torchvision, name, **build_kwargs))
