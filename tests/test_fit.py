"""nbtl.fit: fit measures against known answers and invariances, and cached block features of a
real backbone (EfficientNet-Lite0 with its packaged ImageNet weights) on real images (digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from nbtl.backbones import (
    create_backbone,
    get_spec,
    load_pretrained_state_dict,
    one_per_family,
)
from nbtl.data import ImageDataset, load_dataset
from nbtl.fit import (
    MeasureError,
    block_features,
    default_cache_dir,
    fit_table,
    h_score,
    knn_accuracy,
    leep,
    linear_probe_accuracy,
    logme,
    meta_features,
    nce,
)
from nbtl.fit.registry import fit_measure_names, get_fit_measure, source_measures

#: The fit table's options, as it passes them to a measure that takes them.
TABLE_OPTIONS = {"cv": 5, "random_state": 0, "k": 5}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CPUs are shared with other jobs: multithreaded BLAS and torch on these small matrices
    spend far longer waiting for each other than computing, so this module runs single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(previous)


def clustered(n_per_class=20, n_features=6, n_classes=3, separation=4.0, seed=0):
    """Features with one well-separated cluster per class; labels; the same labels shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = rng.normal(size=(n_classes, n_features))
    features = rng.normal(size=(len(labels), n_features)) + separation * centres[labels]
    return features, labels, rng.permutation(labels)


def source_probabilities(labels, n_source=5, seed=0):
    """A source head whose top class is the target class (plus noise): softmax rows."""
    rng = np.random.default_rng(seed)
    logits = 3.0 * np.eye(n_source)[labels] + rng.normal(size=(len(labels), n_source))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def check_fit_measure(name: str) -> float:
    """The checks every registered fit measure passes, called as the fit table calls it: a finite float, higher for
    labels the features (or the source head) separate than for the same labels shuffled, the same whatever the
    samples' order, and the same for any hashable labels (strings in the same order as the codes). Returns its value
    on the separable labels."""
    entry = get_fit_measure(name)

    def call(inputs, labels):
        return float(entry.resolve()(inputs, labels, **{o: TABLE_OPTIONS[o] for o in entry.options()}))

    features, labels, shuffled = clustered()
    inputs = features if entry.reads == "features" else source_probabilities(labels)
    value = call(inputs, labels)
    assert np.isfinite(value)
    assert value > call(inputs, shuffled)
    overlapping, labels, _ = clustered(separation=1.0)  # accuracies below 1, so the order could matter
    inputs = overlapping if entry.reads == "features" else source_probabilities(shuffled)
    baseline = call(inputs, labels)
    order = np.random.default_rng(2).permutation(len(labels))
    assert call(inputs[order], labels[order]) == pytest.approx(baseline, rel=1e-10)
    assert call(inputs, np.array(["ant", "bee", "cat"])[labels]) == pytest.approx(baseline, rel=1e-12)
    return value


# ----------------------------------------------------------------------- known answers
@pytest.mark.parametrize("name", fit_measure_names())
def test_every_registered_fit_measure_passes_the_common_checks(name):
    check_fit_measure(name)


def _direct_log_evidence(features, target):
    """max over (log α, log β) of log N(y | 0, β⁻¹ I + α⁻¹ F Fᵀ) / N, by generic numerical optimisation."""
    n = len(target)

    def negative(log_params):
        alpha, beta = np.exp(log_params)
        chol = np.linalg.cholesky(np.eye(n) / beta + features @ features.T / alpha)
        z = np.linalg.solve(chol, target)
        return (0.5 * z @ z + np.log(np.diag(chol)).sum() + 0.5 * n * np.log(2 * np.pi)) / n

    runs = [
        minimize(negative, start, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10})
        for start in [(0.0, 0.0), (3.0, -3.0), (-3.0, 3.0)]
    ]
    return -min(run.fun for run in runs)


@pytest.mark.parametrize("n_samples, n_features", [(40, 6), (12, 20)], ids=["N>D", "N<D"])
def test_logme_matches_direct_maximisation_of_the_evidence(n_samples, n_features):
    rng = np.random.default_rng(1)
    labels = np.arange(n_samples) % 3
    features = rng.normal(size=(n_samples, n_features)) + 1.5 * rng.normal(size=(3, n_features))[labels]
    direct = np.mean([_direct_log_evidence(features, (labels == c).astype(float)) for c in range(3)])
    assert logme(features, labels) == pytest.approx(direct, abs=1e-6)


# θ of 4 samples over 2 source classes, 2 target classes; worked out by hand below.
TINY_PROBS = np.array([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]])
TINY_LABELS = np.array([0, 0, 1, 1])


def test_leep_on_a_hand_computed_example():
    # P(y, z) = [[0.3, 0.2], [0.1, 0.4]], P(z) = [0.4, 0.6], P(y | z) = [[3/4, 1/3], [1/4, 2/3]]
    expected = np.mean(
        np.log([0.8 * 3 / 4 + 0.2 / 3, 0.4 * 3 / 4 + 0.6 / 3, 0.3 / 4 + 0.7 * 2 / 3, 0.1 / 4 + 0.9 * 2 / 3])
    )
    assert leep(TINY_PROBS, TINY_LABELS) == pytest.approx(expected, rel=1e-12)


def test_nce_on_a_hand_computed_example():
    # argmax source labels z = [0, 1, 1, 1]: P(y, z) = [[1/4, 1/4], [0, 2/4]], P(y | z=1) = [1/3, 2/3]
    expected = 0.25 * np.log(1.0) + 0.25 * np.log(1 / 3) + 0.5 * np.log(2 / 3)
    assert nce(TINY_PROBS, TINY_LABELS) == pytest.approx(expected, rel=1e-12)


def test_source_measures_are_zero_when_the_source_label_determines_the_target():
    hard = np.eye(2)[[0, 0, 1, 1]]
    assert leep(hard, TINY_LABELS) == pytest.approx(0.0, abs=1e-12)
    assert nce(hard, TINY_LABELS) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("measure", [knn_accuracy, linear_probe_accuracy], ids=lambda m: m.__name__)
def test_accuracies_are_invariant_to_feature_scale_and_precision(measure):
    # The folds come from the samples' content; rescaling or float32 storage must not move them.
    features, labels, _ = clustered(separation=1.0)
    baseline = measure(features, labels)
    assert measure(1e3 * features, labels) == baseline
    assert measure(features.astype(np.float32), labels) == baseline


def test_logme_of_constant_zero_features_is_the_noise_only_evidence():
    # F = 0: the evidence no longer depends on α; max over β of log N(y | 0, β⁻¹ I) per sample.
    _, labels, _ = clustered()
    fractions = np.bincount(labels) / len(labels)
    expected = np.mean(-0.5 * (1 + np.log(2 * np.pi * fractions)))
    assert logme(np.zeros((len(labels), 4)), labels) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("measure", [entry.resolve() for entry in source_measures()], ids=lambda m: m.__name__)
def test_source_measures_do_not_depend_on_class_names_or_order(measure):
    _, labels, shuffled = clustered()
    probs = source_probabilities(shuffled)
    baseline = measure(probs, labels)
    renamed = np.array(["cat", "ant", "bee"])[labels]  # strings, sorted differently from the codes
    assert measure(probs, renamed) == pytest.approx(baseline, rel=1e-12)
    assert measure(probs, np.array([2, 0, 1])[labels]) == pytest.approx(baseline, rel=1e-12)


@pytest.mark.parametrize("shrinkage", ["auto", 0.0, 0.5])
def test_h_score_is_invariant_to_feature_scale(shrinkage):
    features, labels, _ = clustered(separation=1.0)
    baseline = h_score(features, labels, shrinkage=shrinkage)
    for scale in (1e-3, 7.0, 1e4):
        assert h_score(scale * features, labels, shrinkage=shrinkage) == pytest.approx(baseline, rel=1e-8)


def test_unshrunk_h_score_is_invariant_to_invertible_linear_maps():
    features, labels, _ = clustered(separation=1.0)
    mixing = np.random.default_rng(3).normal(size=(6, 6)) + 3 * np.eye(6)
    assert h_score(features @ mixing, labels, shrinkage=0.0) == pytest.approx(
        h_score(features, labels, shrinkage=0.0), rel=1e-8
    )


def test_h_score_shrinkage_matches_scikit_learn_ledoit_wolf():
    from sklearn.covariance import ledoit_wolf_shrinkage

    for n_samples, n_features in [(60, 6), (15, 40)]:
        rng = np.random.default_rng(n_features)
        labels = np.arange(n_samples) % 3
        features = rng.normal(size=(n_samples, n_features)) + rng.normal(size=(3, n_features))[labels]
        shrinkage = ledoit_wolf_shrinkage(features)
        assert h_score(features, labels) == pytest.approx(h_score(features, labels, shrinkage=shrinkage), rel=1e-9)


# ------------------------------------------------------------------ input validation
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: logme(np.ones(6), [0, 1] * 3), "2-D array"),
        (lambda: logme(np.ones((6, 2)), [0, 1] * 2), "4 entries but there are 6 samples"),
        (lambda: logme(np.ones((6, 2)), [1] * 6), "at least 2 classes"),
        (lambda: h_score(np.full((6, 2), np.nan), [0, 1] * 3), "finite"),
        (lambda: h_score(np.ones((6, 2)), [0, 1] * 3, shrinkage=2), "shrinkage"),
        (lambda: leep(np.full((4, 2), 0.6), [0, 1] * 2), "sum to 1"),
        (lambda: nce(np.array([[1.5, -0.5]] * 4), [0, 1] * 2), "pass softmax"),
        (lambda: knn_accuracy(np.ones((6, 2)), [0, 1] * 3, cv=4), "cv=4 needs at least 4 samples"),
        (lambda: knn_accuracy(np.ones((6, 2)), [0, 1] * 3, k=0), "k must be an integer"),
        (lambda: linear_probe_accuracy(np.ones((6, 2)), [0, 1] * 3, cv=1), "cv must be an integer >= 2"),
        (lambda: fit_table([np.ones((6, 2))], [0, 1] * 3, measures=["accuracy"]), "measures must be"),
    ],
)
def test_invalid_inputs_raise_one_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message) as caught:
        call()
    assert isinstance(caught.value, MeasureError)


# ------------------------------------------------------------ features of a real backbone
BACKBONE = "efficientnet_lite0"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=32, per_class=10)


@pytest.fixture(scope="module")
def lite0_weights():
    return load_pretrained_state_dict(BACKBONE)


@pytest.fixture
def forward_calls():
    """Counts every nn.Module forward in this process while the test runs (torch's global hook)."""
    calls = [0]

    def count(module, inputs, output):
        calls[0] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    yield calls
    handle.remove()


@pytest.fixture(scope="module")
def lite0_features(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("features")
    return block_features(digits, BACKBONE, cache_dir=cache, batch_size=64, progress=False)


def test_block_features_pool_every_block_and_read_the_source_head(digits, lite0_features, lite0_weights):
    spec = get_spec(BACKBONE)
    assert not lite0_features.from_cache
    assert lite0_features.num_blocks == spec.num_blocks
    assert lite0_features.source_probs.shape == (len(digits), spec.num_source_classes)
    np.testing.assert_allclose(lite0_features.source_probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(lite0_features.labels, digits.labels.numpy())

    # The same numbers by hand: normalise with the spec's mean / std, run the blocks, average-pool.
    backbone = create_backbone(BACKBONE, state_dict=lite0_weights).eval()
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (digits.images[:3].float() / 255 - mean) / std
    with torch.no_grad():
        outputs = backbone.forward_blocks(x)
        probs = torch.softmax(backbone.source_logits(x), dim=1)
    for features, output in zip(lite0_features.blocks, outputs):
        assert features.shape == (len(digits), output.shape[1]) and features.dtype == np.float32
        np.testing.assert_allclose(features[:3], output.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lite0_features.source_probs[:3], probs.numpy(), rtol=1e-4, atol=1e-6)


def _one_backbone_per_family() -> list[str]:
    """The registered backbone of each family with the fewest parameters (``resnet18``, ``vgg11``,
    ``regnet_y_400mf``); every family of the registry is covered."""
    return one_per_family()


@pytest.mark.parametrize("name", _one_backbone_per_family())
def test_block_features_of_every_family_end_in_what_the_head_reads(name):
    """ViT passes tokens and SqueezeNet's source head convolves the last map: every family gives
    (N, C_b) features per block, the last block's equal to the backbone's own pooled features
    (ViT: the class token; AlexNet and VGG, whose head reads a 6x6 / 7x7 grid: its global mean)
    and source probabilities equal to its source head's."""
    spec = get_spec(name)
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=False).eval()
    size = spec.min_input_size
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    dataset = ImageDataset(
        images, torch.tensor([0, 1, 0, 1]), ["a", "b"], "noise", grayscale=False, original_size=(size, size)
    )
    features = block_features(
        dataset, name, state_dict=backbone.state_dict(), use_cache=False, progress=False, device="cpu", batch_size=3
    )  # two batches
    assert features.num_blocks == spec.num_blocks
    for b, block in enumerate(features.blocks):
        assert block.shape[0] == 4 and block.ndim == 2 and np.isfinite(block).all(), f"{name} block {b}"
        assert np.ptp(block, axis=0).max() > 0, f"{name} block {b}: the same features for every image"
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    with torch.no_grad():
        pooled = backbone(x)
        if spec.family in ("alexnet", "vgg"):
            pooled = backbone.forward_blocks(x)[-1].mean(dim=(2, 3))
        probs = torch.softmax(backbone.source_logits(x).double(), dim=1)
    # Random weights can give huge activations (Inception: ~1e5): tolerance relative to the scale.
    scale = float(pooled.abs().max())
    np.testing.assert_allclose(features.blocks[-1], pooled.numpy(), rtol=1e-4, atol=1e-4 * scale + 1e-5)
    np.testing.assert_allclose(features.source_probs, probs.numpy(), atol=1e-3)


def test_second_call_reads_the_cache_without_running_the_network(digits, lite0_features, lite0_weights, forward_calls):
    # Weights passed in memory rather than read from the package: same content, same cache entry.
    again = block_features(
        digits, BACKBONE, state_dict=lite0_weights, cache_dir=lite0_features.cache_path.parent, progress=False
    )
    assert again.from_cache and again.cache_path == lite0_features.cache_path
    assert forward_calls[0] == 0
    for cached, computed in zip(again.blocks, lite0_features.blocks):
        np.testing.assert_array_equal(cached, computed)
    np.testing.assert_array_equal(again.source_probs, lite0_features.source_probs)
    with np.load(again.cache_path, allow_pickle=False) as stored:  # plain arrays, no pickle
        assert {f"block_{b}" for b in range(again.num_blocks)} <= set(stored.files)


def test_cache_misses_when_resolution_data_or_weights_change(
    digits, lite0_features, lite0_weights, forward_calls, tmp_path, monkeypatch
):
    folder = lite0_features.cache_path.parent
    resized = block_features(
        digits, BACKBONE, state_dict=lite0_weights, image_size=24, cache_dir=folder, progress=False
    )
    assert not resized.from_cache and resized.image_size == 24 and forward_calls[0] > 0
    assert resized.feature_dims == lite0_features.feature_dims
    assert not np.allclose(resized.blocks[-1], lite0_features.blocks[-1])

    monkeypatch.setenv("NBTL_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "features"
    subset = digits.subset(range(20))
    fewer = block_features(subset, BACKBONE, state_dict=lite0_weights, progress=False)
    assert not fewer.from_cache and fewer.cache_path.parent == tmp_path / "features"
    np.testing.assert_allclose(fewer.blocks[4], lite0_features.blocks[4][:20], rtol=1e-4, atol=1e-5)

    changed = dict(lite0_weights)
    head = next(key for key in changed if key.startswith("source_head") and key.endswith("weight"))
    changed[head] = changed[head] + 0.01
    other = block_features(subset, BACKBONE, state_dict=changed, progress=False)
    assert not other.from_cache and other.weights_hash != fewer.weights_hash
    assert len(list((tmp_path / "features").glob("*.npz"))) == 2
    assert len(list(folder.glob("*.npz"))) == 2


def test_fit_table_has_a_row_per_block_and_source_measures_once(lite0_features):
    table = fit_table(lite0_features)
    assert list(table["block"]) == list(range(lite0_features.num_blocks))
    assert list(table["feature_dim"]) == lite0_features.feature_dims
    assert set(table.columns) >= {
        "backbone",
        "logme",
        "h_score",
        "knn_accuracy",
        "linear_probe_accuracy",
        "leep",
        "nce",
    }
    assert table[["logme", "h_score", "knn_accuracy", "linear_probe_accuracy"]].notna().all().all()
    assert table["leep"].nunique() == 1 and table["nce"].nunique() == 1
    # ImageNet features beat chance (10 classes) on digits at some block.
    assert table["knn_accuracy"].max() > 0.3

    plain = fit_table(lite0_features.blocks[:2], lite0_features.labels, measures=["logme", "leep"])
    assert list(plain.columns) == ["block", "feature_dim", "logme", "leep"]
    assert plain["leep"].isna().all()


def test_meta_features_of_a_real_dataset(digits):
    assert meta_features(digits) == {
        "name": "digits",
        "n_images": 100,
        "n_classes": 10,
        "images_per_class_min": 10,
        "images_per_class_mean": 10.0,
        "images_per_class_max": 10,
        "image_size": 32,
        "original_height": 8,
        "original_width": 8,
        "grayscale": True,
    }
