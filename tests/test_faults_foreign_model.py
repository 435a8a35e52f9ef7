"""A model nbtl did not log is refused before anything of it runs (issue 19: `nbtl predict` used to unpickle a
foreign model, running its code, before saying it was not nbtl's); nbtl's own models are rebuilt from their
weights without running the code stored with them. Real MLflow store, real pickles, the real `nbtl` command."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from models_support import log_small_model, write_pngs

from conftest import run_nbtl
from nbtl.errors import ConfigError
from nbtl.models.export import mlflow_uris
from nbtl.models.predict import load_model, predict_files


class Booby(mlflow.pyfunc.PythonModel):
    """Unpickling it creates the file ``marker``: what a hostile model would do with a shell command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))

    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def store(tmp_path_factory, one_torch_thread):
    folder = tmp_path_factory.mktemp("foreign")
    uri, run_id, logged, dataset = log_small_model(folder, register="digits-probe")
    marker = folder / "pwned"
    with mlflow_uris(uri):
        with mlflow.start_run(run_name="foreign") as run:
            mlflow.pyfunc.log_model(name="model", python_model=Booby(str(marker)))
        mlflow.register_model(f"runs:/{run.info.run_id}/model", "digits-probe")  # version 2, under nbtl's name
    marker.unlink(missing_ok=True)  # logging may have tried it; what matters is what loading does
    image = write_pngs(folder / "images", dataset, count=3)
    return {"uri": uri, "foreign": f"runs:/{run.info.run_id}/model", "marker": marker, "images": image, "nbtl": logged}


def test_nbtl_predict_refuses_a_foreign_model_without_unpickling_it(store, tmp_path):
    # the registered name: its newest version is the foreign one
    done = run_nbtl("predict", "digits-probe", str(store["images"][0]), "--tracking-uri", store["uri"], cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "is not an nbtl image classifier" in lines[0] and "--allow-foreign-models" in lines[0], lines[0]
    assert not store["marker"].exists(), "the foreign pickle ran"
    for model in (store["foreign"], "models:/digits-probe/2"):  # every other form, in process
        with pytest.raises(ConfigError, match="is not an nbtl image classifier"):
            load_model(model, store["uri"])
        assert not store["marker"].exists(), f"{model}: the foreign pickle ran"


def test_the_opt_in_really_loads_it(store):
    with pytest.raises(ConfigError, match="cannot load the model"):  # its pickle gives no model at all
        load_model(store["foreign"], store["uri"], allow_foreign=True)
    assert store["marker"].exists()  # the pickle is real: loading it as MLflow does runs it
    store["marker"].unlink()


def test_an_nbtl_model_is_rebuilt_without_running_its_stored_code(store, tmp_path):
    with mlflow_uris(store["uri"]):
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=store["nbtl"].model_uri, dst_path=tmp_path))
    expected = predict_files(load_model(str(folder), store["uri"]), store["images"], top_k=1, progress=False)
    code = [p for p in folder.rglob("*.py")]
    assert code, "the logged model carries its loader code"
    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    for path in tampered.rglob("*.py"):
        path.write_text(f"open({str(store['marker'])!r}, 'w')\nraise SystemExit('stored code ran')\n")
    got = predict_files(load_model(str(tampered), store["uri"]), store["images"], top_k=1, progress=False)
    assert list(got["class"]) == list(expected["class"])
    assert not store["marker"].exists()
