"""Any timm CNN as a backbone: ``timm:<model>`` (``timm:resnet50``, ``timm:convnext_tiny``, ``timm:regnety_016``).

timm [1]_ names the stages of each network in its ``feature_info`` (the layers ``features_only=True`` returns).
nbtl cuts a ``timm:<model>`` there: block *i* ends at the *i*-th feature layer, the layers that
``forward_features`` runs after the last one (EfficientNet's ``conv_head`` + ``bn2``, RegNet's ``final_conv``) join
the last block, and what ``forward_head`` runs (pooling, pre-logits norm, classifier) is the source head, read on
the last block's map. The cut is checked by computation when a model is first named in a process: the blocks in
order must give ``forward_features`` exactly, and the source head ``model(x)``. A network whose forward is not a
chain of its named layers (ViTs with class tokens, say) is refused in one line; one whose head is not a chain gets
no source head (LEEP and NCE then say so).

Weights: ``--weights timm:<model>=PATH`` (a ``torch.save(model.state_dict())`` of the timm model, read with
``weights_only=True``), or by default timm's pre-trained weights from the Hugging Face hub
(``timm.create_model(name, pretrained=True)``), which needs the network. Resolution, mean and std come from the
model's ``pretrained_cfg``.

References
----------
.. [1] Wightman, R., "PyTorch Image Models" (timm), https://github.com/huggingface/pytorch-image-models;
       ``timm/models/_features.py`` (``feature_info``, ``FeatureListNet``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from nbtl.backbones._backbone import BackboneParts, BackboneSpec, global_avg_pool, remove_dropout
from nbtl.backbones._registry import BackboneEntry, add_resolver
from nbtl.errors import BackboneError

log = logging.getLogger(__name__)

PREFIX = "timm:"
#: The input of the check that the cut computes what the timm model computes: small, but past every stride.
CHECK_SIZE, CHECK_TOLERANCE = 64, 1e-4


@dataclass(frozen=True)
class TimmCut:
    """Where a timm model is cut, by layer names: its top-level layers (``nn.Sequential`` ones that hold a feature
    layer flattened one level, as timm's ``FeatureListNet`` does) grouped into ``blocks``, then the ``head`` layers."""

    blocks: tuple[tuple[str, ...], ...]
    head: tuple[str, ...] | None  # None: forward_head is not a chain of the remaining layers


def _layers(model: nn.Module, features: list[str]) -> list[tuple[str, nn.Module]]:
    """The model's top-level layers in order; a ``nn.Sequential`` that holds a feature layer is flattened one level
    (EfficientNet's ``blocks.0``, ConvNeXt's ``stages.2``)."""
    layers = []
    for name, child in model.named_children():
        inside = [f for f in features if f.startswith(name + ".")]
        if inside and isinstance(child, nn.Sequential):
            layers.extend((f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children())
        else:
            layers.append((name, child))
    return layers


def _chain(named: list[tuple[str, nn.Module]]) -> nn.Sequential:
    """The layers as one ``nn.Sequential`` of the same module objects (names with ``.`` made ``_``)."""
    return nn.Sequential(OrderedDict((name.replace(".", "_"), module) for name, module in named))


def _close(a, b) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and torch.allclose(a, b, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE)
    )


def plan_cut(model: nn.Module, name: str) -> TimmCut:
    """Find and check the cut of timm model ``model`` (randomly initialised, any weights); ``BackboneError`` when its
    forward is not a chain of its layers."""
    info = getattr(model, "feature_info", None)
    features = [str(f["module"]) for f in info] if info else []
    if not features or not hasattr(model, "forward_features"):
        raise BackboneError(
            f"backbone {PREFIX}{name}: the timm model names no feature stages (feature_info); use a timm CNN "
            "such as timm:resnet50 or timm:convnext_tiny"
        )
    layers = _layers(model, features)
    names = [n for n, _ in layers]
    ends = []
    for feature in features:
        owned = [i for i, n in enumerate(names) if n == feature or n.startswith(feature + ".")]
        if not owned or (ends and owned[-1] <= ends[-1]):
            raise BackboneError(
                f"backbone {PREFIX}{name}: its feature stage {feature!r} is not one of its top-level layers in order; "
                "nbtl cuts timm CNNs whose stages are layers in sequence (e.g. timm:resnet50, timm:convnext_tiny)"
            )
        ends.append(owned[-1])
    groups = [names[start + 1 if i else 0 : end + 1] for i, (start, end) in enumerate(zip([-1, *ends], ends))]
    tail = names[ends[-1] + 1 :]
    model = model.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, CHECK_SIZE, CHECK_SIZE, generator=generator)
    by_name = dict(layers)
    with torch.no_grad():
        try:
            expected_map, expected_logits = model.forward_features(x), model(x)
            out = x
            for group in groups:
                out = _chain([(n, by_name[n]) for n in group])(out)
        except Exception as exc:  # a layer that cannot run on its own (a ViT's blocks before its class token)
            raise BackboneError(
                f"backbone {PREFIX}{name}: its layers do not run as a chain ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); nbtl cuts timm CNNs such as timm:resnet50"
            ) from None
        for k in range(len(tail) + 1):  # the tail layers forward_features still runs join the last block
            mapped = _chain([(n, by_name[n]) for n in tail[:k]])(out)
            if _close(mapped, expected_map):
                break
        else:
            raise BackboneError(
                f"backbone {PREFIX}{name}: its stages in order do not compute its forward_features (it is not a chain "
                "of its layers); nbtl cuts timm CNNs such as timm:resnet50 or timm:convnext_tiny"
            )
        blocks = (*map(tuple, groups[:-1]), (*groups[-1], *tail[:k]))
        head = tuple(tail[k:])
        try:
            logits = remove_dropout(_chain([(n, by_name[n]) for n in head]))(mapped)
        except Exception:
            logits = None
    if not _close(logits, expected_logits):
        log.info(
            "%s%s: forward_head is not a chain of its layers; no source head (LEEP, NCE unavailable)", PREFIX, name
        )
        head = None
    return TimmCut(blocks, head)


def cut_timm(model: nn.Module, plan: TimmCut) -> BackboneParts:
    """Cut ``model`` where :func:`plan_cut` said: one ``nn.Sequential`` per block (the model's own layers), global
    average pooling over the last block's map, and the head layers as the source head (reading that map)."""
    by_name = dict(_layers(model, [n for block in plan.blocks for n in block if "." in n]))
    blocks = [_chain([(n, by_name[n]) for n in block]) for block in plan.blocks]
    head = remove_dropout(_chain([(n, by_name[n]) for n in plan.head])) if plan.head is not None else None
    return BackboneParts(blocks, global_avg_pool(), head, int(model.num_features), source_head_on_map=True)


def _create(name: str, pretrained: bool = False) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=pretrained)


def hub_weights(name: str) -> dict:
    """timm's pre-trained weights of ``name`` (``pretrained=True``: the Hugging Face hub or its local cache)."""
    try:
        return _create(name, pretrained=True).state_dict()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(
            f"pre-trained weights of {PREFIX}{name} come from the Hugging Face hub (timm pretrained=True) and could "
            f"not be loaded ({first[:200]}); pass a local state dict with --weights {PREFIX}{name}=PATH"
        ) from None


def resolve(name: str) -> BackboneEntry:
    """The registry entry of ``timm:<name>``, built and checked once per process."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise BackboneError(
            f"unknown backbone {PREFIX}{name}: timm {timm.__version__} has no model {name!r}"
            + (f" (similar: {', '.join(close)})" if close else "")
            + "; list them with python -c \"import timm; print(timm.list_models('*resnet*'))\""
        )
    model = _create(name)
    plan = plan_cut(model, name)
    config = getattr(model, "pretrained_cfg", None) or {}
    size = int((config.get("input_size") or (3, 224, 224))[-1])
    spec = BackboneSpec(
        name=f"{PREFIX}{name}",
        family="timm",
        num_blocks=len(plan.blocks),
        input_size=size,
        mean=tuple(float(v) for v in config.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in config.get("std", (0.229, 0.224, 0.225))),
        weights=f"timm pretrained weights of {name} (Hugging Face hub)",
        num_source_classes=int(getattr(model, "num_classes", 0) or 0),
        min_input_size=32,
    )
    return BackboneEntry(
        spec,
        lambda: _create(name),
        lambda native: cut_timm(native, plan),
        lambda: hub_weights(name),
        f"timm {name} state dict",
        None,
    )


add_resolver(PREFIX, resolve)
