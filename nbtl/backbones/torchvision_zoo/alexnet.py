"""AlexNet [1]_ (torchvision's one-GPU variant [2]_): one block per convolution.

References
----------
.. [1] Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural
       Networks", NeurIPS 2012.
.. [2] Krizhevsky, "One weird trick for parallelizing convolutional neural networks", arXiv 1404.5997, 2014.
"""

from __future__ import annotations

from torch import nn

from nbtl.backbones._backbone import BackboneParts, remove_dropout, split_where
from nbtl.backbones.torchvision_zoo._common import classifier_in_features, register_torchvision


def cut_alexnet(model: nn.Module) -> BackboneParts:
    """Five blocks, conv1 … conv5, each with its ReLU (and max-pool after conv1, conv2, conv5).

    The features are what the ImageNet classifier reads: the adaptive 6x6 average pool of conv5,
    flattened (9216 values); the source head is the three fully connected layers (dropout removed).
    """
    blocks = split_where(model.features, lambda layer: isinstance(layer, nn.Conv2d))
    pool = nn.Sequential(model.avgpool, nn.Flatten(1))
    return BackboneParts(blocks, pool, remove_dropout(model.classifier), classifier_in_features(model.classifier))


# conv1 (11x11, stride 4) and three 3x3 max-pools: 63 px is the smallest input they accept.
register_torchvision(
    "alexnet",
    family="alexnet",
    cut=cut_alexnet,
    num_blocks=5,
    weights="AlexNet_Weights.IMAGENET1K_V1",
    min_input_size=63,
)
