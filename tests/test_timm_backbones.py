"""Any timm CNN as a backbone, ``timm:<model>``: cut at its ``feature_info`` stages, loaded from a local weights file
(``--weights timm:<model>=PATH``), transferred, re-initialised and trained like a registered one, and searched.

The family loop runs over timm's own tiny test networks (a ResNet, an EfficientNet, a ConvNeXt: 0.3-0.5 M
parameters), with weights made here: nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from mlflow import MlflowClient

from conftest import REPO, new_store, run_nbtl
from nbtl.backbones import create_backbone, get_spec, list_backbones
from nbtl.config import TrialConfig
from nbtl.errors import BackboneError
from nbtl.tracking import search_experiment
from nbtl.transfer import build_transfer

TIMM_MODELS = ["test_resnet", "test_efficientnet", "test_convnext"]


def _weights_file(model: str, folder) -> tuple[torch.nn.Module, str]:
    """A timm model with seeded random weights (and BatchNorm statistics moved off their defaults), saved as a
    state dict the way a user saves theirs."""
    torch.manual_seed(3)
    network = timm.create_model(model)
    with torch.no_grad():
        for name, buffer in network.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    path = folder / f"{model}.pth"
    torch.save(network.state_dict(), path)
    return network.eval(), str(path)


@pytest.mark.parametrize("model", TIMM_MODELS)
def test_a_timm_model_is_cut_into_its_stages_and_computes_what_timm_computes(model, tmp_path):
    network, path = _weights_file(model, tmp_path)
    name = f"timm:{model}"
    spec = get_spec(name)
    assert spec.family == "timm" and spec.num_blocks == len(network.feature_info) and spec.input_size == 160
    assert tuple(spec.mean) == tuple(network.pretrained_cfg["mean"])
    backbone = create_backbone(name, weights_path=path).eval()
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        blocks = backbone.forward_blocks(x)
        expected = network.forward_intermediates(x, intermediates_only=True)  # timm's own stage outputs
        assert torch.allclose(backbone.source_logits(x), network(x), atol=1e-5)
        assert torch.allclose(backbone(x), network.forward_features(x).mean((2, 3)), atol=1e-5)
    assert len(blocks) == len(expected)
    for i, (ours, theirs) in enumerate(zip(blocks[:-1], expected[:-1])):  # the last block may hold a final conv
        assert torch.allclose(ours, theirs, atol=1e-5), f"{name}: block {i} is not timm's stage {i}"
    assert name not in list_backbones()  # named on demand, not listed among the registered ones


@pytest.mark.parametrize("model", TIMM_MODELS)
def test_a_timm_backbone_transfers_reinitialises_freezes_and_trains(model, tmp_path):
    network, path = _weights_file(model, tmp_path)
    name, blocks = f"timm:{model}", get_spec(f"timm:{model}").num_blocks
    config = TrialConfig(backbone=name, transfer_blocks=blocks - 1, freeze_blocks=1, l2sp_alpha=0.01, lr=0.01)
    setup = build_transfer(config, num_classes=3, weights_path=path)
    state, given = setup.model.backbone.state_dict(), network.state_dict()
    first = next(iter(setup.model.backbone.blocks[0].state_dict()))
    assert setup.reinitialized_blocks == [blocks - 1] and setup.frozen_blocks == [0]
    # the timm key of block 0's first tensor holds the file's value: weights mapped by tensor identity
    assert any(torch.equal(state[f"blocks.0.{first}"], value) for value in given.values())
    last = [k for k in state if k.startswith(f"blocks.{blocks - 1}.") and state[k].is_floating_point()]
    assert last and not all(any(torch.equal(state[k], v) for v in given.values()) for k in last)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0])
    setup.model.train()
    loss = F.cross_entropy(setup.model(images), labels) + setup.regularizer()
    loss.backward()
    frozen = list(setup.model.backbone.blocks[0].parameters())
    trained = list(setup.model.backbone.blocks[1].parameters())
    assert all(p.grad is None for p in frozen) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_a_timm_model_that_is_not_a_chain_of_stages_or_unknown_is_one_line():
    with pytest.raises(BackboneError, match=r"timm:test_vit: its layers do not run as a chain"):
        get_spec("timm:test_vit")
    with pytest.raises(BackboneError, match=r"unknown backbone timm:resnet_nope: timm .* has no model"):
        get_spec("timm:resnet_nope")


@pytest.mark.e2e
def test_a_search_trains_a_timm_backbone_from_the_weights_file_its_space_names(tmp_path, shared_ray):
    (tmp_path / "spaces").mkdir()
    _, path = _weights_file("test_resnet", tmp_path / "spaces")
    space = yaml.safe_load((REPO / "search_spaces" / "tiny.yaml").read_text())
    space["name"] = "timm-tiny"
    space["search"]["trials"] = 2
    space["parameters"].update(
        # your own backbone and weights in the space: a path relative to the space file
        backbone={"name": "timm:test_resnet", "weights": "test_resnet.pth"},
        transfer_blocks={"low": 3, "high": "all"},
        freeze_blocks={"low": 1, "high": 2},
    )
    (tmp_path / "spaces" / "timm.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    uri = new_store(tmp_path)
    done = run_nbtl(
        "search", str(tmp_path / "spaces" / "timm.yaml"), "--data", "digits", "--tracking-uri", uri,
        "--storage-path", str(tmp_path / "results"), "--keep-weights", "0", cwd=tmp_path, env=shared_ray,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(search_experiment("timm-tiny")).experiment_id])
    runs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # the trials: child runs of the search
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["backbone"] for r in runs} == {"timm:test_resnet"}
    assert all(float(r.data.metrics["best_val_accuracy"]) > 0.0 for r in runs)
    parents = client.search_runs([runs[0].info.experiment_id], "tags.`nbtl.space` = 'timm-tiny'")
    assert [json.loads(p.data.params["weights"]) for p in parents] == [{"timm:test_resnet": str(path)}]
