"""ConvNeXt [1]_: stem, then one block per stage (each downsampling layer opens its stage).

ConvNeXt normalises *after* pooling: its classifier is LayerNorm2d, Flatten, Linear, applied to
the pooled ``(N, C, 1, 1)`` map. That LayerNorm is pre-trained and belongs with the features
(timm's ``pre_logits`` include it too), so the last block ends with the average pool and the
LayerNorm: its output is ``(N, C, 1, 1)``, and ``pool`` only flattens. The source head is the
final Linear.

References
----------
.. [1] Liu, Mao, Wu, Feichtenhofer, Darrell & Xie, "A ConvNet for the 2020s", CVPR 2022.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from nbtl.backbones._backbone import BackboneParts
from nbtl.backbones.torchvision_zoo._common import register_torchvision


def cut_convnext(model: nn.Module) -> BackboneParts:
    """Five blocks: stem ``features[0]`` | stage ``features[1]`` | downsample + stage
    ``features[2:4]`` | ``features[4:6]`` | ``features[6:8]``, average pool, head LayerNorm."""
    f = model.features
    norm, _flatten, linear = model.classifier
    blocks = [
        f[0],
        f[1],
        nn.Sequential(f[2], f[3]),
        nn.Sequential(f[4], f[5]),
        nn.Sequential(f[6], f[7], model.avgpool, norm),
    ]
    return BackboneParts(blocks, nn.Flatten(1), linear, linear.in_features)


_convnext = partial(register_torchvision, family="convnext", cut=cut_convnext, num_blocks=5)

_convnext("convnext_tiny", weights="ConvNeXt_Tiny_Weights.IMAGENET1K_V1")
_convnext("convnext_small", weights="ConvNeXt_Small_Weights.IMAGENET1K_V1")
_convnext("convnext_base", weights="ConvNeXt_Base_Weights.IMAGENET1K_V1")
_convnext("convnext_large", weights="ConvNeXt_Large_Weights.IMAGENET1K_V1")
