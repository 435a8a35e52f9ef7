"""RegNet [1]_ (X and Y): stem, then the four stages of the trunk.

References
----------
.. [1] Radosavovic, Kosaraju, Girshick, He & Dollár, "Designing Network Design Spaces", CVPR 2020.
"""

from __future__ import annotations

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones.torchvision_zoo._common import register_torchvision


def cut_regnet(model: nn.Module) -> BackboneParts:
    """Five blocks: ``stem`` | ``trunk_output.block1`` … ``block4``; head ``fc``."""
    blocks = [model.stem, *model.trunk_output]
    return BackboneParts(blocks, global_avg_pool(), model.fc, model.fc.in_features)


register_torchvision(
    "regnet_x_400mf", family="regnet", cut=cut_regnet, num_blocks=5, weights="RegNet_X_400MF_Weights.IMAGENET1K_V2"
)
register_torchvision(
    "regnet_y_400mf", family="regnet", cut=cut_regnet, num_blocks=5, weights="RegNet_Y_400MF_Weights.IMAGENET1K_V2"
)
