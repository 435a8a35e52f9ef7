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
    """Stem ``features[0]``, each stage ``features[1:-1]`` (7 for B0–B7 and V2-M / V2-L, 6 for V2-S), the final
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
_efficientnet("efficientnet_b4", weights="EfficientNet_B4_Weights.IMAGENET1K_V1", input_size=380)
_efficientnet("efficientnet_b5", weights="EfficientNet_B5_Weights.IMAGENET1K_V1", input_size=456)
_efficientnet("efficientnet_b6", weights="EfficientNet_B6_Weights.IMAGENET1K_V1", input_size=528)
_efficientnet("efficientnet_b7", weights="EfficientNet_B7_Weights.IMAGENET1K_V1", input_size=600)

# V2-S has six MBConv / Fused-MBConv stages, V2-M and V2-L seven.
_efficientnet_v2 = partial(register_torchvision, family="efficientnet_v2", cut=cut_efficientnet)

_efficientnet_v2("efficientnet_v2_s", num_blocks=8, weights="EfficientNet_V2_S_Weights.IMAGENET1K_V1", input_size=384)
_efficientnet_v2("efficientnet_v2_m", num_blocks=9, weights="EfficientNet_V2_M_Weights.IMAGENET1K_V1", input_size=480)
# V2-L's weights (ported from the original TensorFlow ones) expect mean = std = 0.5.
_efficientnet_v2(
    "efficientnet_v2_l",
    num_blocks=9,
    weights="EfficientNet_V2_L_Weights.IMAGENET1K_V1",
    input_size=480,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)
