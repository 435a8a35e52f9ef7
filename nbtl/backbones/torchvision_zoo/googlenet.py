"""GoogLeNet (Inception v1) [1]_: one block per resolution, auxiliary classifiers left out.

torchvision builds GoogLeNet with ``transform_input=True`` whenever it loads ImageNet weights:
inputs normalised with ImageNet's mean / std (its ``weights.transforms()``) are mapped back to
``(x - 0.5) / 0.5`` before ``conv1``. The Backbone folds that step into its preprocessing
(``spec.mean == spec.std == (0.5, 0.5, 0.5)``) and builds the network with
``transform_input=False``: same result, one affine map fewer.

The auxiliary classifiers (``aux1``, ``aux2``) are not part of the Backbone; torchvision's
checkpoint carries them, and they are dropped on loading (weights without them load too).

References
----------
.. [1] Szegedy et al., "Going Deeper with Convolutions", CVPR 2015.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones.torchvision_zoo._common import register_torchvision

#: Preprocessing the weights expect once ``transform_input`` is folded in.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def named_layers(model: nn.Module, *names: str) -> nn.Sequential:
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in names))


def cut_googlenet(model: nn.Module) -> BackboneParts:
    """Five blocks, one per resolution (strides 2, 4, 8, 16, 32), each starting at its
    downsampling max-pool: ``conv1`` | ``maxpool1, conv2, conv3`` | ``maxpool2, 3a, 3b`` |
    ``maxpool3, 4a … 4e`` | ``maxpool4, 5a, 5b``; head ``fc`` (1024 features)."""
    blocks = [
        named_layers(model, "conv1"),
        named_layers(model, "maxpool1", "conv2", "conv3"),
        named_layers(model, "maxpool2", "inception3a", "inception3b"),
        named_layers(model, "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
        named_layers(model, "maxpool4", "inception5a", "inception5b"),
    ]
    return BackboneParts(blocks, global_avg_pool(), model.fc, model.fc.in_features)


register_torchvision(
    "googlenet",
    family="googlenet",
    cut=cut_googlenet,
    num_blocks=5,
    weights="GoogLeNet_Weights.IMAGENET1K_V1",
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    transform_input=False,
    aux_logits=True,
    init_weights=True,
)
