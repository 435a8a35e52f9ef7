"""MaxViT [1]_: convolutional stem, the four MaxViT stages, and the pre-logits head as a block.

torchvision's classifier is average pool, LayerNorm, Linear + Tanh (the "pre-logits" layer,
as timm's ``NormMlpClassifierHead``), then the bias-free ImageNet Linear. The pooled, normalised
512-wide Tanh output is what timm calls the features, so it is the sixth block here, kept as a
``(N, 512, 1, 1)`` map like every convolutional family's blocks (see ConvNeXt's last block);
``pool`` only flattens, and the source head is the last Linear. Six blocks: stem | stage 1 …
stage 4 | pre-logits; ``transfer_blocks=5`` keeps every stage and re-initialises the pre-logits.

Input size: torchvision's MaxViT fixes the grid of every stage when it is built (224 px:
56, 28, 14, 7) and partitions it into 7x7 windows and grids, so it takes 224x224 inputs only;
the stem block says so in one line for any other size.

References
----------
.. [1] Tu, Talebi, Zhang, Yang, Milanfar, Bovik & Li, "MaxViT: Multi-Axis Vision Transformer", ECCV 2022.
"""

from __future__ import annotations

from torch import Tensor, nn

from nbtl.backbones._backbone import BackboneParts
from nbtl.backbones.torchvision_zoo._common import register_torchvision
from nbtl.backbones.torchvision_zoo.swin import channels_first, channels_last
from nbtl.errors import BackboneError


class InputSizeCheck(nn.Module):
    """Passes ``(N, 3, H, W)`` through if ``H == W == size``, else raises ``BackboneError``."""

    def __init__(self, name: str, size: int):
        super().__init__()
        self.name, self.size = name, size

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            raise BackboneError(
                f"{self.name} takes {self.size}x{self.size} images only (its attention grids are fixed "
                f"when it is built), got {x.shape[-2]}x{x.shape[-1]}; use image_size={self.size}"
            )
        return x

    def extra_repr(self) -> str:
        return f"size={self.size}"


def cut_maxvit(model: nn.Module, name: str = "maxvit_t", size: int = 224) -> BackboneParts:
    """Six blocks: ``stem`` (after the input size check) | ``blocks[0]`` … ``blocks[3]`` |
    average pool, LayerNorm, Linear, Tanh (``classifier[0:5]``) as a ``(N, C, 1, 1)`` map;
    head: the ImageNet Linear ``classifier[5]``."""
    pool, _flatten, norm, pre_logits, tanh, linear = model.classifier
    head_block = nn.Sequential(pool, channels_last(), norm, pre_logits, tanh, channels_first())
    blocks = [nn.Sequential(InputSizeCheck(name, size), model.stem), *model.blocks, head_block]
    return BackboneParts(blocks, nn.Flatten(1), linear, linear.in_features)


register_torchvision(
    "maxvit_t",
    family="maxvit",
    cut=cut_maxvit,
    num_blocks=6,
    weights="MaxVit_T_Weights.IMAGENET1K_V1",
    min_input_size=224,
)
