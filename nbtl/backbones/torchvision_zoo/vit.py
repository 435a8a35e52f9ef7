"""Vision Transformer [1]_: patch embedding, then groups of encoder layers; features = class token.

Blocks pass tokens ``(N, 1 + L, D)``, class token first. The first block is the patch
embedding with the class token and position embedding; each further block is
a quarter of the encoder layers (ViT-B: 12 layers in 4 blocks of 3, ViT-L 6, ViT-H 8); the last
block ends with the encoder's final LayerNorm. ``pool`` takes the class token, as torchvision's
classifier does.

Input size: torchvision's ViT accepts only its native ``image_size`` (224; 518 for ViT-H/14). The
patch-embedding block here also takes other sizes: the position embedding of the native patch
grid is then resized bicubically to the input's grid (as timm's ``resample_abs_pos_embed``
does, and as fine-tuning at another resolution does [1]_). At the native size it is torchvision's
ViT exactly; elsewhere an approximation, and the features drift the further the size is from it.
Sides are cut to whole patches (``H // 16``); the smallest input is one patch (14 to 32 px).

References
----------
.. [1] Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
       Scale", ICLR 2021.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbtl.backbones._backbone import BackboneParts
from nbtl.backbones.torchvision_zoo._common import register_torchvision


class PatchEmbedding(nn.Module):
    """``(N, 3, H, W) -> (N, 1 + (H // p) * (W // p), D)``: patches, class token, position embedding.

    Holds torchvision's own ``conv_proj``, ``class_token`` and ``encoder.pos_embedding``
    (the same parameters, so the native weights map onto it).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.conv_proj = model.conv_proj
        self.class_token = model.class_token
        self.pos_embedding = model.encoder.pos_embedding
        self.dropout = model.encoder.dropout

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """The position embedding for a ``grid_h x grid_w`` patch grid, resized if not native."""
        pos = self.pos_embedding
        side = math.isqrt(pos.shape[1] - 1)
        if (grid_h, grid_w) == (side, side):
            return pos
        cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
        grid_pos = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(grid_h, grid_w), mode="bicubic", align_corners=False, antialias=True)
        return torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x)
        n, _, grid_h, grid_w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.position_embedding(grid_h, grid_w))

    def reset_parameters(self) -> None:
        # torchvision's initialisation of the two tensors this module owns directly;
        # conv_proj resets itself.
        nn.init.zeros_(self.class_token)
        nn.init.normal_(self.pos_embedding, std=0.02)


class ClassToken(nn.Module):
    """``(N, 1 + L, D) -> (N, D)``: the first token."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 0]


def cut_vit(model: nn.Module, layers_per_block: int | None = None) -> BackboneParts:
    """Patch embedding, then the encoder layers in groups of ``layers_per_block`` (default: a
    quarter of the layers, so four groups: 3 for ViT-B, 6 for ViT-L, 8 for ViT-H), the last group
    with the final LayerNorm ``encoder.ln``; features: the class token; head ``heads``."""
    layers = list(model.encoder.layers)
    layers_per_block = layers_per_block or max(1, len(layers) // 4)
    groups = [layers[i : i + layers_per_block] for i in range(0, len(layers), layers_per_block)]
    groups[-1].append(model.encoder.ln)
    blocks = [PatchEmbedding(model), *(nn.Sequential(*group) for group in groups)]
    return BackboneParts(blocks, ClassToken(), model.heads, model.hidden_dim)


_vit = partial(register_torchvision, family="vit", cut=cut_vit, num_blocks=5)

_vit("vit_b_16", weights="ViT_B_16_Weights.IMAGENET1K_V1")
_vit("vit_b_32", weights="ViT_B_32_Weights.IMAGENET1K_V1")
_vit("vit_l_16", weights="ViT_L_16_Weights.IMAGENET1K_V1")
_vit("vit_l_32", weights="ViT_L_32_Weights.IMAGENET1K_V1")
# torchvision's only ViT-H/14 ImageNet weights: SWAG pre-training, fine-tuned end to end at 518 px.
# torchvision builds the network for them at image_size=518 (a 37x37 position embedding).
_vit("vit_h_14", weights="ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1", input_size=518, image_size=518)
