"""ShuffleNet V2 [1]_: stem, three stages, last 1x1 conv.

References
----------
.. [1] Ma, Zhang, Zheng & Sun, "ShuffleNet V2: Practical Guidelines for Efficient CNN
       Architecture Design", ECCV 2018.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones.torchvision_zoo._common import register_torchvision


def cut_shufflenet_v2(model: nn.Module) -> BackboneParts:
    """Five blocks: stem (conv1, maxpool) | stage2 | stage3 | stage4 | conv5; head ``fc``."""
    stem = nn.Sequential(OrderedDict(conv1=model.conv1, maxpool=model.maxpool))
    blocks = [stem, model.stage2, model.stage3, model.stage4, model.conv5]
    return BackboneParts(blocks, global_avg_pool(), model.fc, model.fc.in_features)


_shufflenet_v2 = partial(register_torchvision, family="shufflenet_v2", cut=cut_shufflenet_v2, num_blocks=5)

_shufflenet_v2("shufflenet_v2_x0_5", weights="ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1")
_shufflenet_v2("shufflenet_v2_x1_0", weights="ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1")
_shufflenet_v2("shufflenet_v2_x1_5", weights="ShuffleNet_V2_X1_5_Weights.IMAGENET1K_V1")
_shufflenet_v2("shufflenet_v2_x2_0", weights="ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1")
