"""EfficientNet [1]_ and EfficientNetV2 [2]_ (torchvision's): stem, one block per MBConv stage, last 1x1 conv.

References
----------
.. [1] Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019.
.. [2] Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool, remove_dropout
from nbtl.backbones.torchvision_zoo._common import classifier_in_features, register_torchvision


def cut_efficientnet(model: nn.Module) -> BackboneParts:
    """Stem ``features[0]``, each stage ``features[1:-1]`` (7 for B0–B7, 6 for V2-S), the final
    1x1 conv ``features[-1]``; head ``classifier`` (dropout removed)."""
    features = model.features
    blocks = [features[0], *features[1:-1], features[-1]]
    return BackboneParts(
        blocks, global_avg_pool(), remove_dropout(model.classifier), classifier_in_features(model.classifier)
    )


_efficientnet = partial(register_torchvision, family="efficientnet", cut=cut_efficientnet, num_blocks=9)

_efficientnet("efficientnet_b0", weights="EfficientNet_B0_Weights.IMAGENET1K_V1", input_size=224)
_efficientnet("efficientnet_b1", weights="EfficientNet_B1_Weights.IMAGENET1K_V2", input_size=240)
_efficientnet("efficientnet_b2", weights="EfficientNet_B2_Weights.IMAGENET1K_V1", input_size=288)
_efficientnet("efficientnet_b3", weights="EfficientNet_B3_Weights.IMAGENET1K_V1", input_size=300)
register_torchvision(
    "efficientnet_v2_s",
    family="efficientnet_v2",
    cut=cut_efficientnet,
    num_blocks=8,
    weights="EfficientNet_V2_S_Weights.IMAGENET1K_V1",
    input_size=384,
)
