"""A trained transfer model, or an ensemble of them, as one image classifier a user keeps.

Images of any size go in (encoded files, uint8 RGB or grayscale arrays, PIL images) and get the
preprocessing the training data got (:mod:`nbtl.data.images`: shorter side resized to the search's
image size, centred square crop, RGB); each member normalises with its backbone's own mean / std
(:class:`nbtl.transfer.TransferModel`) and returns logits. An ensemble averages its members'
probabilities, and its logits are the log of that average.

On disk a classifier is a folder: ``classifier.json`` (classes, image size, each member's trial
config and weights file) and one ``member<i>.pt`` state dict per member, read back with
``torch.load(..., weights_only=True)``: nothing is unpickled. Plain PyTorch: no Ray, no MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from nbtl.backbones import create_backbone
from nbtl.config import TrialConfig
from nbtl.data.images import open_image, resize_square, to_rgb_array
from nbtl.errors import DataError, NbtlError
from nbtl.transfer import TransferModel, build_transfer, load_trainable_state, make_head

CLASSIFIER_FILE = "classifier.json"
FORMAT = 1


class ClassifierError(NbtlError):
    """A classifier folder that cannot be read (missing files, another format, weights that do not fit)."""


@dataclass(frozen=True)
class Member:
    """One trained model of a classifier: its trial config and its whole state dict (every block and the head)."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    label: str = ""  # where it came from, e.g. the trial's MLflow run id
    metrics: dict[str, float] = field(default_factory=dict)  # what these weights scored (the best epoch's metrics)


def trained_state_dict(
    config: dict[str, Any],
    num_classes: int,
    trained: dict[str, torch.Tensor],
    pretrained: dict[str, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """The whole state dict of a trial's model from what its checkpoint keeps (``trained``: every tensor but
    the frozen blocks', see :func:`nbtl.search.trainable.compact_checkpoint`) and the pre-trained weights the
    trial started from, which hold the frozen blocks."""
    trial_config = TrialConfig.from_dict(config)
    setup = build_transfer(trial_config, num_classes, state_dict=pretrained if trial_config.pretrained else None)
    load_trainable_state(setup.model, trained, len(setup.frozen_blocks))
    return {k: v.detach().clone() for k, v in setup.model.state_dict().items()}


def build_member(config: dict[str, Any], num_classes: int, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A :class:`~nbtl.transfer.TransferModel` of ``config``'s architecture holding ``state_dict``, in eval mode.

    Built from a random initialisation (no pre-trained weights are read or downloaded) and loaded strictly."""
    trial_config = TrialConfig.from_dict(config)
    backbone = create_backbone(trial_config.backbone, pretrained=False)
    head = make_head(
        trial_config.head,
        backbone.feature_dim,
        num_classes,
        width=trial_config.head_width,
        dropout=trial_config.head_dropout,
    )
    model = TransferModel(backbone, head)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ClassifierError(
            f"the weights do not fit a {trial_config.backbone} with a {trial_config.head} head "
            f"and {num_classes} classes ({first})"
        ) from None
    return model.eval()


def decode_image(image: Any, image_size: int, name: str = "image") -> np.ndarray:
    """One image as the networks take it: uint8 ``(3, S, S)``, preprocessed as the training images were.

    ``image`` is an encoded file's bytes (PNG, JPEG, ...), a path, a PIL image, or a uint8 array ``(H, W, 3)``
    or ``(H, W)`` of any size. Raises :class:`~nbtl.errors.DataError` naming ``name`` when it cannot be read.
    """
    if isinstance(image, (str, Path)):
        picture = open_image(Path(image))
    elif isinstance(image, (bytes, bytearray, memoryview)):
        picture = open_image(bytes(image), name=name, fix="send a PNG or JPEG file's bytes")
    elif isinstance(image, Image.Image):
        picture = image
    else:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3) or array.size == 0:
            raise DataError(f"{name}: expected an (H, W, 3) RGB or (H, W) grayscale array, got shape {array.shape}")
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.number) or array.min() < 0 or array.max() > 255:
                raise DataError(f"{name}: expected uint8 pixel values 0..255, got {array.dtype}")
            array = array.astype(np.uint8)
        picture = Image.fromarray(np.ascontiguousarray(array))
    return to_rgb_array(resize_square(picture, image_size)).transpose(2, 0, 1)


class ImageClassifier(nn.Module):
    """Members (one for a trial's model, K for an ensemble) behind one forward: uint8 ``(N, 3, S, S)`` → logits.

    Use :meth:`preprocess` (or :meth:`predict_proba`, which batches) for images of any size.
    """

    def __init__(self, members: Sequence[nn.Module], classes: Sequence[str], image_size: int):
        super().__init__()
        if not members:
            raise ClassifierError("a classifier needs at least one member")
        self.members = nn.ModuleList(members)
        self.classes = [str(c) for c in classes]
        self.image_size = int(image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](images)
        probabilities = torch.stack([m(images).float().softmax(1) for m in self.members]).mean(0)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()

    def preprocess(self, images: Iterable[Any]) -> torch.Tensor:
        """uint8 ``(N, 3, S, S)`` from images of any size (see :func:`decode_image`)."""
        arrays = [decode_image(image, self.image_size, name=f"image {i}") for i, image in enumerate(images)]
        if not arrays:
            return torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Logits of preprocessed images (uint8 ``(N, 3, S, S)``), in batches, on the classifier's device."""
        self.eval()
        device = next(self.parameters()).device
        parts = [self(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(parts) if parts else torch.empty((0, len(self.classes)))

    def predict_proba(self, images: Iterable[Any], batch_size: int = 64) -> np.ndarray:
        """Class probabilities ``(N, C)`` (columns in :attr:`classes` order) of images of any size."""
        return self.logits(self.preprocess(images), batch_size).softmax(1).numpy()


def save_classifier(directory: str | Path, members: Sequence[Member], classes: Sequence[str], image_size: int) -> Path:
    """Write a classifier folder (see the module docstring); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, member in enumerate(members):
        file = f"member{i}.pt"
        torch.save({k: v.detach().cpu().contiguous() for k, v in member.state_dict.items()}, directory / file)
        entries.append({"config": member.config, "weights": file, "label": member.label, "metrics": member.metrics})
    spec = {"format": FORMAT, "classes": [str(c) for c in classes], "image_size": int(image_size), "members": entries}
    (directory / CLASSIFIER_FILE).write_text(json.dumps(spec, indent=2, default=str))
    return directory


def read_spec(directory: str | Path) -> dict[str, Any]:
    """``classifier.json`` of a classifier folder, checked."""
    file = Path(directory) / CLASSIFIER_FILE
    try:
        spec = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ClassifierError(f"{file}: not a classifier folder ({error})") from None
    if spec.get("format") != FORMAT or not spec.get("members") or not spec.get("classes"):
        raise ClassifierError(f"{file}: format {spec.get('format')!r} with no members or classes; expected {FORMAT}")
    return spec


def read_members(directory: str | Path) -> tuple[list[Member], list[str], int]:
    """``(members, classes, image_size)`` of the classifier folder ``directory``."""
    directory = Path(directory)
    spec = read_spec(directory)
    members = []
    for entry in spec["members"]:
        weights = directory / entry["weights"]
        try:
            state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as error:
            raise ClassifierError(f"{weights}: cannot read the weights ({str(error).splitlines()[0]})") from None
        members.append(Member(entry["config"], state_dict, entry.get("label", ""), entry.get("metrics") or {}))
    return members, list(spec["classes"]), int(spec["image_size"])


def classifier_of(members: Sequence[Member], classes: Sequence[str], image_size: int) -> ImageClassifier:
    """The :class:`ImageClassifier` of ``members``, in eval mode."""
    built = [build_member(m.config, len(classes), m.state_dict) for m in members]
    return ImageClassifier(built, classes, image_size).eval()


def load_classifier(directory: str | Path, device: str | torch.device | None = None) -> ImageClassifier:
    """The classifier saved in ``directory`` by :func:`save_classifier`, in eval mode."""
    classifier = classifier_of(*read_members(directory))
    return classifier.to(device) if device is not None else classifier


def top_k(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Each row's ``k`` most probable classes with their probabilities, most probable first."""
    k = max(1, min(int(k), len(classes)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in picks] for row, picks in zip(probabilities, order, strict=True)]
