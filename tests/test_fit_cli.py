"""``nbtl fit``: the real command on digits with a real SQLite MLflow store; the feature cache;
an unknown backbone ending in one clear line, exit 2."""

from __future__ import annotations

import math

import pandas as pd

from conftest import run_nbtl, store_untouched

# One BLAS thread: scikit-learn's linear probe runs ~30x slower with BLAS threads fighting on a busy machine.
ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_fit_digits_logs_table_and_uses_cache(tmp_path, tracking_uri):
    from mlflow import MlflowClient

    env = {**ENV, "NBTL_CACHE_DIR": str(tmp_path / "cache")}
    args = (
        "fit",
        "digits",
        "--backbones",
        "efficientnet_lite0",
        "--image-size",
        "32",
        "--per-class",
        "10",
        "--tracking-uri",
        tracking_uri,
    )
    first = run_nbtl(*args, "--out", "out.csv", cwd=tmp_path, env=env)
    assert first.returncode == 0, (first.stdout[-2000:], first.stderr[-3000:])
    assert "efficientnet_lite0: best block by LogME is" in first.stdout
    assert "n_classes: 10" in first.stdout

    table = pd.read_csv(tmp_path / "out.csv")
    assert len(table) == 9 and list(table["block"]) == list(range(9))
    assert set(table["backbone"]) == {"efficientnet_lite0"}
    assert {"feature_dim", "logme", "leep", "nce", "h_score", "knn_accuracy", "linear_probe_accuracy"} <= set(table)
    assert all(math.isfinite(v) for v in table["logme"])

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("fit-digits")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["nbtl.role"] == "fit"
    assert run.data.params["backbones"] == "efficientnet_lite0" and run.data.params["image_size"] == "32"
    assert run.data.params["meta.n_images"] == "100"
    assert math.isclose(run.data.metrics["efficientnet_lite0.best_logme"], table["logme"].max(), rel_tol=1e-9)
    assert run.data.metrics["efficientnet_lite0.best_block"] == table.loc[table["logme"].idxmax(), "block"]
    assert "fit_table.csv" in [a.path for a in client.list_artifacts(run.info.run_id)]
    logged = pd.read_csv(client.download_artifacts(run.info.run_id, "fit_table.csv", str(tmp_path)))
    assert len(logged) == 9

    cached = list((tmp_path / "cache").rglob("*.npz"))
    assert len(cached) == 1
    second = run_nbtl(*args, cwd=tmp_path, env=env)  # default --out: nbtl_fit_digits.csv
    assert second.returncode == 0, second.stderr[-3000:]
    assert "features cache" in second.stderr and "features extracted" not in second.stderr
    assert list((tmp_path / "cache").rglob("*.npz")) == cached
    again = pd.read_csv(tmp_path / "nbtl_fit_digits.csv")
    assert list(again["logme"]) == list(table["logme"])


def test_fit_unknown_backbone_is_one_line(tmp_path, tracking_uri):
    result = run_nbtl(
        "fit",
        "digits",
        "--backbones",
        "efficientnet_lite0,resnet-50",
        "--tracking-uri",
        tracking_uri,
        cwd=tmp_path,
        env={**ENV, "NBTL_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nbtl fit: error: ") and "resnet-50" in lines[0], result.stderr
    assert store_untouched(tmp_path / "mlflow.db") and not (tmp_path / "cache").exists()
