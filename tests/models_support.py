"""A small real nbtl classifier logged and registered in a real MLflow store, for the predict and serve tests
(no search needed: a linear probe on EfficientNet-Lite0's packaged ImageNet weights, its head fitted for a few
steps on scikit-learn's digits so its predictions are not constant)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import new_store
from nbtl.backbones import load_pretrained_state_dict
from nbtl.config import TrialConfig
from nbtl.data import load_dataset
from nbtl.models.classifier import Member
from nbtl.models.export import log_classifier
from nbtl.tracking import ensure_experiment, resolve_tracking_uri, tracking_client
from nbtl.transfer import build_transfer

IMAGE_SIZE = 32


def digits(per_class: int = 6):
    return load_dataset("digits", image_size=IMAGE_SIZE, per_class=per_class, seed=0)


def small_member(dataset, steps: int = 30) -> Member:
    config = TrialConfig.from_dict({"backbone": "efficientnet_lite0", "freeze_blocks": 7, "head": "linear"})
    setup = build_transfer(config, len(dataset.classes), state_dict=load_pretrained_state_dict("efficientnet_lite0"))
    model = setup.model
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(dataset.images), dataset.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return Member(config.to_dict(), {k: v.detach().clone() for k, v in model.state_dict().items()}, "test")


def log_small_model(folder: Path, register: str | None = "digits-probe"):
    """``(tracking_uri, run_id, LoggedClassifier, dataset)``: a model logged on a FINISHED run of a fresh
    SQLite store in ``folder`` (registered as ``register``)."""
    uri = resolve_tracking_uri(new_store(folder))
    client = tracking_client(uri)
    run = client.create_run(ensure_experiment(client, "models-test"), run_name="probe")
    dataset = digits()
    logged = log_classifier(
        uri,
        run.info.run_id,
        [small_member(dataset)],
        dataset.classes,
        IMAGE_SIZE,
        dataset.images[0].numpy(),
        register=register,
        tags={"test_accuracy": 1.0},
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return uri, run.info.run_id, logged, dataset


def write_pngs(folder: Path, dataset, count: int = 5) -> list[Path]:
    """``count`` digits as PNG files of another size than the model's (so resizing is exercised)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        array = dataset.images[i].permute(1, 2, 0).numpy()
        path = folder / f"digit{i}-{dataset.classes[int(dataset.labels[i])]}.png"
        Image.fromarray(np.ascontiguousarray(array)).resize((48, 40)).save(path)
        paths.append(path)
    return paths
