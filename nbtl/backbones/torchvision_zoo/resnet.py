"""ResNet [1]_, ResNeXt [2]_ and Wide ResNet [3]_: one cut, five blocks.

References
----------
.. [1] He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
.. [2] Xie, Girshick, Dollár, Tu & He, "Aggregated Residual Transformations for Deep Neural
       Networks", CVPR 2017.
.. [3] Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones.torchvision_zoo._common import register_torchvision


def cut_resnet(model: nn.Module) -> BackboneParts:
    """Stem (conv1, bn1, relu, maxpool: stride 4), then ``layer1`` … ``layer4``; head ``fc``."""
    stem = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool))
    blocks = [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    return BackboneParts(blocks, global_avg_pool(), model.fc, model.fc.in_features)


_resnet = partial(register_torchvision, cut=cut_resnet, num_blocks=5)

_resnet("resnet18", family="resnet", weights="ResNet18_Weights.IMAGENET1K_V1")
_resnet("resnet34", family="resnet", weights="ResNet34_Weights.IMAGENET1K_V1")
_resnet("resnet50", family="resnet", weights="ResNet50_Weights.IMAGENET1K_V2")
_resnet("resnet101", family="resnet", weights="ResNet101_Weights.IMAGENET1K_V2")
_resnet("resnet152", family="resnet", weights="ResNet152_Weights.IMAGENET1K_V2")
_resnet("resnext50_32x4d", family="resnext", weights="ResNeXt50_32X4D_Weights.IMAGENET1K_V2")
_resnet("resnext101_32x8d", family="resnext", weights="ResNeXt101_32X8D_Weights.IMAGENET1K_V2")
_resnet("resnext101_64x4d", family="resnext", weights="ResNeXt101_64X4D_Weights.IMAGENET1K_V1")
_resnet("wide_resnet50_2", family="wide_resnet", weights="Wide_ResNet50_2_Weights.IMAGENET1K_V2")
_resnet("wide_resnet101_2", family="wide_resnet", weights="Wide_ResNet101_2_Weights.IMAGENET1K_V2")
