"""A new head is one file: this one registers a cosine classifier (normalised features against normalised class
weights, times a learned scale: Gidaris & Komodakis 2018, the head of "A Closer Look at Few-shot Classification") with
``nbtl.heads.register_head``, and without touching any other file a trial config validates it, a transfer model
builds it, a real trial trains it on real images, and the registry's common checks hold for it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_transfer import check_head
from torch import nn

from nbtl.config import TrialConfig
from nbtl.errors import ConfigError
from nbtl.heads import get_head, head_names, register_head, remove_head
from nbtl.train import train_trial
from nbtl.transfer import build_transfer


class CosineClassifier(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.weight = nn.Parameter(torch.randn(num_classes, in_features) * 0.01)
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(self.dropout(features), dim=1) @ F.normalize(self.weight, dim=1).T


def cosine_head(in_features: int, num_classes: int, *, width: int, dropout: float) -> nn.Module:
    return CosineClassifier(in_features, num_classes, dropout=dropout)


@pytest.fixture(scope="module", autouse=True)
def cosine():
    """Registered for this file's tests only (the registry is the process's)."""
    register_head("cosine", has_width=False, description="cosine classifier", builder=cosine_head)
    yield "cosine"
    remove_head("cosine")


def test_a_registered_head_is_a_config_choice_without_a_width(cosine):
    assert cosine in head_names() and get_head(cosine).description == "cosine classifier"
    config = TrialConfig.from_dict({"head": cosine, "head_width": 64})
    assert config.head == cosine and "head_width" not in config.to_dict()  # it has no hidden layers
    with pytest.raises(ConfigError, match="already registered"):
        register_head(cosine, has_width=False, builder=cosine_head)
    with pytest.raises(ConfigError, match="one of nbtl's own; it cannot be removed"):
        remove_head("linear")


def test_a_registered_head_passes_the_common_head_checks(cosine):
    assert isinstance(check_head(cosine), CosineClassifier)  # the check every registered head passes


def test_a_registered_head_is_trained_in_a_real_trial(cosine, splits, weights, one_torch_thread):
    config = TrialConfig(
        backbone="efficientnet_lite0", head=cosine, freeze_blocks=9, epochs=3, batch_size=16, lr=0.05, seed=0
    )
    assert isinstance(build_transfer(config, 10, state_dict=weights).model.head, CosineClassifier)
    result = train_trial(config, splits, state_dict=weights)
    best = max(row["val_accuracy"] for row in result.history)
    assert len(result.history) == 3 and best > 0.3  # 10 classes: chance is 0.1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
