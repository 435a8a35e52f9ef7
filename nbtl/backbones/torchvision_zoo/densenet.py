"""DenseNet [1]_: stem, then one block per dense block (each transition opens the next block).

References
----------
.. [1] Huang, Liu, van der Maaten & Weinberger, "Densely Connected Convolutional Networks", CVPR 2017.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones.torchvision_zoo._common import register_torchvision


def cut_densenet(model: nn.Module) -> BackboneParts:
    """Five blocks: stem (conv0, norm0, relu0, pool0) | denseblock1 | transition1, denseblock2 |
    transition2, denseblock3 | transition3, denseblock4, norm5, ReLU; head ``classifier``."""
    f = model.features
    blocks = [
        nn.Sequential(OrderedDict(conv0=f.conv0, norm0=f.norm0, relu0=f.relu0, pool0=f.pool0)),
        nn.Sequential(OrderedDict(denseblock1=f.denseblock1)),
        nn.Sequential(OrderedDict(transition1=f.transition1, denseblock2=f.denseblock2)),
        nn.Sequential(OrderedDict(transition2=f.transition2, denseblock3=f.denseblock3)),
        # torchvision applies this last ReLU functionally in DenseNet.forward.
        nn.Sequential(
            OrderedDict(transition3=f.transition3, denseblock4=f.denseblock4, norm5=f.norm5, relu5=nn.ReLU())
        ),
    ]
    return BackboneParts(blocks, global_avg_pool(), model.classifier, model.classifier.in_features)


_densenet = partial(register_torchvision, family="densenet", cut=cut_densenet, num_blocks=5)

_densenet("densenet121", weights="DenseNet121_Weights.IMAGENET1K_V1")
_densenet("densenet161", weights="DenseNet161_Weights.IMAGENET1K_V1")
_densenet("densenet169", weights="DenseNet169_Weights.IMAGENET1K_V1")
_densenet("densenet201", weights="DenseNet201_Weights.IMAGENET1K_V1")
