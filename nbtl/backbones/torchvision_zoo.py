"""torchvision classification networks, cut into blocks.

Two tables make a torchvision backbone: :data:`FAMILY_CUTS` (one function per family saying
which modules form the blocks and which is the source head) and :data:`MODELS` (one row per
network: its family, block count and torchvision weights enum). Adding e.g. ``resnet50`` is one
row; adding a family (``mobilenet_v2``, ``efficientnet``, ``convnext``, ``regnet``…) is one cut
function plus its rows.

Default weights are torchvision's ``weights=`` enum (e.g. ``ResNet18_Weights.IMAGENET1K_V1``),
read from the torch hub cache ``torch.hub.get_dir()/checkpoints/`` where torchvision keeps them.

References
----------
.. [1] He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
.. [2] Howard et al., "Searching for MobileNetV3", ICCV 2019.
.. [3] TorchVision maintainers, "TorchVision: PyTorch's computer vision library", 2016,
       https://github.com/pytorch/vision (``torchvision.models``, multi-weight API).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool, group_into_stages, remove_dropout
from nbtl.backbones._registry import register_backbone
from nbtl.backbones._weights import load_hub_checkpoint

#: Normalisation of torchvision's ImageNet weights (``weights.transforms()``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cut_resnet(model: nn.Module) -> BackboneParts:
    """ResNet [1]_: stem (conv1, bn1, relu, maxpool), then ``layer1`` … ``layer4``; head ``fc``."""
    stem = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool))
    blocks = [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    return BackboneParts(blocks, global_avg_pool(), model.fc, model.fc.in_features)


def cut_mobilenet_v3(model: nn.Module) -> BackboneParts:
    """MobileNetV3 [2]_: stem ``features[0]``, the inverted-residual blocks grouped into stages by
    output resolution, the final 1x1 conv ``features[-1]``; head ``classifier`` (dropout removed)."""
    features = model.features
    blocks = [features[0], *group_into_stages(features[1:-1]), features[-1]]
    return BackboneParts(blocks, global_avg_pool(), remove_dropout(model.classifier),
                         model.classifier[0].in_features)


#: family -> cut function.
FAMILY_CUTS: dict[str, Callable[[nn.Module], BackboneParts]] = {
    "resnet": cut_resnet,
    "mobilenet_v3": cut_mobilenet_v3,
}


@dataclass(frozen=True)
class TorchvisionModel:
    """One row of :data:`MODELS`.

    Parameters
    ----------
    name : str
        Both the registry name and ``torchvision.models.get_model``'s name.
    family : str
        Key of :data:`FAMILY_CUTS`.
    num_blocks : int
        Blocks the family's cut yields for this network.
    weights : str
        torchvision weights enum, ``"<Enum>.<member>"``, e.g. ``"ResNet18_Weights.IMAGENET1K_V1"``.
    input_size : int, default=224
        Crop size of the weights' evaluation transform.
    mean, std : tuple of 3 floats
        Normalisation of the weights' transform.
    """

    name: str
    family: str
    num_blocks: int
    weights: str
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


MODELS: tuple[TorchvisionModel, ...] = (
    TorchvisionModel("resnet18", "resnet", 5, "ResNet18_Weights.IMAGENET1K_V1"),
    TorchvisionModel("mobilenet_v3_small", "mobilenet_v3", 6, "MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
)


def build_torchvision(name: str) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None)``: random init, nothing downloaded."""
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def torchvision_weights(name: str, weights: str) -> dict:
    """The state dict of torchvision weights enum ``weights`` from the torch hub cache
    (downloaded there first when absent and online)."""
    import torchvision

    return load_hub_checkpoint(torchvision.models.get_weight(weights).url, name)


def register_torchvision(model: TorchvisionModel) -> None:
    """Register one row of :data:`MODELS`."""
    register_backbone(
        model.name, family=model.family, num_blocks=model.num_blocks, input_size=model.input_size,
        mean=model.mean, std=model.std, weights=f"torchvision {model.weights}",
        cut=FAMILY_CUTS[model.family],
        default_weights=partial(torchvision_weights, model.name, model.weights),
        native_format=f"torchvision.models.{model.name}().state_dict()",
    )(partial(build_torchvision, model.name))


for _model in MODELS:
    register_torchvision(_model)
