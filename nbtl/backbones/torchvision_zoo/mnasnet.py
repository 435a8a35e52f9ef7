"""MnasNet [1]_: stem, the inverted-residual stacks grouped by resolution, last 1x1 conv.

References
----------
.. [1] Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile", CVPR 2019.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool, group_into_stages, remove_dropout
from nbtl.backbones.torchvision_zoo._common import classifier_in_features, register_torchvision


def cut_mnasnet(model: nn.Module) -> BackboneParts:
    """Six blocks: stem ``layers[0:8]`` (conv, separable conv), the six stacks ``layers[8:14]``
    grouped into four stages by resolution, the final 1x1 conv ``layers[14:17]``; head
    ``classifier`` (dropout removed)."""
    layers = model.layers
    blocks = [layers[0:8], *group_into_stages(layers[8:14]), layers[14:17]]
    return BackboneParts(
        blocks, global_avg_pool(), remove_dropout(model.classifier), classifier_in_features(model.classifier)
    )


_mnasnet = partial(register_torchvision, family="mnasnet", cut=cut_mnasnet, num_blocks=6)

_mnasnet("mnasnet0_5", weights="MNASNet0_5_Weights.IMAGENET1K_V1")
_mnasnet("mnasnet0_75", weights="MNASNet0_75_Weights.IMAGENET1K_V1")
_mnasnet("mnasnet1_0", weights="MNASNet1_0_Weights.IMAGENET1K_V1")
_mnasnet("mnasnet1_3", weights="MNASNet1_3_Weights.IMAGENET1K_V1")
