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

import torch
from torch import nn


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
