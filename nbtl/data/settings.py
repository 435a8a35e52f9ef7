"""One data-settings object: which images, at what size, split how, augmented how.

``nbtl search``, ``nbtl recommend``, ``nbtl heuristics learn`` and ``nbtl train`` read the same
:class:`DataSettings`, so a recommendation, a search and a training run always mean the same images:
the same seed and fractions give the same training split, and a recommended config trains with the
augmentation of the search it was measured for. A search logs the settings on its MLflow parent run
(:meth:`DataSettings.to_params`), ``nbtl recommend`` writes them into its YAML (:meth:`DataSettings.to_dict`),
and both are read back with :meth:`DataSettings.from_params`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nbtl.backbones import get_spec
from nbtl.codec import is_unset
from nbtl.data.augment import make_augmentation
from nbtl.data.splits import MIN_IMAGES_PER_CLASS
from nbtl.errors import ConfigError

__all__ = [
    "AUTO",
    "MAX_SEED",
    "MIN_IMAGE_SIZE",
    "NATIVE",
    "SETTING_KEYS",
    "DataSettings",
    "check_setting",
    "checked_overrides",
]

#: ``image_size: native``: each backbone at the resolution its weights were trained at.
NATIVE = "native"
#: ``image_size: auto``: a search picks the largest size its time budget affords (nbtl.search.cost).
AUTO = "auto"
#: The smallest image side: below it the backbones' strided stems leave no spatial extent.
MIN_IMAGE_SIZE = 8
#: Seeds feed numpy's ``SeedSequence`` and ``default_rng``, which take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
#: A validation or test fraction must leave most images for training.
MAX_FRACTION = 0.5
SETTING_KEYS = (
    "image_size",
    "val_fraction",
    "test_fraction",
    "per_class",
    "classes",
    "split_seed",
    "augmentation",
    "test_data",
)
#: Seeds have one name each, in Python, MLflow params and YAML alike: the split's is ``split_seed``, a search's sampler
#: seed ``search_seed`` and a trial's training seed ``seed``. Stores and files written before called the split's seed
#: ``seed``; that name is still read (:meth:`DataSettings.from_params`) where ``split_seed`` is missing.
OLD_NAMES = {"split_seed": "seed"}
#: The data settings' names in the Python API (``seed=``) and on the command line (``--seed``) where they differ from
#: the field's: there ``seed`` is the one seed a command takes (a search derives its sampler's and trials' from it).
API_NAMES = {"seed": "split_seed"}


@dataclass(frozen=True)
class DataSettings:
    """The data side of a search, a recommendation or a training run.

    The field defaults are what a search space without a ``data`` section means, and the one place
    nbtl's data defaults are written down.

    Parameters
    ----------
    image_size : int, "native" or "auto", default=64
        Side of the stored square images, in pixels (at least :data:`MIN_IMAGE_SIZE`); ``"native"`` gives each
        backbone the resolution its weights were trained at (``spec.input_size``: 224 for EfficientNet-Lite0,
        240 for Lite1, 260 for Lite2), so a search over several backbones decodes the data once per size
        (:meth:`for_backbone`); ``"auto"``: a search picks the largest size at which its start points fit in a
        quarter of its time budget (:func:`nbtl.search.cost.auto_image_size`; native on a GPU or without a budget).
    val_fraction, test_fraction : float, default=0.15
        Share of each class for validation and for test, each in (0, 0.5).
    per_class : int or None, default=None
        Keep at most this many images per class (chosen with ``split_seed``); None keeps all.
    classes : str or None, default=None
        Keep only these classes, by name or 0-based index, comma-separated (``"0,2,4"``).
    split_seed : int, default=0
        Seeds the per-class choice and the split. A search's ``--seed`` (``search.seed``) sets it, and its sampler
        seed (``search_seed``) and its trials' seeds derive from the same number.
    augmentation : dict or None, default=None
        Training-time augmentation, see :func:`nbtl.data.make_augmentation`; None is none.
    test_data : str or None, default=None
        A second source holding the official test images (``--test-data``), see
        :func:`nbtl.data.load_dataset`; None: the test set comes from the data itself (its ``test/``
        folder, else ``test_fraction`` of it).
    """

    image_size: int | str = 64
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    per_class: int | None = None
    classes: str | None = None
    split_seed: int = 0
    augmentation: dict[str, Any] | None = None
    test_data: str | None = None

    def __post_init__(self) -> None:
        for key in SETTING_KEYS:
            object.__setattr__(self, key, check_setting(key, getattr(self, key), "data settings"))

    @classmethod
    def from_space(cls, space, overrides: Mapping[str, Any] | None = None) -> DataSettings:
        """The settings of a search space (its ``data`` section and ``search.seed``), with ``overrides``
        (e.g. command-line flags) on top; an override of None leaves the space's value."""
        values = {k: space.data[k] for k in SETTING_KEYS if k in (space.data or {})}
        if (space.search or {}).get("seed") is not None:
            values["split_seed"] = space.search["seed"]
        return cls(**values).with_overrides(overrides)

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], where: str = "data settings", base: DataSettings | None = None
    ) -> DataSettings:
        """Settings read back from MLflow params (strings) or a YAML mapping. A key that is missing or
        unset (None, ``"None"``, ``""``) keeps its value in ``base`` (default: the field defaults); an
        ``augmentation`` of ``{}`` means none. Other keys are ignored. A bad value raises one
        :class:`ConfigError` naming ``where``."""
        values = {}
        for key in SETTING_KEYS:
            value = params.get(key)
            if key in OLD_NAMES and is_unset(value):
                value = params.get(OLD_NAMES[key])  # a store or file written before (split_seed wins over it)
            if key == "augmentation" and isinstance(value, str) and not is_unset(value):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise ConfigError(f"{where}: augmentation {value!r} is not a JSON mapping") from None
            if not isinstance(value, (dict, list)) and is_unset(value):
                continue
            values[key] = check_setting(key, value, where)
        return dataclasses.replace(base or cls(), **values)

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> DataSettings:
        """These settings with every non-None value of ``overrides`` replacing the field of that name."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = sorted(set(given) - set(SETTING_KEYS))
        if unknown:
            raise ConfigError(f"data settings: unknown setting {unknown[0]!r}; use only {', '.join(SETTING_KEYS)}")
        return dataclasses.replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as written into a recommendation YAML (no augmentation as ``{}``, so that it reads
        back as none, not as unset)."""
        values = {k: getattr(self, k) for k in SETTING_KEYS}
        return {**values, "augmentation": dict(self.augmentation or {})}

    def to_params(self) -> dict[str, Any]:
        """MLflow params (the augmentation as JSON), as logged on a search's parent run."""
        return {**self.to_dict(), "augmentation": json.dumps(self.augmentation or {}, sort_keys=True)}

    def size_for(self, backbone: str) -> int:
        """The image side ``backbone`` is trained and scored at: ``image_size``, or the backbone's own (``native``,
        and ``auto`` where no search resolved it: with no budget to fit, the backbone's own)."""
        if self.image_size not in (NATIVE, AUTO):
            return int(self.image_size)
        return int(get_spec(backbone).input_size)

    def for_backbone(self, backbone: str) -> DataSettings:
        """These settings at ``backbone``'s image size (:meth:`size_for`)."""
        return dataclasses.replace(self, image_size=self.size_for(backbone))

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`nbtl.data.load_dataset` (besides the source)."""
        if self.image_size in (NATIVE, AUTO):
            raise ConfigError(
                f"image_size {self.image_size} gives each backbone a size of its own, and this decodes the data at one size: "
                "give an image size in pixels (e.g. --image-size 224)"
            )
        return {
            "image_size": self.image_size,
            "per_class": self.per_class,
            "seed": self.split_seed,
            "classes": self.classes,
            "test_data": self.test_data,
        }

    def split_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`nbtl.data.split_dataset` (besides the dataset)."""
        return {"val_fraction": self.val_fraction, "test_fraction": self.test_fraction, "seed": self.split_seed}

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_params(), sort_keys=True, default=str))


def checked_overrides(**values: Any) -> dict[str, Any]:
    """Data settings given as keyword arguments by the Python API's names (``seed``), each checked as its
    command-line flag is and named in the message, as overrides by DataSettings' names (``split_seed``); a value of
    None is not given."""
    return {
        API_NAMES.get(key, key): None if value is None else check_setting(API_NAMES.get(key, key), value, key)
        for key, value in values.items()
    }


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is one (also ``"64"`` or ``64.0`` as read back from MLflow), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def check_setting(key: str, value: Any, where: str) -> Any:
    """``value`` of setting ``key``, checked and normalised; a bad one raises one :class:`ConfigError`
    that starts with ``where`` (a flag such as ``--seed``, or a file) and says what is allowed."""
    if key == "image_size":
        if isinstance(value, str) and value.strip().lower() in (NATIVE, AUTO):
            return value.strip().lower()
        number = _integer(value)
        if number is None or number < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"{where}: image_size must be an integer >= {MIN_IMAGE_SIZE} (pixels), native (each backbone's "
                f"own) or auto (what a search's time budget affords), got {value!r}"
            )
        return number
    if key in ("val_fraction", "test_fraction"):
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not 0 < number < MAX_FRACTION:
            raise ConfigError(
                f"{where}: {key} must be a number between 0 and {MAX_FRACTION} (exclusive), got {value!r}"
            )
        return number
    if key == "per_class":
        if value is None:
            return None
        number = _integer(value)
        if number is None or number < MIN_IMAGES_PER_CLASS:
            raise ConfigError(
                f"{where}: per_class must be an integer >= {MIN_IMAGES_PER_CLASS} (one image each for "
                f"train, val and test), got {value!r}"
            )
        return number
    if key == "classes":
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        if isinstance(value, bool) or not str(value).strip():
            raise ConfigError(f"{where}: classes must name classes by name or 0-based index, e.g. 0,2,4; got {value!r}")
        return str(value)
    if key == "split_seed":
        number = _integer(value)
        if number is None or not 0 <= number <= MAX_SEED:
            raise ConfigError(f"{where}: the seed must be an integer in 0..{MAX_SEED} (2**32-1), got {value!r}")
        return number
    if key == "test_data":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
            raise ConfigError(
                f"{where}: test_data must name a dataset source (a folder or CSV of the test images), got {value!r}"
            )
        return os.fspath(value)
    if key == "augmentation":
        if value in (None, {}):
            return None
        try:
            make_augmentation(value)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        return dict(value)
    raise ConfigError(f"{where}: unknown data setting {key!r}; use only {', '.join(SETTING_KEYS)}")
