"""The classifier a search hands over (nbtl.models.classifier, nbtl.models.pyfunc), on real weights, real
images and real training: its best-epoch weights reproduce the trial's own test evaluation, its preprocessing is
the training data's, it survives a save / load, and an ensemble averages probabilities."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from nbtl.config import TrialConfig
from nbtl.data.images import decode_files
from nbtl.errors import DataError
from nbtl.models.classifier import (
    ClassifierError,
    ImageClassifier,
    Member,
    classifier_of,
    decode_image,
    load_classifier,
    read_members,
    save_classifier,
    top_k,
    trained_state_dict,
)
from nbtl.models.pyfunc import image_values
from nbtl.train import train_trial


@pytest.fixture(scope="module")
def trained(splits, weights, one_torch_thread):
    """A trial with frozen blocks (trained on the cached prefix) and its best-epoch member."""
    config = TrialConfig.from_dict(
        {
            "backbone": "efficientnet_lite0",
            "transfer_blocks": 8,
            "freeze_blocks": 6,
            "lr": 0.05,
            "head": "spinal",
            "head_width": 16,
            "epochs": 3,
            "batch_size": 16,
            "seed": 3,
        }
    )
    result = train_trial(config, splits, state_dict=weights, device="cpu")
    state = trained_state_dict(config.to_dict(), len(splits.train.classes), result.best_weights, weights)
    return result, Member(config.to_dict(), state, "trial")


def test_best_epoch_weights_reproduce_the_trials_test_evaluation(trained, splits):
    result, member = trained
    final = result.final
    frozen = [k for k in member.state_dict if k.startswith(tuple(f"backbone.blocks.{i}." for i in range(6)))]
    assert frozen and not set(frozen) & set(result.best_weights), "the kept weights leave the frozen blocks out"
    classifier = classifier_of([member], splits.train.classes, splits.test.images.shape[-1])
    predicted = classifier.logits(splits.test.images).argmax(1).numpy()
    labels = splits.test.labels.numpy()
    # the trial scored its best epoch on cached block outputs; the whole model on the images agrees
    assert accuracy_score(labels, predicted) == pytest.approx(final["test_accuracy"], abs=1e-9)
    assert f1_score(labels, predicted, average="macro", zero_division=0) == pytest.approx(
        final["test_macro_f1"], abs=1e-9
    )
    if final["best_epoch"] < final["epoch"]:  # not the last epoch's weights
        assert result.best_weights is not None


def test_saved_classifier_loads_to_the_same_logits_and_checks_its_folder(trained, splits, tmp_path):
    _, member = trained
    folder = save_classifier(tmp_path / "c", [member], splits.train.classes, 32)
    loaded = load_classifier(folder)
    original = classifier_of([member], splits.train.classes, 32)
    assert torch.equal(loaded.logits(splits.test.images), original.logits(splits.test.images))
    members, classes, size = read_members(folder)
    assert classes == splits.train.classes and size == 32 and members[0].config == member.config
    (folder / "classifier.json").write_text('{"format": 99}')
    with pytest.raises(ClassifierError, match="format 99"):
        load_classifier(folder)
    with pytest.raises(ClassifierError, match="not a classifier folder"):
        load_classifier(tmp_path / "nowhere")
    wrong = Member({**member.config, "head": "linear"}, member.state_dict)
    with pytest.raises(ClassifierError, match="do not fit"):
        classifier_of([wrong], splits.train.classes, 32)


def test_preprocessing_is_the_training_datas(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 57, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    expected = decode_files([path], 32)[0][0].numpy()  # what a dataset of this file holds
    assert np.array_equal(decode_image(path, 32), expected)
    assert np.array_equal(decode_image(path.read_bytes(), 32), expected)
    assert np.array_equal(decode_image(rgb, 32), expected)
    gray = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    assert decode_image(gray, 32).shape == (3, 32, 32)
    with pytest.raises(DataError, match="cannot read image 3"):
        decode_image(b"not an image", 32, name="image 3")
    with pytest.raises(DataError, match=r"\(H, W, 3\)"):
        decode_image(np.zeros((4, 4, 4), np.uint8), 32)


def test_an_ensemble_averages_its_members_probabilities(trained, splits):
    _, member = trained
    other = {k: v.clone() for k, v in member.state_dict.items()}
    head = [k for k in other if k.startswith("head.") and other[k].is_floating_point()]
    torch.manual_seed(0)
    for key in head:
        other[key] += 0.5 * torch.randn_like(other[key])
    members = [member, Member(member.config, other)]
    single = [classifier_of([m], splits.train.classes, 32).logits(splits.test.images).softmax(1) for m in members]
    ensemble = classifier_of(members, splits.train.classes, 32)
    assert isinstance(ensemble, ImageClassifier) and len(ensemble.members) == 2
    assert torch.allclose(ensemble.logits(splits.test.images).softmax(1), (single[0] + single[1]) / 2, atol=1e-6)


def test_pyfunc_input_forms_and_top_k():
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    data = png.getvalue()
    assert image_values(pd.DataFrame({"image": [data, data]})) == [data, data]
    assert image_values(pd.DataFrame({"image": [base64.b64encode(data).decode()]})) == [data]
    assert image_values({"image": [data]}) == [data]
    assert len(image_values(np.zeros((3, 8, 8, 3), np.uint8))) == 3 and len(image_values(np.zeros((8, 8, 3)))) == 1
    with pytest.raises(DataError, match="one column named 'image'"):
        image_values(pd.DataFrame({"a": [1], "b": [2]}))
    with pytest.raises(DataError, match="not base64"):
        image_values(pd.DataFrame({"image": ["***"]}))
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert top_k(probabilities, ["a", "b", "c"], 2) == [[("b", 0.7), ("c", 0.2)], [("a", 0.5), ("c", 0.3)]]
    assert len(top_k(probabilities, ["a", "b", "c"], 9)[0]) == 3
