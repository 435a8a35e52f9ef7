"""Classifier heads put on a backbone's pooled features: linear, MLP and SpinalNet's spinal layer (their builders,
registered by name in :mod:`nbtl.heads`)."""

from __future__ import annotations

import torch
from torch import nn

from nbtl.heads import get_head


class SpinalHead(nn.Module):
    """SpinalNet's spinal fully connected layer (Kabir et al., "SpinalNet: Deep neural network
    with gradual input", 2020; as used on torchvision backbones by Albardi et al. 2021).

    The input features are split in two halves ``A`` and ``B``. Hidden layer 1 sees ``A``;
    layer 2 sees ``[B, h1]``; layer 3 ``[A, h2]``; layer 4 ``[B, h3]`` (alternating halves for
    ``num_layers`` layers). The output layer is linear over ``[h1, h2, ..., hL]``.
    Each hidden layer is ``Dropout → Linear → ReLU`` (the ResNet-feature variant).

    Parameters
    ----------
    in_features : int
        Width ``D`` of the pooled features, shape ``(N, D)``.
    num_classes : int
        Output width ``C``; the output has shape ``(N, C)``.
    width : int
        Width ``W`` of every hidden layer.
    num_layers : int
        Number of spinal hidden layers (4 in the paper).
    dropout : float
        Dropout probability in front of every hidden layer.
    """

    def __init__(self, in_features: int, num_classes: int, width: int = 128, num_layers: int = 4, dropout: float = 0.0):
        super().__init__()
        self.half = in_features // 2
        self.halves = (self.half, in_features - self.half)
        layers = []
        for i in range(num_layers):
            fan_in = self.halves[i % 2] + (width if i else 0)
            layers.append(nn.Sequential(nn.Dropout(dropout), nn.Linear(fan_in, width), nn.ReLU(inplace=True)))
        self.layers = nn.ModuleList(layers)
        self.output = nn.Linear(width * num_layers, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        halves = (features[:, : self.half], features[:, self.half :])
        outputs: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            inputs = halves[i % 2] if i == 0 else torch.cat([halves[i % 2], outputs[-1]], dim=1)
            outputs.append(layer(inputs))
        return self.output(torch.cat(outputs, dim=1))


def linear_head(in_features: int, num_classes: int, *, width: int = 256, dropout: float = 0.0) -> nn.Module:
    """``linear``: dropout, then one linear layer (``width`` unused)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def mlp_head(in_features: int, num_classes: int, *, width: int = 256, dropout: float = 0.0) -> nn.Module:
    """``mlp``: one hidden ReLU layer of ``width``, dropout in front of each linear layer."""
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_features, width),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(width, num_classes),
    )


def spinal_head(in_features: int, num_classes: int, *, width: int = 256, dropout: float = 0.0) -> nn.Module:
    """``spinal``: :class:`SpinalHead` with four layers of ``width``."""
    return SpinalHead(in_features, num_classes, width=width, dropout=dropout)


def make_head(kind: str, in_features: int, num_classes: int, width: int = 256, dropout: float = 0.0) -> nn.Module:
    """Build the head registered as ``kind`` (:mod:`nbtl.heads`: ``linear``, ``mlp``, ``spinal``, or one of yours)."""
    return get_head(kind).build(in_features, num_classes, width=width, dropout=dropout)
