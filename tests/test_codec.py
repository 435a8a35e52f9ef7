"""The one codec between settings and stored text (nbtl.codec): what nbtl writes as MLflow params and tags reads back
as the value it was written from, through a real MLflow store; a results table's gaps and Python's None as text are
"unset" alike."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import new_store
from nbtl.codec import MAX_TEXT_LENGTH, decode, encode, is_unset
from nbtl.config import TrialConfig
from nbtl.tracking import ensure_experiment, param_entities

VALUES = {
    "lr": 0.01,
    "lr_one": 1.0,
    "small": 1.0e-4,
    "blocks": 9,
    "pretrained": True,
    "unset": None,
    "steps": [3, 6],
    "augmentation": {"crop_padding": 4, "flip": True},
    "backbone": "efficientnet_lite0",
    "classes": "1,3,5",
}


def test_values_written_as_mlflow_params_read_back_as_written(tmp_path):
    client = MlflowClient(tracking_uri=new_store(tmp_path))
    run = client.create_run(ensure_experiment(client, "codec")).info.run_id
    client.log_batch(run, params=param_entities(VALUES))
    stored = client.get_run(run).data.params
    assert all(isinstance(v, str) for v in stored.values())
    assert {k: decode(v) for k, v in stored.items()} == VALUES
    assert isinstance(decode(stored["lr_one"]), float) and isinstance(decode(stored["blocks"]), int)


def test_a_trial_config_reads_back_from_its_params(tmp_path):
    config = TrialConfig.from_dict(
        {"l2_head": None, "l2sp_blocks": 4, "l2sp_alpha": 0.01, "lr_schedule": "step", "lr_step_epochs": [2, 4]}
    )
    client = MlflowClient(tracking_uri=new_store(tmp_path))
    run = client.create_run(ensure_experiment(client, "codec")).info.run_id
    client.log_batch(run, params=param_entities(config.to_dict()))
    params = client.get_run(run).data.params
    assert TrialConfig.from_dict({k: decode(v) for k, v in params.items()}) == config
    assert TrialConfig.from_dict({"l2_head": params["l2_head"], "l2sp_blocks": params["l2sp_blocks"]}).l2_head is None


@pytest.mark.parametrize("gap", [None, "", "None", "null", "nan", float("nan"), np.float64("nan")])
def test_every_form_of_unset_is_unset(gap):
    assert is_unset(gap) and decode(gap) is None


def test_a_tables_gaps_and_numpy_cells_decode_like_text():
    table = pd.DataFrame({"transfer_blocks": [9, None], "lr": [0.01, 0.1]})
    cells = table.to_dict("records")
    assert decode(cells[1]["transfer_blocks"]) is None and decode(cells[0]["lr"]) == 0.01
    assert decode(np.int64(3)) == 3 and type(decode(np.int64(3))) is int
    assert not is_unset(0) and not is_unset(0.0) and not is_unset("0") and not is_unset(False)
    assert decode("1e-4") == 1.0e-4 and decode("inf") == math.inf and decode("[broken") == "[broken"
    assert len(encode("x" * (MAX_TEXT_LENGTH + 10))) == MAX_TEXT_LENGTH
