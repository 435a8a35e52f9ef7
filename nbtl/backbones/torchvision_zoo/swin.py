"""Swin Transformer [1]_ and Swin V2 [2]_: patch embedding, then one block per stage.

torchvision's Swin keeps its maps channels-last ``(N, H, W, C)`` between stages. Each block here
permutes its output to ``(N, C, H, W)``, as every convolutional family's blocks give, and the
next block permutes back; the last block ends with the final LayerNorm and torchvision's own
permute. Windows are padded to whole windows, so any size from 32 px up works (the weights were
trained at 224 px for Swin-T/S/B and 256 px for Swin-V2-T/S/B).

References
----------
.. [1] Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021.
.. [2] Liu et al., "Swin Transformer V2: Scaling Up Capacity and Resolution", CVPR 2022.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones.torchvision_zoo._common import register_torchvision


class Permute(nn.Module):
    """``x.permute(*dims)`` (torchvision's ``ops.misc.Permute``, without importing torchvision here)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


def channels_first() -> nn.Module:
    """``(N, H, W, C) -> (N, C, H, W)``."""
    return Permute(0, 3, 1, 2)


def channels_last() -> nn.Module:
    """``(N, C, H, W) -> (N, H, W, C)``."""
    return Permute(0, 2, 3, 1)


def cut_swin(model: nn.Module) -> BackboneParts:
    """Five blocks: patch embedding ``features[0]`` | stage 1 ``features[1]`` | patch merging +
    stage ``features[2:4]`` | ``features[4:6]`` | ``features[6:8]``, ``norm``; head ``head``."""
    f = model.features
    blocks = [
        nn.Sequential(f[0], channels_first()),
        nn.Sequential(channels_last(), f[1], channels_first()),
        nn.Sequential(channels_last(), f[2], f[3], channels_first()),
        nn.Sequential(channels_last(), f[4], f[5], channels_first()),
        nn.Sequential(channels_last(), f[6], f[7], model.norm, model.permute),
    ]
    return BackboneParts(blocks, global_avg_pool(), model.head, model.head.in_features)


_swin = partial(register_torchvision, family="swin", cut=cut_swin, num_blocks=5)

_swin("swin_t", weights="Swin_T_Weights.IMAGENET1K_V1")
_swin("swin_s", weights="Swin_S_Weights.IMAGENET1K_V1")
_swin("swin_b", weights="Swin_B_Weights.IMAGENET1K_V1")

_swin_v2 = partial(register_torchvision, family="swin_v2", cut=cut_swin, num_blocks=5, input_size=256)

_swin_v2("swin_v2_t", weights="Swin_V2_T_Weights.IMAGENET1K_V1")
_swin_v2("swin_v2_s", weights="Swin_V2_S_Weights.IMAGENET1K_V1")
_swin_v2("swin_v2_b", weights="Swin_V2_B_Weights.IMAGENET1K_V1")
