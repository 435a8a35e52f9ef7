"""Turn one trial config into a model with kept / re-initialised / frozen blocks, a head,
per-block learning rates and the L2-SP + L2 regulariser."""

from nbtl.transfer.heads import SpinalHead, make_head
from nbtl.transfer.model import (
    TransferModel,
    TransferSetup,
    block_learning_rates,
    build_transfer,
    frozen_state_keys,
    load_trainable_state,
    reinitialize,
    reinitialize_blocks,
    resolve_blocks,
)
from nbtl.transfer.regularizer import L2SPRegularizer, Penalties, build_penalties, l2sp_penalty, regularised_weights

__all__ = [
    "L2SPRegularizer",
    "Penalties",
    "SpinalHead",
    "TransferModel",
    "TransferSetup",
    "block_learning_rates",
    "build_penalties",
    "build_transfer",
    "l2sp_penalty",
    "frozen_state_keys",
    "load_trainable_state",
    "make_head",
    "regularised_weights",
    "reinitialize",
    "reinitialize_blocks",
    "resolve_blocks",
]
