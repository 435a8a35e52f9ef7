"""``nbtl predict``: a real model logged and registered in a real MLflow SQLite store (tests/models_support.py),
real PNG files (good, corrupt, truncated), the real ``nbtl`` command in a subprocess for what the user sees."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from models_support import log_small_model, write_pngs

from conftest import run_nbtl
from nbtl.errors import ConfigError, DataError
from nbtl.models.export import mlflow_uris
from nbtl.models.predict import list_images, load_model, predict_files, resolve_model

MODEL_NAME = "digits-probe"
SEARCH_NAME = "probe-search"


@pytest.fixture(scope="module")
def probe(tmp_path_factory, one_torch_thread):
    """The store, the logged model, ten digit PNGs (named ``digit<i>-<label>.png``) and what the model's own
    pyfunc ``predict`` says of them. The model's run is also tagged as a finished search's parent run (as
    nbtl.search.handover tags one), so the search name ``probe-search`` finds it without the registry.
    One torch thread: on shared CPUs, fitting the probe's head with two takes minutes instead of seconds."""
    folder = tmp_path_factory.mktemp("predict")
    uri, run_id, logged, dataset = log_small_model(folder, register=MODEL_NAME)
    mlflow.MlflowClient(uri).set_tag(run_id, "nbtl.role", "search")
    mlflow.MlflowClient(uri).set_tag(run_id, "nbtl.search", SEARCH_NAME)
    mlflow.MlflowClient(uri).set_tag(run_id, "nbtl.model_uri", logged.model_uri)
    paths = write_pngs(folder / "images", dataset, count=10)
    with mlflow_uris(uri):
        pyfunc = mlflow.pyfunc.load_model(logged.registered_uri)
    own = pyfunc.predict(pd.DataFrame({"image": [p.read_bytes() for p in paths]}))
    expected = dict(zip(map(str, paths), own["class"], strict=True))
    return {"uri": uri, "run_id": run_id, "logged": logged, "paths": paths, "expected": expected, "folder": folder}


def label(path: str | Path) -> str:
    """The true class in a ``write_pngs`` file name."""
    return Path(path).stem.rsplit("-", 1)[1]


def test_cli_on_files_matches_the_models_own_predictions(probe, tmp_path):
    out = tmp_path / "predictions.csv"
    paths = [str(p) for p in probe["paths"]]
    result = run_nbtl(
        "predict",
        probe["logged"].registered_uri,  # models:/digits-probe/1
        *paths,
        "--top-k",
        "20",  # clipped to the 10 classes
        "--out",
        str(out),
        "--tracking-uri",
        probe["uri"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    assert "Add type hints" not in result.stderr  # MLflow's advice to the model's author is not shown
    assert "10/10" not in result.stderr  # one batch: no progress bar
    ranks = [f"{c}_{r}" for r in range(2, 11) for c in ("class", "probability")]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["path", "class", "probability", *ranks]  # no error column: nothing failed
    assert [line.split()[:2] for line in lines[1:]] == [[p, probe["expected"][p]] for p in paths]

    table = pd.read_csv(out, dtype={c: str for c in ["class", *ranks[::2]]}, keep_default_na=False)
    assert list(table.columns) == ["path", "class", "probability", *ranks, "error"]
    assert list(table["path"]) == paths and (table["error"] == "").all()
    assert list(table["class"]) == [probe["expected"][p] for p in paths]
    probabilities = table[["probability", *ranks[1::2]]].to_numpy(dtype=float)
    assert (np.diff(probabilities, axis=1) <= 0).all() and (probabilities.sum(1) <= 1 + 1e-6).all()
    assert all(sorted(row) == sorted(map(str, range(10))) for row in table[["class", *ranks[::2]]].to_numpy())
    correct = sum(c == label(p) for p, c in zip(table["path"], table["class"], strict=True))
    assert correct >= 8, table[["path", "class", "probability"]]  # fitted on these very digits


def test_every_form_of_model_gives_the_same_classes(probe):
    logged, run_id = probe["logged"], probe["run_id"]
    assert resolve_model(MODEL_NAME, probe["uri"]) == f"models:/{MODEL_NAME}/1"  # the registry's newest
    assert resolve_model(SEARCH_NAME, probe["uri"]) == logged.model_uri  # a search's parent run
    for given in (f"models:/{MODEL_NAME}/1", f"runs:/{run_id}/model", logged.model_uri, MODEL_NAME, SEARCH_NAME):
        model = load_model(resolve_model(given, probe["uri"]), probe["uri"])
        table = predict_files(model, probe["paths"], top_k=1, batch_size=3, progress=False)
        assert list(table.columns) == ["path", "class", "probability", "error"]
        assert dict(zip(table["path"], table["class"], strict=True)) == probe["expected"], given


def test_unreadable_images_are_named_and_the_rest_classified(probe, tmp_path):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for path in probe["paths"][:6]:
        shutil.copy(path, folder / path.name)
    for path in probe["paths"][6:]:
        shutil.copy(path, folder / "more" / path.name)  # folders are searched recursively
    (folder / "garbage.png").write_bytes(b"this is not a PNG file at all")
    good = probe["paths"][0].read_bytes()
    (folder / "more" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("not an image: not listed")
    out = tmp_path / "out.csv"
    # the search name, in batches of 4 (three batches: progress on stderr)
    result = run_nbtl(
        "predict", SEARCH_NAME, str(folder), "--out", str(out), "--batch-size", "4", "--tracking-uri", probe["uri"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "cannot read image" in line]
    assert len(errors) == 2, result.stderr
    assert any("garbage.png" in line for line in errors) and any("truncated.png" in line for line in errors)
    assert "2 of 12 images could not be read" in result.stderr
    # stderr is a pipe: one plain progress line, no tqdm bar redrawn with carriage returns
    assert "predict: 12 images in batches of 4" in result.stderr and "\r" not in result.stderr

    assert result.stdout.splitlines()[0].split() == [
        "path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3", "error",
    ]  # fmt: skip
    table = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(table) == 12 and "notes.txt" not in " ".join(table["path"])
    bad = table[table["error"] != ""]
    assert sorted(Path(p).name for p in bad["path"]) == ["garbage.png", "truncated.png"]
    assert (bad["class"] == "").all() and (bad["probability"] == "").all()
    classified = table[table["error"] == ""]
    assert {Path(p).name: c for p, c in zip(classified["path"], classified["class"], strict=True)} == {
        Path(p).name: c for p, c in probe["expected"].items()
    }


def test_a_csv_lists_images(probe, tmp_path):
    images = probe["paths"]
    (tmp_path / "sub").mkdir()
    with_header = tmp_path / "sub" / "list.csv"
    relative = [Path("..") / "images" / p.name for p in images[:3]]
    shutil.copytree(images[0].parent, tmp_path / "images")
    with open(with_header, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["label", "Image"])  # the path column, not the first: found by its name
        writer.writerows([[label(p), str(p)] for p in relative] + [[label(images[3]), str(images[3])]])
    listed = list_images([with_header])
    expected = [(tmp_path / "images" / p.name) for p in images[:3]] + [images[3]]
    assert [p.resolve() for p in listed] == [p.resolve() for p in expected]

    no_header = tmp_path / "plain.csv"
    no_header.write_text("".join(f"{p}\n" for p in images[4:7]))
    assert list_images([no_header, images[9]]) == [*images[4:7], images[9]]

    model = load_model(f"models:/{MODEL_NAME}/1", probe["uri"])
    table = predict_files(model, list_images([no_header]), progress=False)
    assert list(table["class"]) == [probe["expected"][str(p)] for p in images[4:7]]

    broken = tmp_path / "broken.csv"
    broken.write_text(f"path\n{images[0]}\nnowhere.png\n")
    with pytest.raises(DataError, match=r"line 3: image file .*nowhere.png' not found"):
        list_images([broken])


def one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nbtl predict: error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), (fragments, lines[0])
    assert result.stdout == ""
    return lines[0]


def test_bad_input_ends_in_one_line(probe, tmp_path):
    image = str(probe["paths"][0])
    missing = tmp_path / "no_such_folder"
    one_line_error(
        run_nbtl("predict", MODEL_NAME, image, str(missing), "--tracking-uri", probe["uri"], cwd=tmp_path),
        str(missing),
        "not found",
    )
    line = one_line_error(
        run_nbtl("predict", "no-such-model", image, "--tracking-uri", probe["uri"], cwd=tmp_path),
        "'no-such-model'",
        probe["uri"],
        "models:/NAME/VERSION",
    )
    assert f"models here: {MODEL_NAME}, {SEARCH_NAME}" in line

    # in-process: the same errors, and a store or version that is not there
    with pytest.raises(ConfigError, match="there is no MLflow store"):
        resolve_model(MODEL_NAME, f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert not (tmp_path / "elsewhere.db").exists()  # predicting never creates a store
    with pytest.raises(ConfigError, match="Model Version .* not found"):
        load_model(f"models:/{MODEL_NAME}/7", probe["uri"])
    with pytest.raises(DataError, match="no images in"):
        list_images([tmp_path])


def test_top_k_is_clipped_and_sorted(probe):
    model = load_model(probe["logged"].model_uri, probe["uri"])
    wide = predict_files(model, probe["paths"], top_k=50, progress=False)
    assert list(wide.columns)[-3:] == ["class_10", "probability_10", "error"]
    probabilities = wide[["probability", *[f"probability_{r}" for r in range(2, 11)]]].to_numpy(dtype=float)
    assert (np.diff(probabilities, axis=1) <= 0).all()
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5) and (probabilities.sum(1) <= 1 + 1e-6).all()
    three = predict_files(model, probe["paths"], top_k=3, batch_size=4, progress=False)
    assert list(three.columns) == list(wide.columns[:7]) + ["error"]
    assert three["class_3"].equals(wide["class_3"]) and np.allclose(three["probability_3"], wide["probability_3"])
