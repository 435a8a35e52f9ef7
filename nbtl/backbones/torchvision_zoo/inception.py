"""Inception v3 [1]_: one block per resolution, auxiliary classifier left out.

As for GoogLeNet (see :mod:`.googlenet`), torchvision loads the ImageNet weights with
``transform_input=True``; the Backbone folds that into ``spec.mean == spec.std == (0.5, 0.5, 0.5)``
and builds the network with ``transform_input=False``. ``AuxLogits`` is not part of the
Backbone. Native resolution is 299 px; the stem's unpadded convolutions and pools need at
least 75 px.

References
----------
.. [1] Szegedy, Vanhoucke, Ioffe, Shlens & Wojna, "Rethinking the Inception Architecture for
       Computer Vision", CVPR 2016.
"""

from __future__ import annotations

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones.torchvision_zoo._common import register_torchvision
from nbtl.backbones.torchvision_zoo.googlenet import INCEPTION_MEAN, INCEPTION_STD, named_layers


def cut_inception_v3(model: nn.Module) -> BackboneParts:
    """Five blocks, one per resolution (147, 71, 35, 17, 8 px at 299 px input):
    ``Conv2d_1a, 2a, 2b`` | ``maxpool1, Conv2d_3b, 4a`` | ``maxpool2, Mixed_5b … 5d`` |
    ``Mixed_6a … 6e`` | ``Mixed_7a … 7c``; head ``fc`` (2048 features)."""
    blocks = [
        named_layers(model, "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"),
        named_layers(model, "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),
        named_layers(model, "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d"),
        named_layers(model, "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
        named_layers(model, "Mixed_7a", "Mixed_7b", "Mixed_7c"),
    ]
    return BackboneParts(blocks, global_avg_pool(), model.fc, model.fc.in_features)


register_torchvision(
    "inception_v3",
    family="inception_v3",
    cut=cut_inception_v3,
    num_blocks=5,
    weights="Inception_V3_Weights.IMAGENET1K_V1",
    input_size=299,
    min_input_size=75,
    mean=INCEPTION_MEAN,
    std=INCEPTION_STD,
    transform_input=False,
    aux_logits=True,
    init_weights=True,
)
