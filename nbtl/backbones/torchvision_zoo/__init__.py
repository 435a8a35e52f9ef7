"""torchvision classification networks, cut into blocks: one module per family.

Each family module holds the family's cut function (which modules form the blocks, what pools
them, which is the ImageNet head) and one :func:`register_torchvision` call per variant, e.g.
``resnet.py`` registers ``resnet18`` … ``wide_resnet50_2``. Adding a variant of a family is one
call there; adding a family is one module with its cut function and its calls, imported below.

Default weights are the torchvision ``Weights`` enum's ``DEFAULT`` member (e.g.
``ResNet50_Weights.IMAGENET1K_V2``), read from the torch hub cache
``torch.hub.get_dir()/checkpoints/`` where torchvision keeps them; ``input_size``, ``mean`` and
``std`` are those of the weights' ``transforms()`` (GoogLeNet and Inception v3 fold their
``transform_input`` step into mean = std = 0.5, see :mod:`.googlenet`). torchvision itself is
imported only when a network is built or its weights are read.

References
----------
.. [1] TorchVision maintainers, "TorchVision: PyTorch's computer vision library", 2016,
       https://github.com/pytorch/vision (``torchvision.models``, multi-weight API).
"""

from nbtl.backbones.torchvision_zoo._common import IMAGENET_MEAN, IMAGENET_STD, register_torchvision

# Importing a family module registers its variants.
from nbtl.backbones.torchvision_zoo import (  # noqa: E402,F401  isort: skip
    alexnet,
    convnext,
    densenet,
    efficientnet,
    googlenet,
    inception,
    maxvit,
    mnasnet,
    mobilenet,
    regnet,
    resnet,
    shufflenet,
    squeezenet,
    swin,
    vgg,
    vit,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "register_torchvision"]
