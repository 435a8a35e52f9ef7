"""Tests of nbtl.transfer with real torch: kept / re-initialised / frozen blocks, per-block
learning rates, the L2-SP + L2 regulariser's gradient and the heads (SpinalNet's included)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from nbtl.backbones import (
    create_backbone,
    get_spec,
    load_pretrained_state_dict,
    one_per_family,
)
from nbtl.backbones._registry import get_entry, layout
from nbtl.config import TrialConfig
from nbtl.errors import ConfigError
from nbtl.heads import head_names
from nbtl.transfer import (
    SpinalHead,
    TransferModel,
    block_learning_rates,
    build_transfer,
    make_head,
    reinitialize_blocks,
)

LITE0 = "efficientnet_lite0"
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def lite0_weights() -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights of EfficientNet-Lite0, read once (Backbone key format)."""
    return load_pretrained_state_dict(LITE0)


@pytest.fixture
def resnet18_weights_file(tmp_path):
    """A local resnet18 weights file whose every tensor differs from what a re-init gives.

    torchvision's own init sets BatchNorm to identity, as ``reset_parameters`` does, so the
    BatchNorm tensors are randomised too; otherwise "re-initialised" could not be told apart.
    """
    torch.manual_seed(7)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def _images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def _block_params(model: TransferModel, index: int) -> dict[str, torch.Tensor]:
    """``{Backbone state-dict key: parameter}`` of one block."""
    return {f"blocks.{index}.{name}": p for name, p in model.blocks[index].named_parameters()}


def _block_state(model: TransferModel, index: int) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running statistics) of one block, cloned."""
    return {name: t.detach().clone() for name, t in model.blocks[index].state_dict().items()}


def _assert_blocks_transferred(model: TransferModel, weights: dict, transfer_blocks: int) -> None:
    for i in range(len(model.blocks)):
        params = _block_params(model, i)
        assert params, f"block {i} has no parameters"
        for key, param in params.items():
            same = torch.equal(param.detach(), weights[key])
            if i < transfer_blocks:
                assert same, f"{key}: block {i} < transfer_blocks={transfer_blocks} lost its pre-trained value"
            else:
                assert not same, f"{key}: block {i} >= transfer_blocks={transfer_blocks} was not re-initialised"


# --- kept and re-initialised blocks ---------------------------------------------------------


@pytest.mark.parametrize("transfer_blocks", [0, 1, 4, 8, 9])
def test_lite0_blocks_past_transfer_blocks_are_reinitialised(lite0_weights, transfer_blocks):
    config = TrialConfig(backbone=LITE0, transfer_blocks=transfer_blocks)
    setup = build_transfer(config, NUM_CLASSES, state_dict=lite0_weights)
    assert setup.transfer_blocks == transfer_blocks
    assert setup.reinitialized_blocks == list(range(transfer_blocks, 9))
    _assert_blocks_transferred(setup.model, lite0_weights, transfer_blocks)
    for i in setup.reinitialized_blocks:  # BatchNorm statistics are reset too, not kept
        for module in setup.model.blocks[i].modules():
            if isinstance(module, nn.BatchNorm2d):
                assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean))
                assert torch.equal(module.running_var, torch.ones_like(module.running_var))


def test_transfer_blocks_none_keeps_every_block(lite0_weights):
    setup = build_transfer(TrialConfig(backbone=LITE0), NUM_CLASSES, state_dict=lite0_weights)
    assert setup.transfer_blocks == 9 and setup.reinitialized_blocks == []
    _assert_blocks_transferred(setup.model, lite0_weights, 9)


def test_lite0_default_weights_source_is_the_packaged_file(lite0_weights):
    setup = build_transfer(TrialConfig(backbone=LITE0, transfer_blocks=3), NUM_CLASSES)
    _assert_blocks_transferred(setup.model, lite0_weights, 3)


@pytest.mark.parametrize("how", ["state_dict", "weights_path"])
def test_resnet18_blocks_past_transfer_blocks_are_reinitialised(resnet18_weights_file, how):
    weights = load_pretrained_state_dict("resnet18", resnet18_weights_file)
    source = {"state_dict": weights} if how == "state_dict" else {"weights_path": str(resnet18_weights_file)}
    setup = build_transfer(TrialConfig(backbone="resnet18", transfer_blocks=3), NUM_CLASSES, **source)
    assert setup.reinitialized_blocks == [3, 4]
    _assert_blocks_transferred(setup.model, weights, 3)


def test_same_seed_same_new_weights(lite0_weights):
    config = TrialConfig(backbone=LITE0, transfer_blocks=7, head="mlp", head_width=8, seed=3)
    first = build_transfer(config, NUM_CLASSES, state_dict=lite0_weights).model.state_dict()
    second = build_transfer(config, NUM_CLASSES, state_dict=lite0_weights).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = build_transfer(
        TrialConfig(**{**config.to_dict(), "seed": 4}), NUM_CLASSES, state_dict=lite0_weights
    ).model.state_dict()
    assert not torch.equal(first["head.1.weight"], other["head.1.weight"])
    for key, value in first.items():  # the seed draws new weights only, never transferred ones
        block = int(key.split(".")[2]) if key.startswith("backbone.blocks.") else None
        if block is not None and block < 7:
            assert torch.equal(value, other[key]), key
        elif block is not None and key.endswith("weight") and value.ndim > 1:
            assert not torch.equal(value, other[key]), key


def test_pretrained_false_reinitialises_every_block(lite0_weights):
    setup = build_transfer(TrialConfig(backbone=LITE0, pretrained=False, transfer_blocks=5), NUM_CLASSES)
    assert setup.transfer_blocks == 0 and setup.reinitialized_blocks == list(range(9))
    _assert_blocks_transferred(setup.model, lite0_weights, 0)
    assert setup.regularizer["l2sp"].transferred == []
    with pytest.raises(ConfigError, match="freeze_blocks=1 exceeds transfer_blocks=0"):
        build_transfer(TrialConfig(backbone=LITE0, pretrained=False, freeze_blocks=1), NUM_CLASSES)


def _one_backbone_per_family() -> list[str]:
    """The registered backbone of each family with the fewest parameters (``resnet18``, ``vgg11``,
    ``regnet_y_400mf``); every family of the registry is covered."""
    return one_per_family()


@functools.lru_cache(maxsize=2)
def _pretend_pretrained(name: str) -> dict[str, torch.Tensor]:
    """A 'pre-trained' state (Backbone key format) no initialisation can give: every float
    tensor drawn from [-4, -3), seeded; integer buffers (index tables, counters) zero. Shapes
    come from the network built on the meta device, so no random init is paid for."""
    state = layout(name).backbone_shapes
    like = _meta_state(name)
    generator = torch.Generator().manual_seed(12)
    return {
        key: -3.0 - torch.rand(shape, generator=generator, dtype=like[key].dtype)
        if like[key].is_floating_point()
        else torch.zeros(shape, dtype=like[key].dtype)
        for key, shape in state.items()
    }


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    try:
        with torch.device("meta"):
            return get_entry(name).build().state_dict()
    except NotImplementedError:  # RegNet computes its widths with tensors: built on the CPU
        return get_entry(name).build().state_dict()


@pytest.mark.parametrize("name", _one_backbone_per_family())
def test_reinitialised_blocks_keep_no_pretrained_value_in_any_family(name):
    """ViT's attention in_proj_weight, Swin's relative position tables and logit_scale,
    ConvNeXt's layer_scale have no reset_parameters; none may keep its pre-trained value."""
    weights = _pretend_pretrained(name)
    setup = build_transfer(TrialConfig(backbone=name, transfer_blocks=1, seed=0), NUM_CLASSES, state_dict=weights)
    state = setup.model.backbone.state_dict()
    assert setup.reinitialized_blocks == list(range(1, get_spec(name).num_blocks))
    for key, value in state.items():
        if not value.is_floating_point():
            continue
        reinitialised = key.startswith("blocks.") and int(key.split(".")[1]) >= 1
        if reinitialised:
            assert not (value == weights[key]).any(), f"{name}: {key} kept pre-trained values after re-initialisation"
            assert torch.isfinite(value).all(), f"{name}: {key}"
        else:
            assert torch.equal(value, weights[key]), f"{name}: {key} is not re-initialised but changed"


def test_reinitialising_vit_patch_embedding_resets_class_token_and_positions():
    weights = _pretend_pretrained("vit_b_16")
    backbone = create_backbone("vit_b_16", state_dict=weights)
    reinitialize_blocks(backbone, [0])
    embedding = backbone.blocks[0]
    assert torch.equal(embedding.class_token, torch.zeros_like(embedding.class_token))  # torchvision's init
    assert 0.01 < float(embedding.pos_embedding.detach().std()) < 0.03  # normal(std=0.02)
    assert not (embedding.conv_proj.weight == weights["blocks.0.conv_proj.weight"]).any()
    assert torch.equal(
        backbone.blocks[1][0].self_attention.in_proj_weight, weights["blocks.1.0.self_attention.in_proj_weight"]
    )


# --- frozen blocks --------------------------------------------------------------------------


def test_frozen_blocks_do_not_move_during_training(lite0_weights):
    config = TrialConfig(
        backbone=LITE0,
        transfer_blocks=6,
        freeze_blocks=3,
        lr=0.05,
        l2sp_alpha=0.1,
        l2_beta=0.01,
        l2_head=0.01,
        head="spinal",
        head_width=8,
    )
    setup = build_transfer(config, NUM_CLASSES, state_dict=lite0_weights)
    model, optimizer = setup.model, setup.optimizer
    assert setup.frozen_blocks == [0, 1, 2]
    before = {i: _block_state(model, i) for i in range(len(model.blocks))}

    model.train()
    for i, block in enumerate(model.blocks):  # frozen blocks stay in eval mode, the rest train
        assert all(m.training == (i >= 3) for m in block.modules()), f"block {i} in the wrong mode"
        assert all(p.requires_grad == (i >= 3) for p in block.parameters())
    labels = torch.arange(4) % NUM_CLASSES
    for step in range(4):
        objective = F.cross_entropy(model(_images(seed=step)), labels) + setup.regularizer()
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()

    for i in range(len(model.blocks)):
        after = _block_state(model, i)
        if i < 3:
            for key, value in before[i].items():  # weights and BatchNorm running statistics
                assert torch.equal(after[key], value), f"frozen block {i}: {key} changed"
        else:
            changed = [key for key, value in before[i].items() if not torch.equal(after[key], value)]
            assert any(k.endswith("running_mean") for k in changed), f"trainable block {i}: BN stats did not move"
            assert any(k.endswith("weight") and "bn" not in k for k in changed), f"trainable block {i} did not train"


def test_frozen_blocks_are_in_no_param_group_and_get_no_gradient(lite0_weights):
    setup = build_transfer(TrialConfig(backbone=LITE0, freeze_blocks=9), NUM_CLASSES, state_dict=lite0_weights)
    assert [g["name"] for g in setup.optimizer.param_groups] == ["head"]
    setup.model.train()
    setup.model(_images()).sum().backward()
    backbone_grads = [p.grad for p in setup.model.backbone.parameters()]
    assert all(g is None for g in backbone_grads)
    assert all(p.grad is not None for p in setup.model.head.parameters())


# --- the regulariser ------------------------------------------------------------------------


@pytest.mark.parametrize("l2_head", [0.7, None])
def test_regulariser_gradient_is_l2sp_plus_l2(lite0_weights, l2_head):
    alpha, beta = 0.3, 0.05
    gamma = beta if l2_head is None else l2_head
    config = TrialConfig(
        backbone=LITE0,
        transfer_blocks=6,
        freeze_blocks=2,
        l2sp_alpha=alpha,
        l2_beta=beta,
        l2_head=l2_head,
        head="mlp",
        head_width=8,
    )
    setup = build_transfer(config, NUM_CLASSES, state_dict=lite0_weights)
    model = setup.model
    torch.manual_seed(0)
    with torch.no_grad():  # move every weight away from w⁰ so both terms of the gradient matter
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))

    penalty = setup.regularizer()
    penalty.backward()

    expected_value = 0.0
    checked = {"transferred": 0, "new": 0, "one_dim": 0, "frozen": 0}
    for i, block in enumerate(model.blocks):
        for name, p in block.named_parameters():
            key = f"blocks.{i}.{name}"
            if i < 2:
                assert p.grad is None and not p.requires_grad, f"frozen {key} is regularised"
                checked["frozen"] += 1
            elif p.ndim == 1:
                assert p.grad is None, f"{key}: biases and BatchNorm parameters are not regularised"
                checked["one_dim"] += 1
            elif i < 6:
                w, w0 = p.detach(), lite0_weights[key]
                torch.testing.assert_close(p.grad, alpha * (w - w0) + beta * w)
                expected_value += (0.5 * alpha * (w - w0).pow(2).sum() + 0.5 * beta * w.pow(2).sum()).item()
                checked["transferred"] += 1
            else:
                torch.testing.assert_close(p.grad, gamma * p.detach())
                expected_value += 0.5 * gamma * p.detach().pow(2).sum().item()
                checked["new"] += 1
    for name, p in model.head.named_parameters():
        if p.ndim == 1:
            assert p.grad is None, f"head.{name}: biases are not regularised"
        else:
            torch.testing.assert_close(p.grad, gamma * p.detach())
            expected_value += 0.5 * gamma * p.detach().pow(2).sum().item()
            checked["new"] += 1
    assert all(p.grad is None for p in model.backbone.source_head.parameters())
    assert all(count > 0 for count in checked.values()), checked
    assert penalty.item() == pytest.approx(expected_value, rel=1e-4)


def test_regulariser_is_zero_without_strengths(lite0_weights):
    setup = build_transfer(TrialConfig(backbone=LITE0, transfer_blocks=5), NUM_CLASSES, state_dict=lite0_weights)
    assert setup.regularizer().item() == 0.0
    assert len(setup.regularizer["l2sp"].transferred) > 0 and len(setup.regularizer["l2sp"].new) > 0


# --- per-block learning rates ---------------------------------------------------------------


def _assert_groups_cover_trainable_params(setup) -> None:
    grouped = [id(p) for g in setup.optimizer.param_groups for p in g["params"]]
    trainable = [id(p) for p in setup.model.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)) and set(grouped) == set(trainable)


@pytest.mark.parametrize("backbone", [LITE0, "resnet18"])
@pytest.mark.parametrize("head_lr", [0.3, None])
def test_param_groups_carry_decayed_block_lrs(backbone, head_lr):
    config = TrialConfig(backbone=backbone, pretrained=False, lr=0.1, lr_decay=0.5, head_lr=head_lr)
    setup = build_transfer(config, NUM_CLASSES)
    num_blocks = get_spec(backbone).num_blocks
    expected = {f"block{i}": 0.1 * 0.5 ** (num_blocks - 1 - i) for i in range(num_blocks)}
    expected["head"] = 0.1 if head_lr is None else head_lr
    assert setup.group_lrs() == pytest.approx(expected)
    assert setup.group_lrs()[f"block{num_blocks - 1}"] == 0.1  # the top block trains at lr
    assert all(g["weight_decay"] == 0.0 for g in setup.optimizer.param_groups)
    _assert_groups_cover_trainable_params(setup)


def test_param_groups_skip_frozen_blocks(lite0_weights):
    config = TrialConfig(backbone=LITE0, freeze_blocks=4, lr=0.2, lr_decay=0.8, optimizer="adam")
    setup = build_transfer(config, NUM_CLASSES, state_dict=lite0_weights)
    assert isinstance(setup.optimizer, torch.optim.Adam)
    assert list(setup.group_lrs()) == [f"block{i}" for i in range(4, 9)] + ["head"]
    for i in range(4, 9):
        assert setup.group_lrs()[f"block{i}"] == pytest.approx(0.2 * 0.8 ** (8 - i))
    _assert_groups_cover_trainable_params(setup)


def test_explicit_block_lrs(lite0_weights):
    block_lrs = [0.0, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008]
    config = TrialConfig(backbone=LITE0, freeze_blocks=1, block_lrs=block_lrs, lr=0.5, lr_decay=0.1, head_lr=0.05)
    setup = build_transfer(config, NUM_CLASSES, state_dict=lite0_weights)
    expected = {f"block{i}": block_lrs[i] for i in range(1, 9)} | {"head": 0.05}
    assert setup.group_lrs() == expected
    assert block_learning_rates(config, 9) == block_lrs


@pytest.mark.parametrize("count", [5, 10])
def test_block_lrs_of_wrong_length_is_a_config_error(count):
    config = TrialConfig(backbone=LITE0, pretrained=False, block_lrs=[0.01] * count)
    with pytest.raises(ConfigError, match=f"block_lrs has {count} values but {LITE0} has 9 blocks"):
        build_transfer(config, NUM_CLASSES)


# --- config errors --------------------------------------------------------------------------


def test_freeze_blocks_above_transfer_blocks_is_rejected():
    with pytest.raises(ConfigError, match="freeze_blocks must be <= transfer_blocks"):
        TrialConfig.from_dict({"transfer_blocks": 2, "freeze_blocks": 3})
    with pytest.raises(ConfigError, match="freeze_blocks=3 exceeds transfer_blocks=2"):
        build_transfer(TrialConfig(backbone=LITE0, transfer_blocks=2, freeze_blocks=3), NUM_CLASSES)
    with pytest.raises(ConfigError, match="freeze_blocks=6 exceeds transfer_blocks=5 for resnet18"):
        build_transfer(TrialConfig(backbone="resnet18", freeze_blocks=6), NUM_CLASSES)


def test_transfer_blocks_above_block_count_is_rejected():
    with pytest.raises(
        ConfigError, match=r"transfer_blocks=10 but efficientnet_lite0 has 9 blocks: use 0\.\.9"
    ) as error:
        build_transfer(TrialConfig(backbone=LITE0, transfer_blocks=10), NUM_CLASSES)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="resnet18 has 5 blocks"):
        build_transfer(TrialConfig(backbone="resnet18", transfer_blocks=6), NUM_CLASSES)


# --- model and heads ------------------------------------------------------------------------


def test_model_takes_uint8_or_unit_float_images(lite0_weights):
    setup = build_transfer(
        TrialConfig(backbone=LITE0, head="spinal", head_width=16), NUM_CLASSES, state_dict=lite0_weights
    )
    model = setup.model.eval()
    images = _images(n=3)
    assert isinstance(model.head, SpinalHead) and model.head.layers[0][1].in_features == 640
    with torch.no_grad():
        logits = model(images)
        torch.testing.assert_close(model(images.float() / 255), logits)
    assert logits.shape == (3, NUM_CLASSES)


def check_head(kind: str) -> nn.Module:
    """What every registered head must do (the common check of the head registry): map ``(N, 12)`` features to
    ``(N, 5)`` logits and pass a gradient to each of its parameters."""
    torch.manual_seed(0)
    head = make_head(kind, 12, 5, width=6, dropout=0.1)
    out = head(torch.randn(3, 12))
    assert out.shape == (3, 5)
    out.sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{kind} head: {name} got no gradient"
    return head


@pytest.mark.parametrize("kind", head_names())
def test_head_output_shape_and_gradients(kind):
    head = check_head(kind)
    if kind == "mlp":
        assert [m.out_features for m in head.modules() if isinstance(m, nn.Linear)] == [6, 5]


@pytest.mark.parametrize("in_features", [12, 13])
def test_spinal_head_follows_spinalnet(in_features):
    """Kabir et al. 2020: layer 1 sees half A, then layers alternate halves B, A, B, each also
    seeing the previous layer's output; the output layer reads every layer's output."""
    torch.manual_seed(0)
    width = 5
    head = SpinalHead(in_features, 3, width=width, num_layers=4).eval()
    half_a, half_b = in_features // 2, in_features - in_features // 2
    linears = [layer[1] for layer in head.layers]
    assert [lin.in_features for lin in linears] == [half_a, half_b + width, half_a + width, half_b + width]
    assert all(lin.out_features == width for lin in linears)
    assert (head.output.in_features, head.output.out_features) == (4 * width, 3)

    x = torch.randn(2, in_features)
    a, b = x[:, :half_a], x[:, half_a:]
    h1 = F.relu(linears[0](a))
    h2 = F.relu(linears[1](torch.cat([b, h1], 1)))
    h3 = F.relu(linears[2](torch.cat([a, h2], 1)))
    h4 = F.relu(linears[3](torch.cat([b, h3], 1)))
    with torch.no_grad():
        torch.testing.assert_close(head(x), head.output(torch.cat([h1, h2, h3, h4], 1)))


def test_spinal_head_every_layer_learns_from_each_half():
    torch.manual_seed(1)
    head = SpinalHead(8, 2, width=4)
    x = torch.randn(16, 8, requires_grad=True)
    head(x).pow(2).sum().backward()
    for i, layer in enumerate(head.layers):
        assert layer[1].weight.grad.abs().sum() > 0, f"spinal layer {i} got no gradient"
    assert head.output.weight.grad.abs().sum() > 0
    assert x.grad[:, :4].abs().sum() > 0 and x.grad[:, 4:].abs().sum() > 0
