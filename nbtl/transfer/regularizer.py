"""The L2-SP + L2 regulariser of non-binary transfer.

``Ω(w) = α/2 ‖w_S − w_S⁰‖² + β/2 ‖w_S‖² + γ/2 ‖w_N‖²`` where ``S`` are the transferred (pre-trained,
still training) weights, ``w⁰`` their pre-trained values and ``N`` the new weights (re-initialised
blocks and the head). Biases and normalisation parameters (every 1-D parameter) are excluded, as in
Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018. Plested et al. (arXiv 2107.08585) mix L2-SP on lower blocks with L2 on upper
ones: by default each transferred weight gets both terms, with ``α`` and ``β`` searched; weights passed
as ``unanchored`` (transferred blocks at or above ``l2sp_blocks``) get only ``β/2‖w‖²``.

Weights that do not currently require a gradient (blocks frozen for a head warm-up) add a constant to
``Ω`` and are skipped, so a head-only step does not pay for the whole backbone's penalty.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from nbtl.regularizers import PenaltyWeights, get_regularizer, regularizer_names


def regularised_weights(module: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of ``module`` that are regularised: weights with ``ndim > 1``
    (conv and linear kernels); biases, BatchNorm / LayerNorm affine parameters are excluded."""
    return [p for p in module.parameters() if p.requires_grad and p.ndim > 1]


class L2SPRegularizer(nn.Module):
    """Callable returning the scalar penalty ``Ω(w)``; add it to the loss.

    Parameters
    ----------
    transferred : iterable of Parameter
        Weights that keep pre-trained values and are pulled back to them (their current values
        are stored as ``w⁰``): ``α/2‖w−w⁰‖² + β/2‖w‖²``.
    new : iterable of Parameter
        Weights of re-initialised blocks and of the head: ``γ/2‖w‖²``.
    l2sp_alpha, l2_beta, l2_head : float
        ``α``, ``β`` and ``γ`` above.
    unanchored : iterable of Parameter, optional
        Transferred weights with no L2-SP term, only ``β/2‖w‖²`` (no ``w⁰`` is stored for them).
    """

    def __init__(
        self,
        transferred: Iterable[nn.Parameter],
        new: Iterable[nn.Parameter],
        l2sp_alpha: float = 0.0,
        l2_beta: float = 0.0,
        l2_head: float = 0.0,
        unanchored: Iterable[nn.Parameter] = (),
    ):
        super().__init__()
        self.transferred = list(transferred)
        self.new = list(new)
        self.unanchored = list(unanchored)
        self.l2sp_alpha, self.l2_beta, self.l2_head = float(l2sp_alpha), float(l2_beta), float(l2_head)
        # w⁰ lives in buffers so it moves with .to(device) and is saved in checkpoints.
        for i, p in enumerate(self.transferred):
            self.register_buffer(f"reference_{i}", p.detach().clone() if self.l2sp_alpha else torch.empty(0))

    def references(self) -> list[torch.Tensor]:
        return [getattr(self, f"reference_{i}") for i in range(len(self.transferred))]

    def forward(self) -> torch.Tensor:
        device = (self.transferred or self.unanchored or self.new or [torch.zeros(())])[0].device
        total = torch.zeros((), device=device, dtype=torch.float32)
        anchored = [(p, ref) for p, ref in zip(self.transferred, self.references()) if p.requires_grad]
        if self.l2sp_alpha and anchored:
            total = total + 0.5 * self.l2sp_alpha * sum((p.float() - ref).pow(2).sum() for p, ref in anchored)
        decayed = [p for p, _ in anchored] + [p for p in self.unanchored if p.requires_grad]
        if self.l2_beta and decayed:
            total = total + 0.5 * self.l2_beta * sum(p.float().pow(2).sum() for p in decayed)
        new = [p for p in self.new if p.requires_grad]
        if self.l2_head and new:
            total = total + 0.5 * self.l2_head * sum(p.float().pow(2).sum() for p in new)
        return total


def l2sp_penalty(weights: PenaltyWeights, config: Any) -> L2SPRegularizer:
    """The ``l2sp`` regulariser's term (:mod:`nbtl.regularizers`): L2-SP + L2 on ``config``'s coefficients."""
    return L2SPRegularizer(
        weights.anchored,
        weights.new,
        config.l2sp_alpha,
        config.l2_beta,
        config.effective_l2_head(),
        unanchored=weights.unanchored,
    )


class Penalties(nn.Module):
    """Every registered regulariser's term for one trial (:func:`build_penalties`), by name; called with no
    arguments it returns their sum (a float32 scalar), which the trial adds to its loss."""

    def __init__(self, terms: dict[str, nn.Module]):
        super().__init__()
        self.terms = nn.ModuleDict(terms)

    def __getitem__(self, name: str) -> nn.Module:
        return self.terms[name]

    def __contains__(self, name: str) -> bool:
        return name in self.terms

    def forward(self) -> torch.Tensor:
        total = None
        for term in self.terms.values():
            value = term().float()
            total = value if total is None else total + value.to(total.device)
        return torch.zeros(()) if total is None else total


def build_penalties(weights: PenaltyWeights, config: Any) -> Penalties:
    """The terms of every registered regulariser that adds one (:meth:`RegularizerEntry.build_penalty`)."""
    terms = {}
    for name in regularizer_names():
        term = get_regularizer(name).build_penalty(weights, config)
        if term is not None:
            terms[name] = term
    return Penalties(terms)
