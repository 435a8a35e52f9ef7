"""MobileNetV2 [1]_ and MobileNetV3 [2]_: stem, inverted-residual stages by resolution, last 1x1 conv.

References
----------
.. [1] Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear
       Bottlenecks", CVPR 2018.
.. [2] Howard et al., "Searching for MobileNetV3", ICCV 2019.
"""

from __future__ import annotations

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool, group_into_stages, remove_dropout
from nbtl.backbones.torchvision_zoo._common import classifier_in_features, register_torchvision


def cut_mobilenet(model: nn.Module) -> BackboneParts:
    """Stem ``features[0]``, the inverted-residual blocks grouped into stages by output resolution
    (a new stage at each strided block), the final 1x1 conv ``features[-1]``; head ``classifier``
    (dropout removed)."""
    features = model.features
    blocks = [features[0], *group_into_stages(features[1:-1]), features[-1]]
    return BackboneParts(
        blocks, global_avg_pool(), remove_dropout(model.classifier), classifier_in_features(model.classifier)
    )


register_torchvision(
    "mobilenet_v2", family="mobilenet_v2", cut=cut_mobilenet, num_blocks=7, weights="MobileNet_V2_Weights.IMAGENET1K_V2"
)
register_torchvision(
    "mobilenet_v3_small",
    family="mobilenet_v3",
    cut=cut_mobilenet,
    num_blocks=6,
    weights="MobileNet_V3_Small_Weights.IMAGENET1K_V1",
)
register_torchvision(
    "mobilenet_v3_large",
    family="mobilenet_v3",
    cut=cut_mobilenet,
    num_blocks=7,
    weights="MobileNet_V3_Large_Weights.IMAGENET1K_V2",
)
