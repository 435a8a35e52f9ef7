"""VGG [1]_, with and without batch normalisation: one block per max-pool stage.

References
----------
.. [1] Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
       Recognition", ICLR 2015.
"""

from __future__ import annotations

from functools import partial

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


_vgg = partial(register_torchvision, family="vgg", cut=cut_vgg, num_blocks=5)

for _depth in (11, 13, 16, 19):
    _vgg(f"vgg{_depth}", weights=f"VGG{_depth}_Weights.IMAGENET1K_V1")
    _vgg(f"vgg{_depth}_bn", weights=f"VGG{_depth}_BN_Weights.IMAGENET1K_V1")
