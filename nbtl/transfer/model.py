"""From one :class:`~nbtl.config.TrialConfig`, the model and its training parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nbtl.backbones import Backbone, create_backbone, get_spec
from nbtl.backbones._registry import get_entry
from nbtl.config import TrialConfig
from nbtl.errors import ConfigError
from nbtl.regularizers import PenaltyWeights
from nbtl.transfer.heads import make_head
from nbtl.transfer.regularizer import Penalties, build_penalties, regularised_weights


class TransferModel(nn.Module):
    """A backbone, cut into blocks, with a new head; takes uint8 or [0, 1] float images.

    Images ``(N, 3, H, W)`` are scaled and normalised with the backbone's own mean / std, so
    data are stored once as uint8 and shared by every backbone of a search. Frozen blocks stay
    in eval mode (their BatchNorm statistics do not move either).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, freeze_blocks: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.freeze_blocks = freeze_blocks
        self.register_buffer("mean", torch.tensor(backbone.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.spec.std).view(1, 3, 1, 1), persistent=False)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.backbone.blocks

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalise(images)))

    def forward_to(self, images: torch.Tensor, end_block: int) -> torch.Tensor:
        """The output of ``blocks[end_block - 1]`` for ``images`` (blocks ``[0, end_block)``,
        unpooled); ``end_block=0`` returns the normalised images."""
        x = self.normalise(images)
        for block in list(self.blocks)[:end_block]:
            x = block(x)
        return x

    def forward_from(self, x: torch.Tensor, start_block: int) -> torch.Tensor:
        """Logits from an already computed block output: ``x`` is the output of block
        ``start_block - 1`` (see :meth:`forward_to`); runs ``blocks[start_block:]``, the pool and
        the head. ``forward_from(forward_to(images, k), k) == forward(images)``."""
        for block in list(self.blocks)[start_block:]:
            x = block(x)
        return self.head(self.backbone.pool(x))

    def set_head_only(self, head_only: bool, freeze_blocks: int) -> None:
        """Freeze every block (``head_only``, the LP-FT warm-up) or restore ``freeze_blocks``:
        frozen blocks are in eval mode with ``requires_grad`` off, the others train."""
        self.freeze_blocks = len(self.blocks) if head_only else freeze_blocks
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i >= self.freeze_blocks)
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        for block in list(self.blocks)[: self.freeze_blocks]:
            block.eval()
        return self


@dataclass
class TransferSetup:
    """Everything :func:`build_transfer` makes for one trial."""

    model: TransferModel
    optimizer: torch.optim.Optimizer
    regularizer: Penalties
    transfer_blocks: int
    reinitialized_blocks: list[int]
    frozen_blocks: list[int]

    def group_lrs(self) -> dict[str, float]:
        """Configured learning rate of every parameter group, by group name."""
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}


def reinitialize(module: nn.Module) -> None:
    """Re-initialise every layer of ``module`` that knows how: its own ``reset_parameters``
    (the layer's default init: Kaiming-uniform convolutions and linears, BatchNorm and
    LayerNorm to identity), or ``_reset_parameters`` (``nn.MultiheadAttention``: Xavier-uniform
    ``in_proj_weight``). Tensors a module owns without such a method (ConvNeXt's
    ``layer_scale``, Swin's relative position tables) are left alone: see
    :func:`reinitialize_blocks`, which resets those too."""
    for layer in module.modules():
        reset = getattr(layer, "reset_parameters", None)
        if not callable(reset):
            reset = getattr(layer, "_reset_parameters", None)
        if callable(reset):
            reset()


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def reinitialize_blocks(backbone: Backbone, indices, pretrained: bool = True) -> None:
    """Re-initialise ``backbone.blocks[i]`` for each ``i`` in ``indices``: every parameter and
    buffer, none keeping its pre-trained value.

    Layers first reset themselves (:func:`reinitialize`). A tensor that still holds its value
    afterwards is one its module owns without a reset method (ViT's class token, Swin's relative
    position bias tables and ``logit_scale``, ConvNeXt's ``layer_scale``); it gets the family's
    own initialisation, taken from a freshly built, randomly initialised copy of the same
    registered network (e.g. torchvision's ``layer_scale = 1e-6``, tables ~ trunc-normal(0.02),
    ``logit_scale = log 10``). The copy is built only when such a tensor exists, from torch's
    global random state, so a seeded trial stays reproducible.

    Parameters
    ----------
    backbone : Backbone
        Modified in place.
    indices : iterable of int
        The blocks to re-initialise.
    pretrained : bool, default=True
        Whether the blocks hold loaded weights. ``False``: they hold a fresh random init
        already, so tensors without a reset method already hold the family's init and no copy
        is built.
    """
    indices = list(indices)
    before = {i: {k: t.detach().clone() for k, t in _tensors(backbone.blocks[i]).items()} for i in indices}
    for i in indices:
        reinitialize(backbone.blocks[i])
    if not pretrained:
        return
    kept = {i: [k for k, t in _tensors(backbone.blocks[i]).items() if torch.equal(t, before[i][k])] for i in indices}
    if not any(kept.values()):
        return
    fresh = get_entry(backbone.spec.name).build()
    with torch.no_grad():
        for i, keys in kept.items():
            fresh_tensors = _tensors(fresh.blocks[i])
            tensors = _tensors(backbone.blocks[i])
            for key in keys:
                tensors[key].copy_(fresh_tensors[key])


def block_learning_rates(config: TrialConfig, num_blocks: int) -> list[float]:
    """Per-block learning rates: ``config.block_lrs`` if given, else ``lr × lr_decay^(B−1−i)``."""
    if config.block_lrs is not None:
        if len(config.block_lrs) != num_blocks:
            raise ConfigError(
                f"block_lrs has {len(config.block_lrs)} values but {config.backbone} has {num_blocks} blocks: give one per block"
            )
        return [float(v) for v in config.block_lrs]
    return [config.lr * config.lr_decay ** (num_blocks - 1 - i) for i in range(num_blocks)]


def resolve_blocks(config: TrialConfig) -> tuple[int, int]:
    """``(transfer_blocks, freeze_blocks)`` with ``None`` resolved and checked against the backbone."""
    num_blocks = get_spec(config.backbone).num_blocks
    transfer = num_blocks if config.transfer_blocks is None else config.transfer_blocks
    if not config.pretrained:
        transfer = 0
    if transfer > num_blocks:
        raise ConfigError(
            f"transfer_blocks={transfer} but {config.backbone} has {num_blocks} blocks: use 0..{num_blocks}"
        )
    if config.freeze_blocks > transfer:
        raise ConfigError(
            f"freeze_blocks={config.freeze_blocks} exceeds transfer_blocks={transfer} for {config.backbone}: "
            "only transferred blocks can be frozen"
        )
    return transfer, config.freeze_blocks


def build_transfer(
    config: TrialConfig, num_classes: int, state_dict: dict[str, Any] | None = None, weights_path: str | None = None
) -> TransferSetup:
    """Build the model, its per-block optimizer and its regulariser for one trial.

    Blocks ``[0, transfer_blocks)`` keep the pre-trained weights (``state_dict`` if given, which a
    search ships once to all trials; else the backbone's default source), blocks from
    ``transfer_blocks`` on are re-initialised, and blocks ``[0, freeze_blocks)`` do not train.
    The optimizer has one parameter group per trainable block (named ``block{i}``) plus ``head``,
    and no weight decay: regularisation is the registered penalties alone (:mod:`nbtl.regularizers`), among them
    :class:`L2SPRegularizer`, with L2-SP on the
    transferred blocks below ``l2sp_blocks`` (all of them when unset) and plain L2 on the rest.
    """
    transfer, freeze = resolve_blocks(config)
    torch.manual_seed(config.seed)
    backbone = create_backbone(
        config.backbone,
        pretrained=config.pretrained and transfer > 0,
        weights_path=weights_path,
        state_dict=state_dict if transfer > 0 else None,
    )
    num_blocks = len(backbone.blocks)
    reinitialized = list(range(transfer, num_blocks))
    reinitialize_blocks(backbone, reinitialized, pretrained=transfer > 0)
    frozen = list(range(freeze))
    for i in frozen:
        backbone.blocks[i].requires_grad_(False)
    # The source head is not part of the transferred network.
    if backbone.source_head is not None:
        backbone.source_head.requires_grad_(False)
    head = make_head(
        config.head, backbone.feature_dim, num_classes, width=config.head_width, dropout=config.head_dropout
    )
    model = TransferModel(backbone, head, freeze_blocks=freeze)

    lrs = block_learning_rates(config, num_blocks)
    groups = []
    for i, block in enumerate(backbone.blocks):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lrs[i], "name": f"block{i}"})
    groups.append({"params": list(head.parameters()), "lr": config.effective_head_lr(), "name": "head"})
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, weight_decay=0.0
        )
    else:
        optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=0.0)

    anchored_end = transfer if config.l2sp_blocks is None else max(freeze, min(config.l2sp_blocks, transfer))
    transferred = [p for i in range(freeze, anchored_end) for p in regularised_weights(backbone.blocks[i])]
    unanchored = [p for i in range(anchored_end, transfer) for p in regularised_weights(backbone.blocks[i])]
    head_weights = regularised_weights(head)
    new = [p for i in reinitialized for p in regularised_weights(backbone.blocks[i])] + head_weights
    weights = PenaltyWeights(anchored=transferred, unanchored=unanchored, new=new, head=head_weights)
    regularizer = build_penalties(weights, config)  # every registered regulariser's term (nbtl.regularizers)
    return TransferSetup(model, optimizer, regularizer, transfer, reinitialized, frozen)


def frozen_state_keys(model: TransferModel, freeze: int) -> set[str]:
    """The ``state_dict`` keys of the blocks that never train (``blocks[:freeze]``: eval mode, no gradient):
    they hold what :func:`build_transfer` made from the pre-trained weights and the seed, so a resumed trial
    rebuilds them and a checkpoint on disk may leave them out."""
    frozen = {id(t) for block in list(model.blocks)[:freeze] for t in (*block.parameters(), *block.buffers())}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in frozen}


def load_trainable_state(model: TransferModel, state: dict[str, torch.Tensor], freeze: int) -> None:
    """Load what a trial's checkpoint keeps (every tensor but the frozen blocks', :func:`frozen_state_keys`) into
    ``model``, built as the trial built it; anything else missing, or anything unexpected, is a ``ValueError``."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    absent = set(missing) - frozen_state_keys(model, freeze)
    if unexpected or absent:
        raise ValueError(
            f"the checkpoint does not fit this trial's model: {len(absent)} missing and "
            f"{len(unexpected)} unexpected entries (e.g. {sorted(absent or unexpected)[0]})"
        )
