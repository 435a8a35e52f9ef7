"""The one codec between nbtl's settings and text: what an MLflow param, tag or a CSV cell holds, and back.

MLflow keeps every param as text, and pandas reads a results table's gaps as NaN, so a value written as Python's
``None`` comes back as ``"None"``, ``""`` or ``nan``, a flag as ``"True"``, a list or a mapping as JSON. Every reader
of stored settings (the meta-dataset, the learned recommender, the data settings, the hand-over, a trial config read
back from its run) decodes here, and every writer encodes here, so the two agree. Plain Python: no MLflow.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["MAX_TEXT_LENGTH", "decode", "encode", "is_unset"]

#: MLflow's limit on a param value's length (6000 characters in MLflow 3); longer text is cut.
MAX_TEXT_LENGTH = 6000

_UNSET_TEXT = ("", "None", "null", "nan", "NaN")


def is_unset(value: Any) -> bool:
    """Whether a stored value stands for "not set": None, ``""``, ``"None"`` (Python's None as text), ``"null"``,
    or NaN (a gap in a table)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value in _UNSET_TEXT
    if isinstance(value, float):
        return math.isnan(value)
    try:  # numpy's floats and NaN scalars, without importing numpy
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def decode(value: Any) -> Any:
    """A stored value as the Python value it was written from: unset (:func:`is_unset`) -> None, ``"True"`` /
    ``"False"`` -> bool, ``"3"`` -> 3, ``"0.01"`` / ``"1e-4"`` / ``"1.0"`` -> float, JSON lists and mappings -> list /
    dict, other text as it is. A value that is not text is returned as it is (a numpy scalar as its Python value)."""
    if is_unset(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if not isinstance(value, str):
        return value
    if value in ("True", "False", "true", "false"):
        return value in ("True", "true")
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        plain_integer = number.is_integer() and not any(c in value for c in ".eE") and "inf" not in value.lower()
        return int(value) if plain_integer else number
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def encode(value: Any) -> str:
    """``value`` as stored text (cut to :data:`MAX_TEXT_LENGTH`): lists and mappings as JSON (sorted keys), None as
    ``"None"`` (what MLflow shows for an unset param), other values as ``str``; :func:`decode` reads it back."""
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True)
    else:
        text = str(value)
    return text[:MAX_TEXT_LENGTH]
