"""The configuration of one trial: every non-binary transfer choice, validated once.

Names follow the project vocabulary (``transfer_blocks``, ``freeze_blocks``, ``head_warmup_epochs``,
``lr``, ``head_lr``, ``lr_decay``, ``l2sp_alpha``, ``l2_beta``, ``l2_head``, ``l2sp_blocks``, ``head``).
A search space YAML samples these keys; ``nbtl recommend`` writes them; a single training run reads them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from nbtl.codec import decode
from nbtl.errors import ConfigError
from nbtl.heads import head_names, heads_with_width
from nbtl.regularizers import knob, knobs

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "constant", "step")
#: Keys that only mean something with a given setting: left out of ``to_dict`` (and so of the MLflow
#: params) otherwise, so that a run never shows a knob it did not use.
_ONLY_WITH = {
    "momentum": ("optimizer", ("sgd",)),
    "lr_step_epochs": ("lr_schedule", ("step",)),
    "lr_gamma": ("lr_schedule", ("step",)),
    "head_width": ("head", heads_with_width),  # a linear head has no hidden layer (nbtl.heads: has_width)
}


def _used(key: str, setting: Any) -> bool:
    """Whether ``key`` means something when its setting (:data:`_ONLY_WITH`) is ``setting``."""
    allowed = _ONLY_WITH[key][1]
    return setting in (allowed() if callable(allowed) else allowed)


def without_unused(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (some trial config keys) without the keys their own settings leave unused (``head_width`` with
    a ``linear`` head, ...; an unset setting counts at its default), as :meth:`TrialConfig.to_dict` leaves them out."""
    return {
        k: v
        for k, v in values.items()
        if k not in _ONLY_WITH or _used(k, values.get(_ONLY_WITH[k][0], TrialConfig.default(_ONLY_WITH[k][0])))
    }


@dataclass
class TrialConfig:
    """Every setting of one transfer-learning trial.

    Parameters
    ----------
    backbone : str
        Registry name of the pre-trained network (see ``nbtl.backbones.list_backbones``).
    pretrained : bool
        Start from the backbone's pre-trained weights; ``False`` trains from scratch.
    transfer_blocks : int or None
        How many blocks, counted from the input, keep pre-trained weights; the rest are
        re-initialised. ``None`` means all blocks.
    freeze_blocks : int
        How many blocks, counted from the input, do not train (``<= transfer_blocks``).
    head_warmup_epochs : int
        LP-FT: for the first ``head_warmup_epochs`` epochs every block is frozen (eval mode, no
        gradient) and only the head trains; afterwards ``freeze_blocks`` applies. Must be
        ``< epochs``; 0 (the default) trains as configured from the start (Kumar et al.,
        "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution",
        ICLR 2022).
    lr, head_lr, lr_decay : float
        Block ``i`` of ``B`` trains at ``lr * lr_decay ** (B - 1 - i)`` (the top block at ``lr``);
        the head at ``head_lr`` (``None``: same as ``lr``).
    block_lrs : list of float or None
        Explicit per-block learning rates, overriding ``lr``/``lr_decay`` for the blocks.
    l2sp_alpha, l2_beta, l2_head : float
        Regulariser ``α/2‖w−w⁰‖² + β/2‖w‖²`` on transferred weights and ``γ/2‖w‖²`` on new
        weights (re-initialised blocks and head); BatchNorm and biases are excluded.
        ``l2_head=None`` means ``γ = β``: plain L2 on every weight, the conventional recipe
        (Li et al., "Explicit inductive bias for transfer learning", ICML 2018).
    l2sp_blocks : int or None
        Transferred blocks with index ``< l2sp_blocks`` get ``α/2‖w−w⁰‖² + β/2‖w‖²``; transferred
        blocks from ``l2sp_blocks`` on get only ``β/2‖w‖²`` (pulled towards zero, not towards
        ``w⁰``): the lower-L2-SP / upper-L2 mix of Plested et al. (arXiv 2107.08585). ``None``
        means every transferred block gets both terms.
    head : {"linear", "mlp", "spinal"}
        Classifier on the pooled features; ``spinal`` is SpinalNet's spinal fully connected layer
        (Kabir et al. 2020).
    head_width, head_dropout : int, float
        Hidden width of the ``mlp`` / ``spinal`` head, and dropout before the head's layers.
    optimizer, momentum : str, float
        ``sgd`` (with ``momentum``, Nesterov) or ``adam``; never with weight decay (the regulariser
        is explicit, so there is no double decay). Adam has no momentum knob (its ``betas`` keep
        torch's defaults): with ``adam`` a ``momentum`` is accepted but ignored, and left out of
        :meth:`to_dict` and so of the MLflow params, so a run never shows a momentum it did not use.
    lr_schedule : {"cosine", "constant", "step"}
        How every learning rate moves during training: ``cosine`` anneals it to zero over all steps
        (``CosineAnnealingLR``, the default); ``constant`` keeps it (the recipe of Puls et al.);
        ``step`` multiplies it by ``lr_gamma`` after every ``lr_step_epochs`` epochs (``StepLR``), or
        after each epoch listed in ``lr_step_epochs`` (``MultiStepLR``; the torchvision recipe Albardi
        et al. fine-tune with).
    lr_step_epochs : int, list of int or None
        The ``step`` schedule's period in epochs, or the epochs after which the rate drops; None
        means every ``max(1, epochs // 3)`` epochs. Only with ``lr_schedule: step``.
    lr_gamma : float
        The ``step`` schedule's factor, in (0, 1]. Only with ``lr_schedule: step``.
    patience : int or None
        Early stopping: the trial ends once this many epochs passed since its best epoch (highest
        validation accuracy, ties to the lower validation loss) without a better one; its last
        epoch's metrics then say ``early_stopped = 1`` and ``stopped_at_epoch``, and carry the best
        epoch's. Head warm-up epochs do not count. None (the default) trains every epoch.
    epochs, batch_size : int
        Training length and mini-batch size.
    label_smoothing : float
        Cross-entropy label smoothing.
    seed : int
        Seeds weights of new layers, batch order and augmentation.
    image_size : int or None
        The side of the images this trial trains and is scored at, searched like any key (``image_size:
        {choices: [128, 160, 224]}``: resolution trades accuracy for time); None: the search's data size for
        its backbone (``data.image_size``, or the backbone's own with ``native``).
    """

    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    transfer_blocks: int | None = None
    freeze_blocks: int = 0
    head_warmup_epochs: int = 0
    lr: float = 0.01
    head_lr: float | None = None
    lr_decay: float = 1.0
    block_lrs: list[float] | None = None
    l2sp_alpha: float = 0.0
    l2_beta: float = 0.0
    l2_head: float | None = None
    l2sp_blocks: int | None = None
    head: str = "linear"
    head_width: int = 256
    head_dropout: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    lr_step_epochs: int | list[int] | None = None
    lr_gamma: float = 0.1
    patience: int | None = None
    epochs: int = 5
    batch_size: int = 64
    label_smoothing: float = 0.0
    seed: int = 0
    image_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The config's own keys (its dataclass fields)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def default(cls, key: str, *fallback: Any) -> Any:
        """``key``'s default, read without building a config: a field's own, else a registered knob's; for a key
        that is neither, ``fallback`` when given, else a ``KeyError``."""
        for f in dataclasses.fields(cls):
            if f.name == key and key != "extra":
                return f.default_factory() if f.default is dataclasses.MISSING else f.default
        found = knob(key)
        if found is not None:
            return found.default
        if fallback:
            return fallback[0]
        raise KeyError(f"{key!r} is not a trial config key")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The config keys a user may set: its own, then the knobs of the regularisers registered since
        (:mod:`nbtl.regularizers`), which live in :attr:`extra`."""
        own = cls.fields()
        return own + tuple(name for name in knobs() if name not in own)

    def __getattr__(self, name: str) -> Any:
        """A registered regulariser's knob that is not a field reads from :attr:`extra` (else its default)."""
        if name != "extra" and not name.startswith("__"):
            found = knob(name)
            if found is not None:
                return self.__dict__.get("extra", {}).get(name, found.default)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "trial config") -> TrialConfig:
        """Build and validate a config from a mapping, naming ``where`` in any error."""
        known = set(cls.keys())
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys are {', '.join(sorted(known))}")
        values = dict(values)
        own = set(cls.fields())
        extra = {k: knob(k).parse(values.pop(k)) for k in list(values) if k not in own}  # registered knobs
        for key in own & set(knobs()):  # read back from MLflow params or a CSV: "0.01", "None"
            if key in values:
                values[key] = knob(key).parse(values[key])
        steps = values.get("lr_step_epochs")
        if isinstance(steps, str):  # read back from MLflow params or a CSV: "3" or "[3, 6]" (validate() names bad text)
            values["lr_step_epochs"] = decode(steps)
        config = cls(**values, extra=extra)
        config.validate(where)
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the user-settable keys (for YAML, MLflow params), without the keys the config does
        not use: ``momentum`` with ``adam``, ``lr_step_epochs`` and ``lr_gamma`` without the ``step`` schedule,
        ``head_width`` with a ``linear`` head."""
        return {
            k: getattr(self, k)
            for k in self.keys()
            if (k not in _ONLY_WITH or _used(k, getattr(self, _ONLY_WITH[k][0])))
            and (k != "image_size" or self.image_size is not None)
        }

    def validate(self, where: str = "trial config") -> None:
        """Check types and ranges; raise ``ConfigError`` naming the key and the fix."""

        def fail(key: str, must: str) -> None:
            raise ConfigError(f"{where}: {key} must be {must}, got {getattr(self, key)!r}")

        def number(key: str, low: float = 0.0, low_open: bool = False, high: float | None = None):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(key, "a finite number")
            if value < low or (low_open and value == low) or (high is not None and value > high):
                bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
                fail(key, bound)

        def integer(key: str, low: int) -> None:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(key, f"an integer >= {low}")

        if not isinstance(self.backbone, str) or not self.backbone:
            fail("backbone", "a backbone name")
        if not isinstance(self.pretrained, bool):
            fail("pretrained", "true or false")
        if self.transfer_blocks is not None:
            integer("transfer_blocks", 0)
        integer("freeze_blocks", 0)
        if self.transfer_blocks is not None and self.freeze_blocks > self.transfer_blocks:
            fail("freeze_blocks", f"<= transfer_blocks ({self.transfer_blocks}): only transferred blocks can be frozen")
        number("lr", low_open=True)
        if self.head_lr is not None:
            number("head_lr", low_open=True)
        number("lr_decay", low_open=True, high=1.0)
        if self.block_lrs is not None:
            if not isinstance(self.block_lrs, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in self.block_lrs
            ):
                fail("block_lrs", "a list of learning rates >= 0, one per block")
        unknown = sorted(k for k in self.extra if knob(k) is None)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys are {', '.join(sorted(self.keys()))}")
        for item in knobs().values():  # every registered regulariser's knobs (nbtl.regularizers), own or extra
            item.check(getattr(self, item.name), where)
        if self.head not in head_names():
            fail("head", f"one of {', '.join(head_names())}")
        integer("head_width", 2)
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"one of {', '.join(OPTIMIZERS)}")
        number("momentum", high=0.999)
        if self.lr_schedule not in LR_SCHEDULES:
            fail("lr_schedule", f"one of {', '.join(LR_SCHEDULES)}")
        steps = self.lr_step_epochs
        if steps is not None and not (
            (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1)
            or (
                isinstance(steps, list)
                and steps
                and all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in steps)
                and steps == sorted(set(steps))
            )
        ):
            fail("lr_step_epochs", "an epoch count >= 1 (the period) or an increasing list of epochs, e.g. [30, 60]")
        number("lr_gamma", low_open=True, high=1.0)
        if self.patience is not None:
            integer("patience", 1)
        integer("epochs", 1)
        integer("head_warmup_epochs", 0)
        if self.head_warmup_epochs >= self.epochs:
            fail("head_warmup_epochs", f"< epochs ({self.epochs}): some epochs must train the unfrozen blocks")
        integer("batch_size", 1)
        integer("seed", 0)
        if self.image_size is not None:
            integer("image_size", 8)

    def effective_head_lr(self) -> float:
        return self.lr if self.head_lr is None else self.head_lr

    def effective_l2_head(self) -> float:
        return self.l2_beta if self.l2_head is None else self.l2_head


def dump_config(config: dict[str, Any]) -> str:
    """YAML text of a trial config (what ``nbtl search`` writes as the best config)."""
    return yaml.safe_dump({k: config[k] for k in TrialConfig.keys() if k in config}, sort_keys=False)
