"""The :class:`Backbone` module: a pre-trained network cut into an ordered list of blocks.

The cut is what non-binary transfer works on: how many blocks keep pre-trained weights, how
many are frozen, one learning rate per block (Plested, Shen & Gedeon 2021, arXiv 2107.08585).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from nbtl.errors import BackboneError


@dataclass(frozen=True)
class BackboneSpec:
    """What a registered backbone is, without building it.

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"resnet18"``.
    family : str
        Architecture family, e.g. ``"resnet"``, ``"mobilenet_v3"``, ``"efficientnet_lite"``.
    num_blocks : int
        Length of :attr:`Backbone.blocks` (stem first, last stage last; the head is not a block).
    input_size : int
        Native square resolution the weights were trained at, e.g. 224.
    mean, std : tuple of 3 floats
        Per-channel normalisation of ``[0, 1]`` RGB images the weights expect:
        ``x_norm = (x - mean) / std``.
    weights : str
        Human-readable source of the default pre-trained weights.
    num_source_classes : int, default=1000
        Number of classes of the source (ImageNet) head.
    min_input_size : int, default=32
        Smallest square input side (px) supported, and the size the tests run the backbone at:
        32 unless the network needs more (AlexNet 63, Inception v3 75: unpadded convolutions
        and pools in their stems). Some networks also run on smaller inputs, but their last
        stages then see 1x1 maps. Sizes between this and ``input_size`` work; the weights were
        trained at ``input_size``.
    """

    name: str
    family: str
    num_blocks: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    num_source_classes: int = 1000
    min_input_size: int = 32


class BackboneParts(NamedTuple):
    """What a family's *cut* function returns from a native network (see ``register_backbone``).

    ``source_head_on_map=True`` says the source head reads the last block's unpooled output
    rather than the pooled features (SqueezeNet's classifier convolves, then pools).
    """

    blocks: list[nn.Module]
    pool: nn.Module
    source_head: nn.Module | None
    feature_dim: int
    source_head_on_map: bool = False


def global_avg_pool() -> nn.Module:
    """``(N, C, H, W) -> (N, C)`` global average pooling."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class Backbone(nn.Module):
    """A network cut into ordered blocks, a pooling layer and its source (ImageNet) head.

    The output of ``blocks[i]`` feeds ``blocks[i + 1]``; ``pool`` turns the last block's
    output into features ``(N, feature_dim)``; ``source_head`` maps those features to source
    logits ``(N, spec.num_source_classes)``. Inputs are already normalised float images
    ``(N, 3, H, W)`` (see ``spec.mean`` / ``spec.std``), ``H, W >= spec.min_input_size``.

    Block outputs are ``(N, C, H, W)`` maps for every family but ViT, whose blocks pass tokens
    ``(N, 1 + L, D)`` (class token first).

    Build instances with :func:`nbtl.backbones.create_backbone`. The state dict keys are
    ``blocks.{i}.…``, ``pool.…`` and ``source_head.…`` (the *Backbone key format*).

    Parameters
    ----------
    spec : BackboneSpec
        The registered description; ``len(blocks)`` must equal ``spec.num_blocks``.
    blocks : sequence of nn.Module
        Stem first, last stage last.
    pool : nn.Module
        Last block output ``-> (N, feature_dim)``.
    source_head : nn.Module or None
        ``(N, feature_dim) -> (N, spec.num_source_classes)``; ``None`` if the family has none.
    feature_dim : int
        Width of the pooled features.
    source_head_on_map : bool, default=False
        Whether ``source_head`` reads the last block's output instead of the pooled features.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        blocks,
        pool: nn.Module,
        source_head: nn.Module | None,
        feature_dim: int,
        source_head_on_map: bool = False,
    ):
        super().__init__()
        if len(blocks) != spec.num_blocks:
            raise BackboneError(
                f"backbone {spec.name!r} was cut into {len(blocks)} blocks but its spec says "
                f"num_blocks={spec.num_blocks}; fix the family's cut function or the registered num_blocks"
            )
        self.spec = spec
        self.blocks = nn.ModuleList(blocks)
        self.pool = pool
        self.source_head = source_head
        self.feature_dim = int(feature_dim)
        self.source_head_on_map = bool(source_head_on_map)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``(N, feature_dim)`` of normalised images ``x`` ``(N, 3, H, W)``."""
        return self.pool(self._last_block_output(x))

    def _last_block_output(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward_blocks(self, x: Tensor) -> list[Tensor]:
        """The output of every block, in order (``num_blocks`` tensors, unpooled)."""
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def source_logits(self, x: Tensor) -> Tensor:
        """Source-task logits ``(N, spec.num_source_classes)``: ``source_head(forward(x))``
        (``source_head(last block output)`` when ``source_head_on_map``)."""
        if self.source_head is None:
            raise BackboneError(
                f"backbone {self.spec.name!r} has no source head; use a backbone with one for "
                "measures that read source predictions (LEEP, NCE)"
            )
        if self.source_head_on_map:
            return self.source_head(self._last_block_output(x))
        return self.source_head(self.forward(x))

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, num_blocks={self.spec.num_blocks}, feature_dim={self.feature_dim}"


def remove_dropout(head: nn.Module) -> nn.Module:
    """Replace the direct ``nn.Dropout`` children of ``head`` by ``nn.Identity`` (in place).

    The source head only reads source predictions (LEEP, NCE) and is never trained, so it is
    made deterministic in train mode too. Dropout has no parameters: state dict keys are kept.
    """
    for child_name, child in head.named_children():
        if isinstance(child, nn.Dropout):
            setattr(head, child_name, nn.Identity())
    return head


def downsamples(module: nn.Module) -> bool:
    """Whether any convolution inside ``module`` has a stride above 1."""
    return any(isinstance(m, nn.Conv2d) and any(s > 1 for s in m.stride) for m in module.modules())


def split_where(layers, starts_block: Callable[[nn.Module], bool]) -> list[nn.Module]:
    """Split consecutive layers into blocks: a new block starts at each layer where
    ``starts_block(layer)`` is true (and at the first layer).

    Returns one ``nn.Sequential`` per block, holding the original layer objects.
    """
    groups: list[list[nn.Module]] = []
    for layer in layers:
        if not groups or starts_block(layer):
            groups.append([])
        groups[-1].append(layer)
    return [nn.Sequential(*group) for group in groups]


def group_into_stages(layers) -> list[nn.Module]:
    """Group consecutive layers by output resolution: a new stage starts at each layer holding a
    strided convolution (see :func:`split_where`)."""
    return split_where(layers, downsamples)
