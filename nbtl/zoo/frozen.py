"""A new head on frozen features (Puls et al.): one fold of a ``frozen`` zoo study, in seconds on a CPU.

The features are the pooled output of the backbone's last block, as ``nbtl fit`` caches them
(:func:`nbtl.fit.block_features`); the head (:func:`nbtl.transfer.heads.make_head`: ``linear``, ``mlp`` or
SpinalNet's ``spinal`` layer) is trained from a seeded initialisation with Adam on features standardised
with the training part's mean and deviation, and predicts the held-out part; the ``linear`` head is fitted as
a linear probe (L-BFGS logistic regression, L2 strength cross-validated). Plain PyTorch and scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nbtl.fit.probe import fit_linear_probe
from nbtl.transfer.heads import make_head

__all__ = ["HeadRecipe", "train_head"]


@dataclass(frozen=True)
class HeadRecipe:
    """How a head is trained on frozen features: ``epochs`` passes over the training part in mini-batches
    of ``batch_size``, Adam at ``lr`` with L2 ``weight_decay``; ``width`` and ``dropout`` of the
    ``mlp`` / ``spinal`` head's hidden layers."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 128
    dropout: float = 0.0

    def to_params(self) -> dict[str, float]:
        return {f"head_{k}" if k in ("width", "dropout") else k: v for k, v in self.__dict__.items()}


def train_head(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    head: str,
    num_classes: int,
    recipe: HeadRecipe = HeadRecipe(),
    seed: int = 0,
) -> np.ndarray:
    """Train ``head`` on ``train_features`` ``(N, D)`` / ``train_labels`` ``(N,)`` and return its predicted
    classes ``(M,)`` for ``test_features`` ``(M, D)``. Same inputs and seed, same predictions.

    The ``linear`` head is the linear probe as the field fits it (:func:`nbtl.fit.probe.fit_linear_probe`:
    L-BFGS logistic regression, its L2 strength cross-validated on the training part); ``recipe`` is for the
    heads with hidden layers (``mlp``, ``spinal``), trained with Adam."""
    if head == "linear":
        probe = fit_linear_probe(train_features, train_labels, num_classes, random_state=int(seed))
        return probe.logits(test_features).argmax(1)

    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))  # the head's initialisation and dropout
    mean = train_features.mean(axis=0, keepdims=True)
    scale = train_features.std(axis=0, keepdims=True) + 1e-6
    x = torch.as_tensor((train_features - mean) / scale, dtype=torch.float32)
    y = torch.as_tensor(train_labels, dtype=torch.long)
    model = make_head(head, x.shape[1], num_classes, width=recipe.width, dropout=recipe.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), recipe.batch_size):
            batch = order[start : start + recipe.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        test = torch.as_tensor((test_features - mean) / scale, dtype=torch.float32)
        return model(test).argmax(1).numpy()
