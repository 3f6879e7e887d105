"""Tests of the first-party model plugin ``kdframe_models``: plain_cnn, resnet and torchvision."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import kdframe_models
import pytest
import torch
from kdframe_models import plain_cnn, resnet_cifar, torchvision_models
from pydantic import ValidationError
from torch import nn

from kdframe import ComponentError, DataInfo, ModelSpec
from kdframe.plugins import create_plugins
from kdframe.schedule import component_params

FASHION = DataInfo(name="fashion_mnist", num_classes=10, in_channels=1, image_size=(28, 28))
CIFAR10 = DataInfo(name="cifar10", num_classes=10, in_channels=3, image_size=(32, 32))
CIFAR100 = DataInfo(name="cifar100", num_classes=100, in_channels=3, image_size=(32, 32))
SPECS = kdframe_models.kdframe_register_models()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward(model: nn.Module, info: DataInfo, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(0)
    images = torch.randn(batch, info.in_channels, *info.image_size)
    model.train()  # training mode: BatchNorm with batch statistics, auxiliary heads (if any) active
    with torch.no_grad():
        return model(images)


def build(spec: ModelSpec, info: DataInfo, **params: object) -> nn.Module:
    return spec.factory(spec.params.model_validate(params), info)


# --------------------------------------------------------------------------------------------------
# The contract every spec keeps
# --------------------------------------------------------------------------------------------------


def test_hook_returns_the_three_specs() -> None:
    assert [(spec.name, spec.family) for spec in SPECS] == [
        ("plain_cnn", "cnn"),
        ("resnet", "resnet"),
        ("torchvision", "torchvision"),
    ]
    for spec in SPECS:
        assert isinstance(spec, ModelSpec)
        assert spec.kind == "model"
        assert spec.summary and "\n" not in spec.summary


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_params_forbid_unknown_fields(spec: ModelSpec) -> None:
    valid = {"plain_cnn": {"depth": 2}, "resnet": {"depth": 8}, "torchvision": {"name": "resnet18"}}
    spec.params.model_validate(valid[spec.name])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        spec.params.model_validate({**valid[spec.name], "dpeth": 4})


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_every_param_is_described_and_in_the_json_schema(spec: ModelSpec) -> None:
    assert spec.params.model_config.get("extra") == "forbid"
    for name, field in spec.params.model_fields.items():
        assert field.description and len(field.description) > 10, f"{spec.name}.{name} has no description"
    schema = spec.params.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(spec.params.model_fields)
    assert all(prop.get("description") for prop in schema["properties"].values())


# --------------------------------------------------------------------------------------------------
# plain_cnn
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("info", [FASHION, CIFAR100], ids=lambda info: info.name)
@pytest.mark.parametrize("depth", [2, 4, 6, 8, 10])
def test_plain_cnn_output_shape(depth: int, info: DataInfo) -> None:
    model = build(plain_cnn.SPEC, info, depth=depth)
    logits = forward(model, info)
    assert logits.shape == (2, info.num_classes)
    assert torch.isfinite(logits).all()


def test_plain_cnn_depth_counts_conv_layers() -> None:
    # TAKD's depth is the number of convolutions; depths 8 and 10 add one hidden FC layer.
    for depth, fc_layers in ((2, 1), (4, 1), (6, 1), (8, 2), (10, 2)):
        model = build(plain_cnn.SPEC, CIFAR100, depth=depth)
        assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == depth
        assert sum(isinstance(m, nn.Linear) for m in model.modules()) == fc_layers


@pytest.mark.parametrize("info", [FASHION, CIFAR10], ids=lambda info: info.name)
def test_plain_cnn_parameter_count_increases_with_depth(info: DataInfo) -> None:
    # With 10 classes (TAKD's setting). With 100 classes on 32x32 depth 4 has more parameters than
    # depth 6, because its classifier sees a 32x8x8 map instead of 64x4x4.
    counts = [n_params(build(plain_cnn.SPEC, info, depth=depth)) for depth in (2, 4, 6, 8, 10)]
    assert all(small < large for small, large in zip(counts, counts[1:])), counts


def test_plain_cnn_2_parameter_count_by_hand() -> None:
    # 3x32x32 input, 10 classes: conv 3->16 (+BN), conv 16->16 (+BN), two pools to 8x8, fc 1024->10.
    info = CIFAR10
    expected = (3 * 16 * 9 + 2 * 16) + (16 * 16 * 9 + 2 * 16) + (16 * 8 * 8 * 10 + 10)
    assert n_params(build(plain_cnn.SPEC, info, depth=2)) == expected


def test_plain_cnn_10_module_paths_and_tapped_shapes() -> None:
    model = build(plain_cnn.SPEC, FASHION, depth=10)
    names = dict(model.named_modules())
    for path in ("features.0", "flatten", "classifier"):
        assert path in names
    assert isinstance(names["features.0"], nn.Sequential)
    assert [type(m) for m in names["features.0"]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert isinstance(names["features.2"], nn.MaxPool2d)
    assert isinstance(names["flatten"], nn.Flatten)
    assert [type(m) for m in names["classifier"]] == [nn.Linear, nn.ReLU, nn.Linear]
    assert not any(getattr(m, "inplace", False) for m in model.modules())

    seen: dict[str, torch.Tensor] = {}
    for path in ("features.0", "flatten"):
        names[path].register_forward_hook(lambda _m, _i, out, path=path: seen.__setitem__(path, out))
    forward(model, FASHION)
    assert seen["features.0"].shape == (2, 32, 28, 28)
    assert (seen["features.0"] >= 0).all()  # the block's output is after its ReLU
    assert seen["flatten"].shape == (2, 256)  # 28 -> 14 -> 7 -> 3 -> 1 after four pools


def test_plain_cnn_image_size_and_overrides() -> None:
    # Non-square and explicit sizes; params override the data info.
    model = build(plain_cnn.SPEC, FASHION, depth=4, image_size=[20, 36], num_classes=7, in_channels=2)
    logits = model(torch.randn(2, 2, 20, 36))
    assert logits.shape == (2, 7)
    assert model.classifier[0].in_features == 32 * 5 * 9


def test_plain_cnn_width_multiplier_scales_channels() -> None:
    model = build(plain_cnn.SPEC, CIFAR100, depth=8, width_multiplier=0.5)
    assert model.features[0][0].out_channels == 8
    assert model.classifier[0].out_features == 32
    assert forward(model, CIFAR100).shape == (2, 100)


def test_plain_cnn_rejects_too_small_images() -> None:
    tiny = DataInfo("tiny", 10, 1, (15, 28))
    with pytest.raises(ComponentError, match=r"depth 10 .* at least 16x16 pixels; got 15x28"):
        build(plain_cnn.SPEC, tiny, depth=10)
    assert forward(build(plain_cnn.SPEC, tiny, depth=6), tiny).shape == (2, 10)  # 8x8 is enough


def test_plain_cnn_rejects_bad_params() -> None:
    for bad in ({"depth": 3}, {}, {"depth": 2, "image_size": 0}, {"depth": 2, "width_multiplier": 0}):
        with pytest.raises(ValidationError):
            plain_cnn.PlainCNNParams.model_validate(bad)


# --------------------------------------------------------------------------------------------------
# resnet
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("info", [FASHION, CIFAR100], ids=lambda info: info.name)
@pytest.mark.parametrize("depth", [8, 14, 20, 110])
def test_resnet_output_shape(depth: int, info: DataInfo) -> None:
    logits = forward(build(resnet_cifar.SPEC, info, depth=depth), info)
    assert logits.shape == (2, info.num_classes)
    assert torch.isfinite(logits).all()


def test_resnet_parameter_counts() -> None:
    info = CIFAR10
    # He et al. 2016, table 6: ResNet-20 has 0.27M parameters with option-A shortcuts.
    assert n_params(build(resnet_cifar.SPEC, info, depth=20, shortcut="A")) == 269_722
    # Option B adds two 1x1 conv + BN projections: 16*32 + 64 and 32*64 + 128.
    assert n_params(build(resnet_cifar.SPEC, info, depth=20)) == 269_722 + (16 * 32 + 64) + (32 * 64 + 128)
    assert resnet_cifar.ResNetParams(depth=20).shortcut == "B"


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_module_paths_and_tapped_shapes(shortcut: str) -> None:
    model = build(resnet_cifar.SPEC, CIFAR100, depth=14, shortcut=shortcut, width_multiplier=1.5)
    names = dict(model.named_modules())
    for path in ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "flatten", "fc"):
        assert path in names
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    seen: dict[str, torch.Tensor] = {}
    for path in ("layer1", "layer3", "layer3.1", "flatten"):
        names[path].register_forward_hook(lambda _m, _i, out, path=path: seen.__setitem__(path, out))
    assert forward(model, CIFAR100).shape == (2, 100)
    assert seen["layer1"].shape == (2, 24, 32, 32)
    assert seen["layer3"].shape == (2, 96, 8, 8)
    assert seen["layer3"] is seen["layer3.1"]  # the stage output is its last block's output
    assert seen["flatten"].shape == (2, 96)


def test_resnet_accepts_odd_sizes_and_channels() -> None:
    info = DataInfo("odd", 5, 2, (9, 13))
    for shortcut in ("A", "B"):
        assert forward(build(resnet_cifar.SPEC, info, depth=8, shortcut=shortcut), info).shape == (2, 5)


@pytest.mark.parametrize("depth", [9, 2, 0, 21])
def test_resnet_rejects_depth_not_6n_plus_2(depth: int) -> None:
    with pytest.raises(ValidationError, match=r"6n \+ 2 .*8, 14, 20, 32, 44, 56, 110"):
        resnet_cifar.ResNetParams(depth=depth)
    assert resnet_cifar.ResNetParams(depth=26).depth == 26


# --------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "first_conv"), [("resnet18", "conv1"), ("mobilenet_v3_small", "features.0.0")]
)
def test_torchvision_one_channel_input(name: str, first_conv: str) -> None:
    model = build(torchvision_models.SPEC, FASHION, name=name)
    assert model.get_submodule(first_conv).in_channels == 1
    assert forward(model, FASHION).shape == (2, 10)


def test_torchvision_three_channel_input_keeps_the_model() -> None:
    model = build(torchvision_models.SPEC, CIFAR100, name="mobilenet_v3_small")
    assert model.get_submodule("features.0.0").in_channels == 3
    assert model.get_submodule("classifier.3").out_features == 100
    assert forward(model, CIFAR100).shape == (2, 100)


def test_torchvision_googlenet_returns_logits_in_training_mode() -> None:
    model = build(torchvision_models.SPEC, FASHION, name="googlenet")
    logits = forward(model, DataInfo("fm32", 10, 1, (32, 32)))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)


def test_torchvision_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ValidationError, match=r"unknown torchvision model 'resnet19'\. Did you mean 'resnet18'"):
        torchvision_models.TorchvisionParams(name="resnet19")


def test_torchvision_unknown_weights_suggests_close_matches() -> None:
    with pytest.raises(ValidationError, match=r"unknown weights 'IMAGENET' .* Did you mean 'IMAGENET1K_V1'"):
        torchvision_models.TorchvisionParams(name="resnet18", weights="IMAGENET")
    with pytest.raises(ValidationError, match="are not resnet34's"):
        torchvision_models.TorchvisionParams(name="resnet34", weights="ResNet18_Weights.IMAGENET1K_V1")
    for ok in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        assert torchvision_models.TorchvisionParams(name="resnet18", weights=ok).weights == ok


def test_torchvision_unknown_input_layer_is_a_clear_error() -> None:
    with pytest.raises(ComponentError, match="3-channel"):
        torchvision_models._adapt_input_channels(nn.Sequential(nn.Linear(3, 3)), "toy", 1, pretrained=False)


def test_torchvision_weights_that_cannot_be_downloaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*_args: object, **_kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ComponentError, match=r"could not be downloaded.*hub cache.*checkpoints") as error:
        build(torchvision_models.SPEC, FASHION, name="mobilenet_v3_small", weights="DEFAULT")
    assert str(tmp_path) in str(error.value)


def test_torchvision_weights_from_the_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torchvision

    # Pre-populate the cache with a (random) state dict under the file name torchvision expects.
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    reference = torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    model = build(torchvision_models.SPEC, FASHION, name="mobilenet_v3_small", weights="DEFAULT")
    state = model.state_dict()
    torch.testing.assert_close(state["features.1.block.0.0.weight"], reference["features.1.block.0.0.weight"])
    # The grey-channel filter is the RGB filters' sum (mean times 3), so a grey image gives the same response.
    torch.testing.assert_close(
        state["features.0.0.weight"], reference["features.0.0.weight"].sum(dim=1, keepdim=True)
    )
    assert model.get_submodule("classifier.3").out_features == 10  # new head for 10 classes
    assert forward(model, FASHION).shape == (2, 10)


class _WritesMarker:
    """An object whose unpickling runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def test_torchvision_weights_file_with_code_is_refused_and_never_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torchvision

    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    marker = tmp_path / "marker"
    torch.save({"features.0.0.weight": _WritesMarker(marker)}, cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user's unsafe setting is overridden too
    with pytest.raises(ComponentError, match=r"holds Python objects other than tensors.*refused") as error:
        build(torchvision_models.SPEC, FASHION, name="mobilenet_v3_small", weights="DEFAULT")
    assert str(cache) in str(error.value)
    assert not marker.exists()
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1" and "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# --------------------------------------------------------------------------------------------------
# Registration through a real plugin manager
# --------------------------------------------------------------------------------------------------


def test_registered_through_a_plugin_manager() -> None:
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_models", kdframe_models)])
    registry = plugins.registry
    assert registry.names("model") == ["plain_cnn", "resnet", "torchvision"]
    spec = registry.spec("model", "plain_cnn")
    assert spec is plain_cnn.SPEC
    component = registry.get("model", "plain_cnn")
    assert component.provider.plugin == "kdframe_models"
    assert component.provider.module == "kdframe_models"
    model = spec.factory(spec.params.model_validate({"depth": 2}), FASHION)
    assert forward(model, FASHION).shape == (2, 10)
    with pytest.raises(ComponentError, match="Did you mean 'resnet'"):
        registry.get("model", "resnt")


def test_schedule_errors_carry_the_param_path() -> None:
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_models", kdframe_models)])
    registry = plugins.registry
    with pytest.raises(Exception, match=r"models\.teacher\.params\.depth: .*6n \+ 2"):
        component_params(registry, "model", "resnet", {"depth": 9}, "models.teacher")
    with pytest.raises(Exception, match=r"models\.big\.params\.name: .*Did you mean 'vgg19', 'vgg16', 'vgg13'"):
        component_params(registry, "model", "torchvision", {"name": "vgg1"}, "models.big")
    with pytest.raises(Exception, match=r"models\.big\.params\.weights: .*unknown weights"):
        component_params(
            registry, "model", "torchvision", {"name": "vgg11", "weights": "V2"}, "models.big"
        )


def test_torchvision_results_tables_show_the_model_s_name() -> None:
    from kdframe.results import format_table
    from kdframe.runner import model_label
    from kdframe.testing import make_plugins

    registry = make_plugins().registry
    assert model_label(registry, "torchvision", {"name": "resnet18"}) == "torchvision resnet18"
    assert model_label(registry, "plain_cnn", {"depth": 2}) == ""  # one model: its architecture's name
    row = {
        "stage": "teacher", "arch": "torchvision", "arch_label": "torchvision resnet18", "teachers": [], "epochs": 1,
        "epochs_run": 1, "final_test_acc": 50.0, "best_test_acc": 50.0, "best_epoch": 1, "params": 11_000_000, "wall_time_s": 3.0,
    }
    assert "torchvision resnet18" in format_table([row])
    assert "torchvision resnet18" not in format_table([{**row, "arch_label": ""}])


def test_torchvision_starts_from_a_local_imagenet_weights_file_with_a_new_head(tmp_path: Path) -> None:
    """The issue's case: a 1000-class resnet18 .pth as the start of a 3-class, 1-channel model."""
    import torchvision

    from kdframe.checkpoints import load_matching

    source = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(source.state_dict(), path)
    model = build(torchvision_models.SPEC, DataInfo("three", 3, 1, (32, 32)), name="resnet18")
    report = load_matching(model, path, label="model 'teacher'")
    reinitialised = {name: (a, b) for name, a, b in report.reinitialised}
    assert reinitialised == {"fc.weight": ((1000, 512), (3, 512)), "fc.bias": ((1000,), (3,)), "conv1.weight": ((64, 3, 7, 7), (64, 1, 7, 7))}
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
