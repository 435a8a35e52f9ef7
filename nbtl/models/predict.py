"""Classifying image files with a model nbtl logged or registered (what ``nbtl predict`` runs; no argparse here).

Three steps, each failing in one line before the next starts:

1. :func:`resolve_model`: MODEL as an MLflow model URI (``models:/NAME/VERSION``, ``models:/NAME@alias``,
   ``models:/m-<id>``, ``runs:/RUN_ID/model``; anything with ``:/``), a local MLflow model folder, or the name
   of a search: its registered model's newest version, else the model logged on its newest finished parent run.
2. :func:`list_images`: image files, folders (searched recursively for image files) and CSV files (one column
   of paths) as one list of files, every one of them there.
3. :func:`predict_files`: each file read and decoded *before* it goes to the model, so an unreadable image gets
   one warning naming it and a row with an ``error``, and the others go on; the readable ones go to the
   ``mlflow.pyfunc`` model in batches, as its input schema asks (a binary ``image`` column of file bytes).

The result is one row per image, in the order given: ``path``, ``class`` and ``probability`` (the most
probable class), ``class_2`` / ``probability_2`` ... up to ``top_k``, and ``error`` (empty when classified).
"""

from __future__ import annotations

import csv
import logging
import re
import sys
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from nbtl.data.listing import check_listed_files, image_extensions, images_under
from nbtl.errors import ConfigError, DataError, NbtlError, one_line
from nbtl.models.classifier import decode_image
from nbtl.models.classifier import top_k as best_classes
from nbtl.models.export import CLASSIFIER_ARTIFACT, IMAGE_COLUMN, mlflow_uris
from nbtl.models.pyfunc import ClassifierModel
from nbtl.tracking import MODEL_URI_TAG, SEARCH_TAG, check_tracking_uri, finished_searches, tracking_client

logger = logging.getLogger(__name__)

#: CSV columns taken as the image paths, in this order of preference (else the first column).
PATH_COLUMNS = ("path", "image", "file", "filename")
ERROR_COLUMN = "error"
URI_FORMS = "models:/NAME/VERSION, runs:/RUN_ID/model, or the name of a search that finished"


# --------------------------------------------------------------------------------------------- the model


def _store_problem(tracking_uri: str) -> str | None:
    """Why ``tracking_uri`` cannot hold a model to read (a SQLite file that is not there: predicting never
    creates a store), or None."""
    parts = urlsplit(tracking_uri)
    if parts.scheme == "sqlite":
        path = Path(tracking_uri[len("sqlite:///") :]) if tracking_uri.startswith("sqlite:///") else None
        if path is not None and str(path) != ":memory:" and not path.is_file():
            return f"there is no MLflow store {tracking_uri} (no file {path})"
    return None


def check_store(tracking_uri: str) -> None:
    """Fail in one line when the store cannot be read: a missing SQLite file, or an MLflow server that does
    not answer (:func:`nbtl.tracking.check_tracking_uri`)."""
    problem = _store_problem(tracking_uri)
    if problem:
        raise ConfigError(
            f"{problem}: run it where the search ran, or give --tracking-uri "
            "(or $MLFLOW_TRACKING_URI) naming the store the search logged to"
        )
    if urlsplit(tracking_uri).scheme in ("http", "https"):
        check_tracking_uri(tracking_uri)


def _registered_version(client, name: str) -> str | None:
    """``models:/NAME/VERSION`` of the newest version of registered model ``name``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # none, or not a model name
            return None
        raise
    # the newest version of each stage; versions never moved to a stage are all in stage "None"
    versions = [int(v.version) for v in registered.latest_versions or []]
    return f"models:/{name}/{max(versions)}" if versions else None


def _search_model(client, name: str) -> str | None:
    """The model URI logged on the newest FINISHED parent run of search ``name``, or None."""
    return next(
        (r.data.tags[MODEL_URI_TAG] for r in finished_searches(client, name) if MODEL_URI_TAG in r.data.tags), None
    )


def _known_models(client) -> list[str]:
    """Names ``nbtl predict`` would take in this store: registered models and searches that logged a model."""
    names = {m.name for m in client.search_registered_models(max_results=100)}
    names |= {r.data.tags[SEARCH_TAG] for r in finished_searches(client) if MODEL_URI_TAG in r.data.tags}
    return sorted(names)


def resolve_model(model: str, tracking_uri: str) -> str:
    """The model URI (or local model folder) ``model`` names; see the module docstring.

    Raises
    ------
    ConfigError
        One line: a name that is neither a registered model nor a search with a model in ``tracking_uri``
        (listing the names that are), or a store that cannot be read.
    """
    from mlflow.exceptions import MlflowException

    model = model.strip()
    if not model:
        raise ConfigError(f"MODEL is empty: give {URI_FORMS}")
    if ":/" in model:
        return model
    folder = Path(model).expanduser()
    if (folder / "MLmodel").is_file():
        return str(folder.resolve())
    check_store(tracking_uri)
    try:
        client = tracking_client(tracking_uri)
        uri = _registered_version(client, model) or _search_model(client, model)
        if uri:
            logger.debug("model %r is %s", model, uri)
            return uri
        known = _known_models(client)
    except MlflowException as error:
        raise ConfigError(f"cannot read the MLflow store {tracking_uri}: {one_line(error)}") from None
    more = f" and {len(known) - 10} more" if len(known) > 10 else ""
    here = f"models here: {', '.join(known[:10])}{more}" if known else "no registered model or finished search here"
    if "/" in model:
        where = f"no model folder '{model}' (with an MLmodel file) and no model of that name in {tracking_uri}"
    else:
        where = f"no model '{model}' in {tracking_uri}"
    raise ConfigError(f"{where}: give {URI_FORMS} ({here})")


@dataclass
class LoadedModel:
    """A pyfunc model (``.predict(DataFrame, params=...)``) with what predicting needs from its metadata."""

    uri: str
    pyfunc: Any
    classes: list[str]
    image_size: int


class _OwnPyfunc:
    """An nbtl classifier served by nbtl's own :class:`~nbtl.models.pyfunc.ClassifierModel`, from the model's
    plain-tensor ``classifier`` artifact alone: neither the model's stored code nor any pickle is run."""

    def __init__(self, classifier_folder: Path):
        self.model = ClassifierModel()
        self.model.load_context(SimpleNamespace(artifacts={CLASSIFIER_ARTIFACT: str(classifier_folder)}))

    def predict(self, data, params: dict[str, Any] | None = None):
        return self.model.predict(None, data, params=params)


def nbtl_model_problem(info) -> str | None:
    """Why the model described by ``info`` (``mlflow.models.get_model_info``: its MLmodel file, nothing loaded)
    is not an nbtl image classifier, or None when it is one."""
    flavor = (info.flavors or {}).get("python_function") or {}
    metadata = info.metadata or {}
    artifact = (flavor.get("artifacts") or {}).get(CLASSIFIER_ARTIFACT) or {}
    if not metadata.get("classes") or not metadata.get("image_size"):
        return "its metadata has no classes or image size"
    if not artifact.get("path"):  # nbtl never runs the flavor's loader: the artifact is all it reads
        return f"it has no python_function flavor with a {CLASSIFIER_ARTIFACT!r} artifact"
    return None


def load_model(uri: str, tracking_uri: str, allow_foreign: bool = False) -> LoadedModel:
    """Load ``uri`` from ``tracking_uri`` (tracking and registry) as an nbtl image classifier, without running
    anything the model carries.

    The model's MLmodel file is read first (``mlflow.models.get_model_info``); a model that is not an nbtl
    classifier is refused before anything else is downloaded or loaded. An nbtl classifier is then rebuilt by
    nbtl's own code from its ``classifier`` artifact (``classifier.json`` and ``torch.load(...,
    weights_only=True)`` tensors): the Python file and any pickle stored with the model are never run, so a
    model registered under a known name by someone else cannot run code on the machine that predicts with it.
    ``allow_foreign`` (``--allow-foreign-models``) loads any pyfunc model with ``mlflow.pyfunc.load_model``,
    which runs its code and unpickles its objects: only for models whose every writer you trust.

    Raises
    ------
    ConfigError
        One line naming the URI and the store: it cannot be found or loaded, or it is not an nbtl classifier.
    """
    import mlflow.artifacts
    import mlflow.models
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    in_store = uri.startswith(("models:/", "runs:/"))  # else a folder or an artifact URI, which name their place
    if in_store:
        check_store(tracking_uri)
    where = f"{uri} from {tracking_uri}" if in_store else uri

    def cannot_load(error: BaseException) -> ConfigError:
        return ConfigError(
            f"cannot load the model {where}: {one_line(error)}; give {URI_FORMS} "
            "(see the MLflow UI, or the model line a search printed)"
        )

    try:
        with mlflow_uris(tracking_uri):
            info = mlflow.models.get_model_info(uri)
            problem = nbtl_model_problem(info)
            if problem is not None and not allow_foreign:
                raise ConfigError(
                    f"the model {where} is not an nbtl image classifier ({problem}), so it was not loaded: give a "
                    "model that nbtl search or nbtl ensemble logged (--allow-foreign-models loads it anyway and "
                    "runs its code: only for a model whose every writer you trust)"
                )
            if problem is None:  # files only: the weights are read into memory, then the copy goes
                artifact = info.flavors["python_function"]["artifacts"][CLASSIFIER_ARTIFACT]["path"]
                with tempfile.TemporaryDirectory(prefix="nbtl-model-") as folder:
                    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder)
                    model: Any = _OwnPyfunc(Path(local) / artifact)
            else:
                try:
                    model = mlflow.pyfunc.load_model(uri)
                except Exception as error:  # noqa: BLE001 -- a foreign model may fail in any way it likes
                    raise cannot_load(error) from None
    except (MlflowException, OSError, NbtlError) as error:
        if isinstance(error, ConfigError):  # already one line: not nbtl's, or a foreign model that broke
            raise
        raise cannot_load(error) from None
    metadata = info.metadata or {}
    classes = metadata.get("classes")
    if not classes or not metadata.get("image_size"):  # a foreign model loaded on request still needs these
        raise ConfigError(
            f"the model {where} is not an nbtl image classifier (its metadata has no classes or image size); give "
            "a model that nbtl search or nbtl ensemble logged"
        )
    logger.debug("loaded %s: %d classes, %d px", uri, len(classes), int(metadata["image_size"]))
    return LoadedModel(uri, model, [str(c) for c in classes], int(metadata["image_size"]))


# --------------------------------------------------------------------------------------------- the images


def _images_in_folder(folder: Path) -> list[Path]:
    return images_under(folder, image_extensions())


def _images_in_csv(csv_path: Path) -> list[Path]:
    """The image paths in one column of ``csv_path`` (see :data:`PATH_COLUMNS`); relative ones from the CSV's
    folder. A CSV whose first line is already a path (no header) is read from its first line."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as stream:
            rows = [
                (number, row) for number, row in enumerate(csv.reader(stream), start=1) if any(c.strip() for c in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read CSV '{csv_path}': {error}; save it as UTF-8 text") from None
    if not rows:
        raise DataError(f"CSV '{csv_path}' is empty; give one image path per row (header: path)")

    def resolved(text: str) -> Path:
        path = Path(text.strip()).expanduser()
        return path if path.is_absolute() else csv_path.parent / path

    header = [cell.strip() for cell in rows[0][1]]
    lowered = [cell.lower() for cell in header]
    column = next((lowered.index(name) for name in PATH_COLUMNS if name in lowered), None)
    if column is None and header and header[0] and resolved(header[0]).is_file():
        column, body = 0, rows  # no header: the first line is an image already
    else:
        column, body = column or 0, rows[1:]
    if not body:
        raise DataError(f"CSV '{csv_path}' has a header but no rows; add one image path per row")
    paths = []
    for number, row in body:
        text = row[column].strip() if column < len(row) else ""
        if not text:
            raise DataError(
                f"CSV '{csv_path}' line {number}: no path in column {header[column]!r}; fill it in or delete the row"
            )
        paths.append((number, resolved(text)))
    check_listed_files(csv_path, paths)
    return [path for _, path in paths]


def list_images(arguments: Sequence[str | Path]) -> list[Path]:
    """The image files ``arguments`` name, in order: a file as it is, a folder's image files (recursively, by
    extension, sorted, hidden ones skipped), a ``.csv`` file's listed paths.

    Raises
    ------
    DataError
        One line: a path that is not there, a CSV that cannot be read or names a missing file, or no images
        at all.
    """
    images: list[Path] = []
    for argument in arguments:
        path = Path(argument).expanduser()
        if not path.exists():
            raise DataError(f"'{argument}' not found: give image files, folders of images or a CSV of image paths")
        if path.is_dir():
            found = _images_in_folder(path)
            if not found:
                logger.warning("folder '%s' holds no image files; nothing to classify there", argument)
            images += found
        elif path.suffix.lower() == ".csv":
            images += _images_in_csv(path)
        else:
            images.append(path)
    if not images:
        raise DataError(
            f"no images in {', '.join(map(str, arguments))}: give image files, or folders holding "
            f"files with extensions {', '.join(image_extensions())}"
        )
    return images


_PIL_NOISE = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class UnreadableImage(DataError):
    """An image file that cannot be read or decoded: ``cannot read image 'PATH': REASON``."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, _PIL_NOISE.sub("", reason).strip() or "unreadable"
        super().__init__(f"cannot read image '{path}': {self.reason}")


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_image(path: Path, image_size: int) -> bytes:
    """``path``'s bytes, checked to decode as the model will decode them (:func:`nbtl.models.classifier.decode_image`,
    which verifies them as the training data's files are).

    Raises
    ------
    UnreadableImage
        Naming the file and why.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnreadableImage(path, error.strerror or _reason(error)) from None
    name = f"'{path}'"
    try:
        decode_image(data, image_size, name=name)
    except DataError as error:  # "cannot read NAME: REASON; send a PNG or JPEG file's bytes"
        raise UnreadableImage(path, _reason(error).removeprefix(f"cannot read {name}: ").split("; send ")[0]) from None
    return data


# --------------------------------------------------------------------------------------------- predicting


def columns(top_k: int) -> list[str]:
    """The columns of a prediction table with ``top_k`` classes per image."""
    names = ["path", "class", "probability"]
    for rank in range(2, top_k + 1):
        names += [f"class_{rank}", f"probability_{rank}"]
    return [*names, ERROR_COLUMN]


def _rows(model: LoadedModel, paths: list[Path], data: list[bytes], top_k: int, batch_size: int) -> list[dict]:
    """One row per image of ``data`` (readable images): the pyfunc model's top-``top_k`` classes."""
    output = model.pyfunc.predict(pd.DataFrame({IMAGE_COLUMN: data}), params={"batch_size": batch_size})
    probabilities = np.asarray(output["probabilities"].tolist(), dtype=np.float64).reshape(len(data), -1)
    if probabilities.shape[1] != len(model.classes):
        raise ConfigError(
            f"the model {model.uri} gives {probabilities.shape[1]} probabilities per image for "
            f"{len(model.classes)} classes in its metadata; log the model again"
        )
    rows = []
    for path, picks in zip(paths, best_classes(probabilities, model.classes, top_k), strict=True):
        row: dict[str, Any] = {"path": str(path)}
        for rank, (name, probability) in enumerate(picks, start=1):
            suffix = "" if rank == 1 else f"_{rank}"
            row[f"class{suffix}"], row[f"probability{suffix}"] = name, probability
        rows.append({**row, ERROR_COLUMN: ""})
    return rows


def _batch(model: LoadedModel, paths: list[Path], top_k: int, batch_size: int) -> list[dict]:
    """Rows of one batch of files, in order: unreadable ones get an error (and a warning line), the rest
    the model's classes."""
    rows: list[dict | None] = [None] * len(paths)
    good: list[int] = []
    data: list[bytes] = []
    for i, path in enumerate(paths):
        try:
            data.append(read_image(path, model.image_size))
            good.append(i)
        except UnreadableImage as error:
            logger.warning("%s; skipped", error)
            rows[i] = {"path": str(path), ERROR_COLUMN: error.reason}
    if good:
        try:
            predicted = _rows(model, [paths[i] for i in good], data, top_k, batch_size)
        except DataError:  # the model refused one of them after all: one at a time, to name it
            predicted = []
            for i, image in zip(good, data, strict=True):
                try:
                    predicted += _rows(model, [paths[i]], [image], top_k, batch_size)
                except DataError as error:
                    logger.warning("cannot classify image '%s': %s; skipped", paths[i], error)
                    predicted.append({"path": str(paths[i]), ERROR_COLUMN: one_line(error)})
        for i, row in zip(good, predicted, strict=True):
            rows[i] = row
    return [row for row in rows if row is not None]


def predict_files(
    model: LoadedModel, paths: Sequence[Path], top_k: int = 3, batch_size: int = 64, progress: bool = True
) -> pd.DataFrame:
    """Classify ``paths`` with ``model`` in batches of ``batch_size``; one row per file, in order (see
    :func:`columns`; ``top_k`` is clipped to the number of classes). A progress bar on stderr when ``progress``
    and there is more than one batch."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if top_k < 1 or batch_size < 1:
        raise ConfigError(f"top_k and batch_size must be >= 1, got {top_k} and {batch_size}")
    top_k = min(top_k, len(model.classes))
    paths = list(paths)
    show = progress and len(paths) > batch_size and sys.stderr.isatty()  # no bar redrawn into a log file or pipe
    if progress and len(paths) > batch_size and not show:
        logger.info("predict: %d images in batches of %d", len(paths), batch_size)
    rows: list[dict] = []
    bar = tqdm(total=len(paths), unit="image", desc="predict", file=sys.stderr, disable=not show, dynamic_ncols=True)
    # warnings (an unreadable image) print above the bar, not through it
    with bar, logging_redirect_tqdm([logging.getLogger("nbtl")]) if show else nullcontext():
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            rows += _batch(model, chunk, top_k, batch_size)
            bar.update(len(chunk))
    return pd.DataFrame(rows, columns=columns(top_k))


def unreadable(table: pd.DataFrame) -> int:
    """How many rows of a prediction table are images that could not be classified."""
    return int((table[ERROR_COLUMN].fillna("") != "").sum())
