"""The two recipes every comparison starts from: the linear probe (every block transferred and frozen, a linear
head) and the conventional recipe (everything fine-tuned at one learning rate, plain L2, a linear head). A search
runs them first (:mod:`nbtl.search.start`), ``nbtl train`` trains the probe as its floor, and ``nbtl zoo`` fine-tunes
with the recipe."""

from __future__ import annotations

from typing import Any

from nbtl.backbones import get_spec
from nbtl.heuristics.rules import load_rules
from nbtl.regularizers import off_values

__all__ = ["PROBE_HEAD_LR", "conventional_config", "probe_config"]

#: The probe start point's learning rates: unused by its fitted linear head (nbtl.fit.probe), kept so that the
#: config stays a valid training config when a space changes its head.
PROBE_HEAD_LR = 0.1


def probe_config(backbone: str) -> dict[str, Any]:
    """The linear probe: every block transferred and frozen, a linear head, every registered regulariser off
    (:func:`nbtl.regularizers.off_values`: its head's L2 strength is chosen by cross-validation, nbtl.fit.probe)."""
    blocks = get_spec(backbone).num_blocks
    return {
        "backbone": backbone,
        "pretrained": True,
        "transfer_blocks": blocks,
        "freeze_blocks": blocks,
        "head": "linear",
        "head_lr": PROBE_HEAD_LR,
        "lr": PROBE_HEAD_LR,
        "lr_decay": 1.0,
        "head_warmup_epochs": 0,
        **off_values(),
    }


def conventional_config(backbone: str) -> dict[str, Any]:
    """The conventional recipe: every block transferred and fine-tuned at one lr, plain L2, a linear head.

    Defined once, as the ``defaults`` of the shipped rules (heuristics/rules.yaml), the config the rules
    of ``nbtl recommend`` move away from; the batch size and epochs stay the space's."""
    recipe = {k: v for k, v in load_rules().defaults.items() if k not in ("batch_size", "epochs")}
    blocks = get_spec(backbone).num_blocks
    if recipe.get("transfer_blocks", "all") == "all":
        recipe["transfer_blocks"] = blocks
    return {"backbone": backbone, "pretrained": True, "head_warmup_epochs": 0, **recipe}
