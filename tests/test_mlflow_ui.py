"""End to end through a real MLflow tracking server and a real browser: ``nbtl search`` logs a tiny search
to ``mlflow server`` over HTTP (runs, metrics and artifacts all through the server), ``MlflowClient``
reads it back over HTTP, and headless Chromium (Selenium) checks that the MLflow UI shows the
experiment, the parent run with its trials nested under it, a trial's params and metrics, its
``val_accuracy`` chart, and the parent's artifacts.

Screenshots of every step go to ``tmp_path/screenshots`` and are copied to ``$NBTL_SCREENSHOT_DIR``
when that is set (CI keeps them); their paths are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from test_search_e2e import TRIALS, check_store

from conftest import REPO, run_nbtl
from nbtl.models.export import mlflow_uris, png_bytes
from nbtl.tracking import search_experiment
from servers import mlflow_server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.e2e

TINY = REPO / "search_spaces" / "tiny.yaml"
NAME = "ui-e2e"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PARAMS_SHOWN = ("backbone", "transfer_blocks", "freeze_blocks", "lr", "head", "epochs", "batch_size")
ARTIFACTS = ("results.csv", "best_config.yaml", "search_space.yaml")
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


# -- the browser -----------------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path):
    """Headless Chromium through Debian's chromedriver, in a process group of its own that is killed
    after ``quit()`` whatever happened."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"), popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            process = getattr(service, "process", None)
            if process is not None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # chromedriver and every chromium it started
                except ProcessLookupError:
                    pass


class Shots:
    """Numbered screenshots of the steps, plus the page source on failure."""

    def __init__(self, driver, directory: Path):
        self.driver, self.directory, self.paths = driver, directory, []
        directory.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> Path:
        path = self.directory / f"{len(self.paths) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.paths.append(path)
        return path

    def failure(self) -> None:
        try:
            self.take("FAILED")
            (self.directory / "FAILED.html").write_text(self.driver.page_source)
        except Exception:  # the browser itself may be gone
            pass

    def publish(self) -> list[Path]:
        """Copy the screenshots to $NBTL_SCREENSHOT_DIR (if set) and print where they are."""
        target = os.environ.get("NBTL_SCREENSHOT_DIR")
        paths = list(self.paths) + (
            [self.directory / "FAILED.html"] if (self.directory / "FAILED.html").exists() else []
        )
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            paths = [Path(shutil.copy2(p, Path(target) / p.name)) for p in paths]
        for path in paths:
            print(f"MLflow UI screenshot: {path}")
        return paths


def xpath_literal(text: str) -> str:
    return f"'{text}'" if "'" not in text else f'"{text}"'


# -- the test --------------------------------------------------------------------------------------


def test_search_in_mlflow_server_and_its_ui(tmp_path, mlflow_server, browser, shared_ray):  # noqa: F811
    uri = mlflow_server

    # 1. A real search, logging to the server over HTTP.
    result = run_nbtl(
        "search",
        str(TINY),
        "--data",
        "digits",
        "--trials",
        str(TRIALS),
        "--name",
        NAME,
        "--tracking-uri",
        uri,
        "--storage-path",
        str(tmp_path / "results"),
        cwd=tmp_path,
        env={**QUIET, **shared_ray},
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-6000:]}"

    # 2. What the server holds, read back over HTTP.
    parent, children = check_store(result.stdout, uri, name=NAME)  # the same checks as on a SQLite store
    client = MlflowClient(tracking_uri=uri)
    experiment_id = parent.info.experiment_id
    histories = {}
    for child in children:
        assert child.info.status == "FINISHED", (
            child.info.run_id,
            child.info.status,
            child.data.tags.get("nbtl.error"),
        )
        assert set(PARAMS_SHOWN) <= set(child.data.params), set(PARAMS_SHOWN) - set(child.data.params)
        history = sorted(client.get_metric_history(child.info.run_id, "val_accuracy"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, len(history) + 1)) and 1 <= len(history) <= 2, history
        for key in ("train_loss", "val_loss", "best_val_accuracy"):
            assert len(client.get_metric_history(child.info.run_id, key)) == len(history), key
        histories[child.info.run_id] = history
    best_id = parent.data.tags.get("nbtl.best_run_id")
    best = {c.info.run_id: c for c in children}.get(best_id)
    assert best is not None, f"the parent's nbtl.best_run_id {best_id!r} is not one of its children"

    # Artifacts went through the server (mlflow-artifacts:/ proxy) and come back over HTTP.
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), parent.info.artifact_uri
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= set(ARTIFACTS)
    downloaded = Path(client.download_artifacts(parent.info.run_id, "", dst_path=str(tmp_path / "downloaded")))
    table = pd.read_csv(downloaded / "results.csv")
    assert sorted(table["run_id"]) == sorted(c.info.run_id for c in children) and table["run_id"].iloc[0] == best_id
    best_config = yaml.safe_load((downloaded / "best_config.yaml").read_text())
    assert str(best_config["transfer_blocks"]) == best.data.params["transfer_blocks"]
    assert yaml.safe_load((downloaded / "search_space.yaml").read_text()) == yaml.safe_load(TINY.read_text())
    served = tmp_path / "mlflow_server" / "mlartifacts" / experiment_id / parent.info.run_id / "artifacts"
    assert {p.name for p in served.iterdir()} >= set(ARTIFACTS), "artifacts are not in the server's store"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists(), (
        "the CLI wrote a local store instead of using the server"
    )

    # The best model, registered on the server, loads back over HTTP and classifies a test image as its trial did.
    version = client.get_model_version(NAME, "1")
    assert version.tags["nbtl.run_id"] == best_id and version.run_id == parent.info.run_id
    with mlflow_uris(uri):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    from nbtl.data import load_dataset

    digits = load_dataset("digits", image_size=32)
    out = model.predict(pd.DataFrame({"image": [png_bytes(digits.images[0].numpy())]}))
    assert out["class"].iloc[0] in digits.classes and 0 < out["probability"].iloc[0] <= 1
    assert [d.dataset.name for d in client.get_run(parent.info.run_id).inputs.dataset_inputs] == ["digits"]

    # 3. The MLflow UI in a real browser.
    driver = browser
    wait = WebDriverWait(driver, 60)
    shots = Shots(driver, tmp_path / "screenshots")

    def find(xpath: str, clickable: bool = False):
        condition = EC.element_to_be_clickable if clickable else EC.visibility_of_element_located
        try:
            return wait.until(condition((By.XPATH, xpath)))
        except TimeoutException:
            raise AssertionError(f"the MLflow UI does not show {xpath} at {driver.current_url}") from None

    def run_link(run_id: str) -> str:
        return f"//a[substring(@href, string-length(@href) - {len(run_id) + 5}) = '/runs/{run_id}']"

    def close_assistant() -> None:  # the assistant side panel only narrows the screenshots
        for button in driver.find_elements(
            By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"
        ):
            if button.is_displayed():
                button.click()

    try:
        # The experiment list shows the search's experiment; switch the UI to model training (MLflow 3
        # opens in its GenAI view).
        driver.get(f"{uri}/#/experiments")
        experiment_link = find(f"//a[normalize-space()={xpath_literal(search_experiment(NAME))}]", clickable=True)
        assert experiment_link.get_attribute("href").endswith(f"#/experiments/{experiment_id}")
        find("//*[normalize-space(text())='Model training']", clickable=True).click()
        close_assistant()
        shots.take("experiments")

        # The experiment's runs: the parent run, its trials collapsed under it until expanded.
        find(f"//a[normalize-space()={xpath_literal(search_experiment(NAME))}]", clickable=True).click()
        wait.until(EC.url_contains(f"/experiments/{experiment_id}/runs"))
        parent_link = find(run_link(parent.info.run_id))
        assert parent_link.text.strip() == parent.info.run_name and parent.info.run_name.startswith(f"{NAME} ")
        find(f"//*[normalize-space()='{TRIALS + 1} matching runs']")
        assert not [
            e for c in children for e in driver.find_elements(By.XPATH, run_link(c.info.run_id)) if e.is_displayed()
        ], "trial runs are not nested under the search's parent run"
        close_assistant()
        shots.take("runs-collapsed")
        expand = find(f"{run_link(parent.info.run_id)}/ancestor::div[@role='gridcell'][1]//button", clickable=True)
        expand.click()
        for child in children:
            link = find(run_link(child.info.run_id))
            assert link.text.strip() == child.info.run_name, (link.text, child.info.run_name)
        shots.take("runs-expanded")

        # One trial's run page: its parent, status, params and latest val_accuracy.
        find(run_link(best_id), clickable=True).click()
        wait.until(EC.url_contains(f"/runs/{best_id}"))
        find(f"//*[normalize-space(text())={xpath_literal(best.info.run_name)}]")
        find(
            f"//*[@data-testid='key-value-Parent run']{run_link(parent.info.run_id)}[normalize-space()={xpath_literal(parent.info.run_name)}]"
        )
        find("//*[@data-testid='key-value-Status'][contains(normalize-space(), 'Finished')]")
        for key in PARAMS_SHOWN:
            cell = find(f"//div[@role='row'][div[@role='cell'][1][normalize-space()='{key}']]/div[@role='cell'][2]")
            assert cell.text.strip() == best.data.params[key], (key, cell.text, best.data.params[key])
        shown = find("//div[@role='row'][.//a[normalize-space()='val_accuracy']]/div[@role='cell'][2]//*[@title]")
        assert float(shown.get_attribute("title")) == pytest.approx(histories[best_id][-1].value)
        close_assistant()
        shots.take("trial-run")

        # Its val_accuracy chart: one point per epoch, the values the trial logged.
        find("//div[@role='row']//a[normalize-space()='val_accuracy']", clickable=True).click()
        wait.until(EC.url_contains(f"/runs/{best_id}/model-metrics"))
        find("//input[@placeholder='Search metric charts']", clickable=True).send_keys("val_accuracy")
        card_xpath = "//div[@data-testid='experiment-view-compare-runs-card'][.//h4[@title='val_accuracy']]"
        # the card appears before its chart: it shows a spinner while the metric history loads
        plot = find(card_xpath + "//div[contains(concat(' ', normalize-space(@class), ' '), ' js-plotly-plot ')]")
        card = find(card_xpath)
        wait.until(lambda _: driver.execute_script("return (arguments[0].data || []).length", plot))
        traces = driver.execute_script(
            "return arguments[0].data.map(t => ({x: Array.from(t.x || []), y: Array.from(t.y || []), name: t.name}))",
            plot,
        )
        assert traces, "the val_accuracy chart has no data"
        for trace in traces:
            assert trace["name"] == best.info.run_name
            assert trace["x"] == [m.step for m in histories[best_id]], trace
            assert trace["y"] == pytest.approx([m.value for m in histories[best_id]]), trace
        lines = card.find_elements(By.CSS_SELECTOR, ".scatterlayer .trace path.js-line")
        assert any(len(line.get_attribute("d") or "") > 3 for line in lines), "no val_accuracy line is drawn"
        assert f"{best.info.run_name} (val_accuracy)" in card.text
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
        shots.take("val-accuracy-chart")

        # The parent run's artifacts, listed and previewed through the server.
        driver.get(f"{uri}/#/experiments/{experiment_id}/runs/{parent.info.run_id}/artifacts")
        for name in ARTIFACTS:
            find(f"//*[@data-testid='artifact-tree-node'][@artifact-name='{name}']")
        find("//*[@data-testid='artifact-tree-node'][@artifact-name='best_config.yaml']", clickable=True).click()
        find(
            f"//*[contains(normalize-space(), 'backbone: {best.data.params['backbone']}')]"
            "[not(self::script)][not(descendant::*[contains(normalize-space(), 'backbone:')])]"
        )
        close_assistant()
        shots.take("parent-artifacts")
    except BaseException:
        shots.failure()
        raise
    finally:
        shots.publish()
