"""End to end through ``mlflow models serve``: a real nbtl classifier, logged and registered in a fresh SQLite
store, is served from the Model Registry (``models:/digits-probe/1``) on loopback with ``--env-manager local``,
and real PNG files (scikit-learn digits, at another size than the model's) are classified over HTTP in each
JSON form MLflow's scoring server takes: the answers are the ones ``mlflow.pyfunc.load_model(...).predict``
gives in-process, and a request with an image that is not one is a 400 naming it, after which the server
still answers.

``--env-manager local`` serves from this Python environment: the model's requirements pin ``nbtl``, which is
not on PyPI, so the default (a fresh virtualenv installing them) cannot build one; and the scoring server is
started as ``uvicorn`` found on ``PATH``, so the environment's ``bin`` folder must come first there.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import requests
from models_support import log_small_model, write_pngs

from nbtl.models.export import mlflow_uris
from servers import free_port, stop_group

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
NAME = "digits-probe"
IMAGES = 10
STARTUP_TIMEOUT = 90


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, started: float) -> None:
    """Until ``GET /ping`` answers 200; fails with the server's log tail if it exits or never answers."""
    while True:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() - started > STARTUP_TIMEOUT:
            state = f"exited with {process.returncode}" if process.poll() is not None else "no /ping answer"
            pytest.fail(f"mlflow models serve did not come up ({state}):\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def served(tmp_path_factory, one_torch_thread):
    """``{"url", "pngs", "labels", "classes", "expected"}``: the registered model served on loopback, the PNG
    files and their digits, and what the model loaded in-process predicts for them (fitting the model with one
    torch thread: on shared CPUs two wait for each other, several times slower)."""
    folder = tmp_path_factory.mktemp("serve")
    uri, _, logged, dataset = log_small_model(folder, register=NAME)
    assert logged.registered_uri == f"models:/{NAME}/1"
    pngs = write_pngs(folder / "pngs", dataset, IMAGES)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the server is `exec uvicorn ...`
    )
    command = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local"]
    log = folder / "serve.log"
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=env,
            start_new_session=True,
        )
    try:
        # while the server starts: the same model's answers in-process, to compare the server's with
        with mlflow_uris(uri):
            model = mlflow.pyfunc.load_model(logged.registered_uri)
        expected = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in pngs]}))
        _wait_until_up(url, process, log, started)
        print(f"\nmlflow models serve answered /ping {time.monotonic() - started:.1f} s after it was started")
        yield {
            "url": url,
            "pngs": pngs,
            "labels": [dataset.classes[int(label)] for label in dataset.labels[:IMAGES]],
            "classes": list(dataset.classes),
            "expected": expected,
        }
    finally:
        stop_group(process)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def invoke(url: str, payload: dict) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=60)


def check_predictions(served: dict, response: requests.Response) -> list[dict]:
    """One prediction per image, well formed, and the in-process model's classes and probabilities."""
    assert response.status_code == 200, response.text[:2000]
    predictions = response.json()["predictions"]
    assert len(predictions) == IMAGES
    expected = served["expected"]
    for row, (_, want) in zip(predictions, expected.iterrows(), strict=True):
        assert set(row) == {"class", "probability", "probabilities", "logits"}
        assert row["class"] in served["classes"]
        assert 0 < row["probability"] <= 1
        assert len(row["probabilities"]) == len(row["logits"]) == len(served["classes"])
        assert sum(row["probabilities"]) == pytest.approx(1, abs=1e-5)
        assert served["classes"][int(np.argmax(row["probabilities"]))] == row["class"]
        assert row["class"] == want["class"]
        np.testing.assert_allclose(row["probabilities"], want["probabilities"], atol=1e-5)
    return predictions


def test_dataframe_payloads_classify_real_images(served):
    """The README's payload (``dataframe_split``, base64 file bytes) and ``dataframe_records``: the digits
    the model was fitted on come back as their digits (most of them), as the model answers in-process."""
    images = [b64(p) for p in served["pngs"]]
    split = invoke(served["url"], {"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}})
    predictions = check_predictions(served, split)
    right = sum(row["class"] == label for row, label in zip(predictions, served["labels"], strict=True))
    assert right >= 0.7 * IMAGES, ([row["class"] for row in predictions], served["labels"])

    records = invoke(served["url"], {"dataframe_records": [{"image": i} for i in images]})
    check_predictions(served, records)

    # the `batch_size` param travels in the request and changes nothing in the answers
    batched = {"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}, "params": {"batch_size": 3}}
    check_predictions(served, invoke(served["url"], batched))


def test_inputs_payloads_classify_real_images(served):
    """The ``inputs`` (a column of base64 images, or the bare list) and ``instances`` forms, where the scoring
    server hands the model the base64 text itself, line-wrapped (MIME) base64 included."""
    images = [b64(p) for p in served["pngs"]]
    check_predictions(served, invoke(served["url"], {"inputs": {"image": images}}))
    check_predictions(served, invoke(served["url"], {"inputs": images}))
    check_predictions(served, invoke(served["url"], {"instances": [{"image": i} for i in images]}))
    wrapped = [base64.encodebytes(p.read_bytes()).decode("ascii") for p in served["pngs"]]
    assert all("\n" in w for w in wrapped)
    check_predictions(served, invoke(served["url"], {"inputs": {"image": wrapped}}))


def test_a_bad_image_is_a_400_naming_it_and_the_server_keeps_answering(served):
    url = served["url"]
    garbage = base64.b64encode(b"these bytes are not an image").decode("ascii")
    good = b64(served["pngs"][0])
    response = invoke(url, {"dataframe_split": {"columns": ["image"], "data": [[good], [garbage]]}})
    assert response.status_code == 400, response.text[:2000]
    body = response.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "cannot read image 1" in body["message"] and "send a PNG or JPEG" in body["message"], body["message"]

    response = invoke(url, {"inputs": {"image": [garbage]}})
    assert response.status_code == 400 and "cannot read image 0" in response.json()["message"], response.text[:2000]

    # text that is not base64 at all: MLflow's own parsing of the binary column refuses it
    response = invoke(url, {"dataframe_split": {"columns": ["image"], "data": [["%% not base64 %%"]]}})
    assert response.status_code == 400 and "base64" in response.json()["message"], response.text[:2000]

    # a column the signature does not have
    response = invoke(url, {"dataframe_split": {"columns": ["picture"], "data": [[good]]}})
    assert response.status_code == 400 and "missing inputs ['image']" in response.json()["message"]

    # still serving, and the right answer
    response = invoke(url, {"dataframe_split": {"columns": ["image"], "data": [[good]]}})
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["predictions"][0]["class"] == served["expected"]["class"][0]
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200
