"""RegNet [1]_ (X and Y): stem, then the four stages of the trunk.

torchvision derives a RegNet's stage widths with tensor operations
(``BlockParams.from_init_params``) and reads them back with ``.tolist()``, which a network built
on the meta device cannot do. :func:`build_regnet` runs that small computation on the CPU, so
the network itself can still be built on the meta device (no memory, no initialisation cost:
``regnet_y_128gf`` has 645 M parameters).

References
----------
.. [1] Radosavovic, Kosaraju, Girshick, He & Dollár, "Designing Network Design Spaces", CVPR 2020.
"""

from __future__ import annotations

import threading
from functools import partial

import torch
from torch import nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones.torchvision_zoo._common import build_torchvision, register_torchvision

_BUILD_LOCK = threading.Lock()


def build_regnet(name: str, **kwargs) -> nn.Module:
    """:func:`build_torchvision` with the stage widths computed on the CPU whatever the default
    device (``torch.device("meta")`` included)."""
    from torchvision.models import regnet

    original = regnet.BlockParams.__dict__["from_init_params"]  # the classmethod object

    def on_cpu(cls, *args, **kw):
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kw)

    with _BUILD_LOCK:
        regnet.BlockParams.from_init_params = classmethod(on_cpu)
        try:
            return build_torchvision(name, **kwargs)
        finally:
            regnet.BlockParams.from_init_params = original


def cut_regnet(model: nn.Module) -> BackboneParts:
    """Five blocks: ``stem`` | ``trunk_output.block1`` … ``block4``; head ``fc``."""
    blocks = [model.stem, *model.trunk_output]
    return BackboneParts(blocks, global_avg_pool(), model.fc, model.fc.in_features)


_regnet = partial(register_torchvision, family="regnet", cut=cut_regnet, num_blocks=5, build=build_regnet)

for _size in ("400MF", "800MF", "1_6GF", "3_2GF", "8GF", "16GF", "32GF"):
    _regnet(f"regnet_x_{_size.lower()}", weights=f"RegNet_X_{_size}_Weights.IMAGENET1K_V2")
    _regnet(f"regnet_y_{_size.lower()}", weights=f"RegNet_Y_{_size}_Weights.IMAGENET1K_V2")
# torchvision's only RegNet-Y 128GF ImageNet weights: SWAG pre-training, fine-tuned end to end at 384 px.
_regnet("regnet_y_128gf", weights="RegNet_Y_128GF_Weights.IMAGENET1K_SWAG_E2E_V1", input_size=384)
