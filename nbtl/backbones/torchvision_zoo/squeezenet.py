"""SqueezeNet 1.0 [1]_ and 1.1: one block per resolution; the classifier convolves, then pools.

References
----------
.. [1] Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB
       model size", arXiv 1602.07360, 2016.
"""

from __future__ import annotations

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool, remove_dropout, split_where
from nbtl.backbones.torchvision_zoo._common import register_torchvision


def cut_squeezenet(model: nn.Module) -> BackboneParts:
    """Four blocks, a new one at each max-pool: ``conv1`` | fire modules at strides 4, 8, 16.

    Features: global average of the last fire module (512 channels). The source head is the
    ImageNet classifier (1x1 conv to 1000 maps, ReLU, average pool; dropout removed) and reads
    the last block's map (``source_head_on_map``): pooling after the ReLU is not pooling before.
    """
    blocks = split_where(model.features, lambda layer: isinstance(layer, nn.MaxPool2d))
    head = nn.Sequential(remove_dropout(model.classifier), nn.Flatten(1))
    return BackboneParts(blocks, global_avg_pool(), head, model.classifier[1].in_channels, source_head_on_map=True)


register_torchvision(
    "squeezenet1_0",
    family="squeezenet",
    cut=cut_squeezenet,
    num_blocks=4,
    weights="SqueezeNet1_0_Weights.IMAGENET1K_V1",
)
register_torchvision(
    "squeezenet1_1",
    family="squeezenet",
    cut=cut_squeezenet,
    num_blocks=4,
    weights="SqueezeNet1_1_Weights.IMAGENET1K_V1",
)
