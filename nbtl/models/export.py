"""Log a classifier on an MLflow run as a ``mlflow.pyfunc`` model and register it in the Model Registry.

The one place besides :mod:`nbtl.tracking` that writes models to MLflow: a search's best trial
(:func:`nbtl.models.keep.export_best`) and ``nbtl ensemble`` both end here.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nbtl import __version__
from nbtl.models.classifier import Member, save_classifier

logger = logging.getLogger(__name__)

#: The artifact name of the best trial's model on a search's parent run, and of an ensemble's.
MODEL_NAME = "model"
ENSEMBLE_NAME = "ensemble"
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
#: The pyfunc model's artifact holding the classifier folder (plain tensors): all nbtl needs to rebuild it.
CLASSIFIER_ARTIFACT = "classifier"
#: The pyfunc model's input: one column of encoded image files (:mod:`nbtl.models.pyfunc` reads it).
IMAGE_COLUMN = "image"
#: ``params`` a request may pass: how many images go through the network at once.
DEFAULT_PARAMS = {"batch_size": 64}
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
#: A search's best trials keep their best-epoch weights as this artifact (a classifier folder) of their runs,
#: tagged so: what ``nbtl ensemble`` reads (nbtl.search.handover writes them).
KEPT_ARTIFACT, KEPT_TAG = "classifier", "nbtl.weights_kept"


@dataclass(frozen=True)
class LoggedClassifier:
    """Where a logged classifier is: its ``models:/`` URI and, when registered, its name and version."""

    model_uri: str
    run_uri: str
    registered_name: str | None = None
    version: str | None = None

    @property
    def registered_uri(self) -> str | None:
        return f"models:/{self.registered_name}/{self.version}" if self.registered_name else None

    @property
    def uri(self) -> str:
        """The URI to load or predict with: the registered version's, else the logged model's."""
        return self.registered_uri or self.model_uri


@contextmanager
def mlflow_uris(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (which ``Model.log`` and ``register_model`` use) at ``tracking_uri`` for the block,
    then put back exactly what was there: an unset URI stays unset (so a later ``mlflow.set_tracking_uri`` of the
    caller's still moves the registry with it), and so do ``$MLFLOW_TRACKING_URI`` / ``$MLFLOW_REGISTRY_URI``."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry
    import mlflow.tracking._tracking_service.utils as tracking

    saved = tracking._tracking_uri, registry._registry_uri
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", PROGRESS_BAR)
    environment = {k: os.environ.get(k) for k in keys}
    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    os.environ.setdefault(PROGRESS_BAR, "false")  # MLflow's per-download tqdm bars, unless the user asked for them
    if not logger.isEnabledFor(logging.DEBUG):
        mlflow_logger.setLevel(max(level, logging.WARNING))  # "Validating input example ..."
    try:
        yield
    finally:
        mlflow_logger.setLevel(level)
        mlflow.set_tracking_uri(saved[0])
        registry._registry_uri = saved[1]
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 ``(3, H, W)`` or ``(H, W, 3)`` image as a PNG file's bytes (the model's input example)."""
    from PIL import Image

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def signature():
    """Input: a binary ``image`` column (an image file's bytes); output: class, probability, probabilities, logits."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
        outputs=Schema(
            [
                ColSpec("string", "class"),
                ColSpec("double", "probability"),
                ColSpec(Array("double"), "probabilities"),
                ColSpec(Array("double"), "logits"),
            ]
        ),
        params=ParamSchema([ParamSpec("batch_size", "long", DEFAULT_PARAMS["batch_size"])]),
    )


def requirements() -> list[str]:
    """What a serving environment installs; nbtl itself must be installed there (``--env-manager local``)."""
    from importlib.metadata import version

    def pinned(package: str) -> str:
        return f"{package}=={version(package).split('+')[0]}"

    return [pinned(p) for p in ("mlflow", "torch", "torchvision", "pillow", "numpy", "pandas")] + [
        f"nbtl=={__version__}"
    ]


def log_classifier(
    tracking_uri: str,
    run_id: str,
    members: Sequence[Member],
    classes: Sequence[str],
    image_size: int,
    example: np.ndarray,
    *,
    name: str = MODEL_NAME,
    register: str | None = None,
    tags: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> LoggedClassifier:
    """Log ``members`` (one trial's model, or an ensemble's) as the pyfunc model ``name`` of run ``run_id``.

    ``example`` (one uint8 image) becomes the input example; ``metadata`` joins the model's (classes, image
    size and each member's trial config are always there). With ``register``, the model becomes a new
    version of the registered model of that name, with ``tags`` (e.g. the search's metrics) on the version.
    """
    import mlflow
    import pandas as pd
    from mlflow.models import Model

    info_metadata = {
        "classes": [str(c) for c in classes],
        "image_size": int(image_size),
        "members": len(members),
        "trial_configs": [m.config for m in members],
        "nbtl_version": __version__,
        **(metadata or {}),
    }
    with tempfile.TemporaryDirectory(prefix="nbtl-classifier-") as folder, mlflow_uris(tracking_uri):
        directory = save_classifier(Path(folder) / "classifier", members, classes, image_size)
        client = mlflow.MlflowClient(tracking_uri)
        # created here, in the run's experiment (Model.log would put it in the fluent API's active experiment)
        model = client.create_logged_model(
            client.get_run(run_id).info.experiment_id,
            name=name,
            source_run_id=run_id,
            tags={"nbtl.members": str(len(members)), "nbtl.version": __version__},
            model_type="image-classifier",
        )
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model.model_id,
            python_model=str(MODEL_CODE),
            artifacts={CLASSIFIER_ARTIFACT: str(directory)},
            signature=signature(),
            input_example=pd.DataFrame({IMAGE_COLUMN: [png_bytes(example)]}),
            pip_requirements=requirements(),
            metadata=info_metadata,
        )
        logged = LoggedClassifier(info.model_uri, f"runs:/{run_id}/{name}")
        if register:
            version = mlflow.register_model(info.model_uri, register, tags={k: str(v) for k, v in (tags or {}).items()})
            logged = LoggedClassifier(info.model_uri, logged.run_uri, register, str(version.version))
    logger.info("logged the classifier on run %s as %s", run_id, logged.uri)
    return logged
