"""VGG [1]_, with and without batch normalisation: one block per max-pool stage.

References
----------
.. [1] Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
       Recognition", ICLR 2015.
"""

from __future__ import annotations

from torch import nn

from nbtl.backbones._backbone import BackboneParts, remove_dropout
from nbtl.backbones.torchvision_zoo._common import classifier_in_features, register_torchvision


def cut_vgg(model: nn.Module) -> BackboneParts:
    """Five blocks, each a run of 3x3 convolutions ending in its 2x2 max-pool.

    The features are what the ImageNet classifier reads: the adaptive 7x7 average pool of the
    last block, flattened (25088 values); the source head is the three fully connected layers
    (dropout removed).
    """
    blocks: list[list[nn.Module]] = [[]]
    for layer in model.features:
        blocks[-1].append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append([])
    blocks = [nn.Sequential(*block) for block in blocks if block]
    pool = nn.Sequential(model.avgpool, nn.Flatten(1))
    return BackboneParts(blocks, pool, remove_dropout(model.classifier), classifier_in_features(model.classifier))


register_torchvision("vgg11_bn", family="vgg", cut=cut_vgg, num_blocks=5, weights="VGG11_BN_Weights.IMAGENET1K_V1")
register_torchvision("vgg16", family="vgg", cut=cut_vgg, num_blocks=5, weights="VGG16_Weights.IMAGENET1K_V1")
