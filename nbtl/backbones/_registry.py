"""The backbone registry: one decorated builder per network, in the spirit of timm's
``models/_registry.py`` (``@register_model``) and its per-model pretrained config.

A registered backbone is three small functions and a spec:

* ``build_native() -> nn.Module`` — the decorated function: the network as its library defines
  it (torchvision, timm), randomly initialised, never downloading anything;
* ``cut(native) -> BackboneParts`` — the family's partition into blocks, pool and source head;
* ``default_weights() -> state dict`` — the default pre-trained weights in the native format.

Weights in the native key format are mapped to the Backbone key format by tensor identity
between the native network and the Backbone built from it (:func:`layout`), so a new family
needs no hand-written key table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nbtl.backbones._backbone import Backbone, BackboneParts, BackboneSpec
from nbtl.errors import BackboneError

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class BackboneEntry:
    """A backbone as the registry holds it: its spec and how to build, cut and load it."""

    spec: BackboneSpec
    build_native: Callable[[], nn.Module]
    cut: Callable[[nn.Module], BackboneParts]
    default_weights: Callable[[], Mapping[str, Tensor]]
    native_format: str
    to_native_keys: Callable[[Mapping[str, Tensor], Mapping[str, torch.Size]], StateDict] | None
    describe: Callable[[], object] | None = None

    def assemble(self, native: nn.Module) -> Backbone:
        return Backbone(self.spec, *self.cut(native))

    def build(self) -> Backbone:
        return self.assemble(self.build_native())


_REGISTRY: dict[str, BackboneEntry] = {}
#: name prefix -> ``resolve(rest) -> BackboneEntry`` for backbones named on demand (``timm:<model>``), and their entries
#: once resolved (per process; not listed by :func:`list_backbones`, which names the registered ones).
_RESOLVERS: dict[str, Callable[[str], BackboneEntry]] = {}
_RESOLVED: dict[str, BackboneEntry] = {}


def add_resolver(prefix: str, resolve: Callable[[str], BackboneEntry]) -> None:
    """Let ``get_entry`` resolve names ``prefix<rest>`` with ``resolve(rest)`` (once per process and name)."""
    _RESOLVERS[prefix] = resolve


def register_backbone(
    name: str,
    *,
    family: str,
    num_blocks: int,
    input_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    weights: str,
    cut: Callable[[nn.Module], BackboneParts],
    default_weights: Callable[[], Mapping[str, Tensor]],
    native_format: str,
    to_native_keys: Callable | None = None,
    num_source_classes: int = 1000,
    min_input_size: int = 32,
    describe: Callable[[], object] | None = None,
):
    """Decorator registering ``build_native() -> nn.Module`` as backbone ``name`` (timm style).

    Parameters
    ----------
    name, family, num_blocks, input_size, mean, std, weights, num_source_classes, min_input_size
        Fields of the :class:`BackboneSpec` stored with the builder.
    cut : callable
        ``cut(native_model) -> BackboneParts``: the family's partition into blocks (stem first),
        pool and source head. It must reuse the native modules (not copies).
    default_weights : callable
        ``default_weights() -> state dict`` in the native key format; raises ``BackboneError``
        with a fix when the weights cannot be found. Called only when weights are needed.
    native_format : str
        Human-readable name of the native key format, used in error messages.
    to_native_keys : callable, optional
        ``to_native_keys(state_dict, reference_shapes) -> state dict`` renaming another native
        format (e.g. lukemelas EfficientNet-Lite keys) to the native network's keys; raises
        ``ValueError`` when the tensors do not line up.
    describe : callable, optional
        ``describe() -> nbtl.backbones.WeightsInfo``: size, cost and ImageNet accuracy of the
        default weights and whether they are on this machine, read without building the network
        (``nbtl backbones``). Without it, :func:`nbtl.backbones.backbone_info` counts the
        parameters on the meta device and leaves the rest unknown.

    Returns
    -------
    callable
        The decorator; it returns the builder unchanged.

    Examples
    --------
    >>> @register_backbone("resnet34", family="resnet", num_blocks=5, input_size=224,
    ...                    mean=IMAGENET_MEAN, std=IMAGENET_STD, weights="…", cut=cut_resnet,
    ...                    default_weights=…, native_format="torchvision resnet34 state dict")
    ... def resnet34():
    ...     return torchvision.models.resnet34()
    """
    spec = BackboneSpec(
        name=name,
        family=family,
        num_blocks=num_blocks,
        input_size=input_size,
        mean=tuple(mean),
        std=tuple(std),
        weights=weights,
        num_source_classes=num_source_classes,
        min_input_size=min_input_size,
    )

    def decorator(build_native: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _REGISTRY:
            raise BackboneError(f"backbone {name!r} is already registered; choose another name")
        _REGISTRY[name] = BackboneEntry(
            spec, build_native, cut, default_weights, native_format, to_native_keys, describe
        )
        return build_native

    return decorator


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> BackboneEntry:
    """The registry entry of ``name``; ``BackboneError`` naming the known ones if unknown."""
    if isinstance(name, str):
        entry = _REGISTRY.get(name) or _RESOLVED.get(name)
        if entry is not None:
            return entry
        for prefix, resolve in _RESOLVERS.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                entry = _RESOLVED[name] = resolve(name[len(prefix) :])
                return entry
    raise BackboneError(
        f"unknown backbone {name!r}; use one of: {', '.join(list_backbones())}"
        + "".join(f", or {prefix}<model>" for prefix in _RESOLVERS)
        + " (or register a new one with nbtl.backbones.register_backbone)"
    )


def get_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of backbone ``name``.

    Raises
    ------
    BackboneError
        If ``name`` is not registered; the message lists the registered names.
    """
    return get_entry(name).spec


@dataclass(frozen=True)
class Layout:
    """Key names and shapes of a backbone in both formats, and the map between them."""

    native_shapes: dict[str, torch.Size]  # in the native network's order
    backbone_shapes: dict[str, torch.Size]
    native_to_backbone: dict[str, str]  # native keys not in the Backbone (e.g. aux heads) absent

    @property
    def required_native_shapes(self) -> dict[str, torch.Size]:
        """Native keys the Backbone uses; the others (aux heads) may be missing from weights."""
        return {k: s for k, s in self.native_shapes.items() if k in self.native_to_backbone}


@functools.cache
def layout(name: str) -> Layout:
    """Build ``name`` on the meta device (no memory, no init cost) and map keys by tensor identity.

    A builder that computes on tensors (torchvision's RegNet derives its widths with torch ops)
    cannot run on the meta device; it is then built on the CPU, once.
    """
    entry = get_entry(name)
    try:
        with torch.device("meta"):
            native = entry.build_native()
    except NotImplementedError:  # "Cannot copy out of meta tensor"
        native = entry.build_native()
    backbone = entry.assemble(native)
    native_tensors = native.state_dict(keep_vars=True)
    key_of = {id(t): k for k, t in native_tensors.items()}
    backbone_tensors = backbone.state_dict(keep_vars=True)
    native_to_backbone = {}
    for key, tensor in backbone_tensors.items():
        if id(tensor) not in key_of:
            raise BackboneError(
                f"backbone {name!r}: Backbone tensor {key!r} is not part of the native network; "
                "the family's cut function must reuse the native modules, not new ones"
            )
        native_to_backbone[key_of[id(tensor)]] = key
    return Layout(
        native_shapes={k: t.shape for k, t in native_tensors.items()},
        backbone_shapes={k: t.shape for k, t in backbone_tensors.items()},
        native_to_backbone=native_to_backbone,
    )
