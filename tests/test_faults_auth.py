"""A tracking server behind MLflow's basic-auth app (what deploy/ and the README's security section advise for a
shared store): nbtl writes to it with credentials from MLflow's own environment variables, and without them is
refused in one line with a non-zero exit. A real ``mlflow server --app-name basic-auth`` on loopback, a real
training run."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml
from mlflow import MlflowClient

from conftest import nbtl_command
from servers import running_mlflow_server

pytestmark = pytest.mark.e2e

PASSWORD = "nbtl-test-admin-password-1"


def train(tmp_path, uri: str, **credentials: str) -> subprocess.CompletedProcess:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"backbone": "efficientnet_lite0", "freeze_blocks": 9, "head": "linear", "epochs": 1})
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")} | credentials
    command = nbtl_command(
        "train", str(config), "--data", "digits", "--per-class", "10", "--image-size", "32",
        "--no-floor", "--name", "authed", "--tracking-uri", uri,
    )  # fmt: skip
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_basic_auth_server_takes_credentials_and_refuses_without(tmp_path, monkeypatch):
    with running_mlflow_server(tmp_path / "server", admin_password=PASSWORD) as uri:
        refused = train(tmp_path, uri)
        assert refused.returncode != 0
        lines = [line for line in refused.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert "401" in lines[0] or "credential" in lines[0].lower() or "unauthor" in lines[0].lower(), lines

        done = train(tmp_path, uri, MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=PASSWORD)
        assert done.returncode == 0, done.stderr[-3000:]
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs and all(r.info.status == "FINISHED" for r in runs)
