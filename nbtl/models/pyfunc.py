"""The MLflow face of a classifier: a ``mlflow.pyfunc`` model, so ``mlflow.pyfunc.load_model``,
``mlflow models serve`` and the Model Registry work on what nbtl trained.

The model is logged "from code" (``mlflow_model.py`` names :class:`ClassifierModel`), with the
classifier folder (:mod:`nbtl.models.classifier`) as its one artifact: loading it unpickles nothing.

Input: a DataFrame with an ``image`` column, each value an encoded image file's bytes (PNG, JPEG; base64
text in a JSON request to ``mlflow models serve``). The signature admits nothing else through
``mlflow.pyfunc.load_model(...).predict``; for arrays or PIL images use the torch module,
``model.unwrap_python_model().classifier`` (:class:`~nbtl.models.classifier.ImageClassifier`). Output: one row
per image with ``class`` (the most probable), ``probability`` (its probability), and ``probabilities``
and ``logits`` (lists in the order of the model's ``classes`` metadata).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from nbtl.errors import DataError
from nbtl.models.classifier import load_classifier
from nbtl.models.export import CLASSIFIER_ARTIFACT, DEFAULT_PARAMS, IMAGE_COLUMN

_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")


class ImageInputError(MlflowException, DataError):
    """Images a request sent that the model cannot read: a :class:`~nbtl.errors.DataError` to nbtl, and to
    ``mlflow models serve`` an MLflow error it answers with HTTP 400 and this message."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def image_values(model_input: Any) -> list[Any]:
    """The images of a pyfunc input, one list entry per image (see the module docstring)."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input:
            values = model_input[IMAGE_COLUMN].tolist()
        elif len(model_input.columns) == 1:
            values = model_input.iloc[:, 0].tolist()
        else:
            raise DataError(
                f"the input has columns {list(model_input.columns)}: send one column named {IMAGE_COLUMN!r}"
            )
    elif isinstance(model_input, dict):
        values = model_input.get(IMAGE_COLUMN)
        if values is None:
            raise DataError(f"the input has keys {sorted(model_input)}: send the images under {IMAGE_COLUMN!r}")
        values = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    elif isinstance(model_input, np.ndarray) and model_input.dtype != object:
        # (H, W) or (H, W, 3): one image; (N, H, W, 3): N images
        values = list(model_input) if model_input.ndim == 4 else [model_input]
    elif isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
        values = list(model_input)
    else:
        values = [model_input]
    return [_decoded(v) for v in values]


def _decoded(value: Any) -> Any:
    """Base64 text as the bytes it encodes. The scoring server decodes a binary column's base64 in the
    ``dataframe_split`` / ``dataframe_records`` JSON forms, but passes the text on as bytes in the ``inputs`` /
    ``instances`` forms; an image file's own bytes are never all base64 (PNG, JPEG, GIF, BMP, WebP headers)."""
    if isinstance(value, str):
        return _from_text(value)
    if isinstance(value, (bytes, bytearray)) and _BASE64.fullmatch(value):
        try:
            return base64.b64decode(value)  # skips the line breaks of MIME-style base64
        except (binascii.Error, ValueError):
            pass
    return value


def _from_text(value: str) -> bytes:
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(
            "an image came as text that is not base64: send each image file's bytes, base64-encoded in JSON"
        ) from None


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """``mlflow.pyfunc`` model of an :class:`~nbtl.models.classifier.ImageClassifier` (one model or an ensemble)."""

    # the signature (a binary ``image`` column) validates the input; type hints on predict would only repeat it
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.classifier = load_classifier(context.artifacts[CLASSIFIER_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import torch

        batch_size = int({**DEFAULT_PARAMS, **(params or {})}["batch_size"])
        try:
            images = self.classifier.preprocess(image_values(model_input))
        except DataError as error:
            raise ImageInputError(str(error)) from None
        logits = self.classifier.logits(images, batch_size=max(1, batch_size))
        probabilities = torch.softmax(logits, 1)
        best = probabilities.argmax(1)
        classes = self.classifier.classes
        return pd.DataFrame(
            {
                "class": [classes[int(i)] for i in best],
                "probability": probabilities.gather(1, best[:, None])[:, 0].double().numpy(),
                "probabilities": [row.tolist() for row in probabilities.double().numpy()],
                "logits": [row.tolist() for row in logits.double().numpy()],
            }
        )
