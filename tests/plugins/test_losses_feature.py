"""Tests of the feature-based loss terms of ``kdframe_losses``: fitnet, at, nst, vid and ofd.

Every value is compared with an independent, straightforward computation (NumPy in float64, often
with explicit loops), never with the torch functions the term itself calls.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

import kdframe_losses
from kdframe import ComponentError, LayerError, LossSpec, LossTerm, ModelOutputs, StepOutputs
from kdframe.features import FeatureTap
from kdframe.losses import BuildContext
from kdframe.plugins import create_plugins
from kdframe_losses.ofd import channel_margin, margins_from_batchnorm

FEATURE_TERMS = ("fitnet", "at", "nst", "vid", "ofd")

# -- helpers --------------------------------------------------------------------------------------


def registry():
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_losses", kdframe_losses)])
    return plugins.registry


SPECS = {component.name: component.spec for component in registry().iter("loss")}


def pairs(*names: tuple[str, str]) -> list[dict[str, str]]:
    return [{"student": s, "teacher": t} for s, t in names]


ONE = pairs(("s.a", "t.a"))
TWO = pairs(("s.a", "t.a"), ("s.b", "t.b"))


def make(name: str, layers=ONE, **params) -> LossTerm:
    spec = SPECS[name]
    return spec.factory(spec.params(layers=layers, **params))


def fixed(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * 2.0


def leaf(array, requires_grad=True, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=dtype, requires_grad=requires_grad)


def context(student: dict, teacher: dict, teacher_modules: dict | None = None) -> BuildContext:
    """A BuildContext from {path: array or shape}."""

    def shape(value):
        return torch.Size(value.shape if hasattr(value, "shape") else value)

    return BuildContext(
        student_shapes={k: shape(v) for k, v in student.items()},
        teacher_shapes={k: shape(v) for k, v in teacher.items()},
        teacher_modules=dict(teacher_modules or {}),
    )


def outputs(student: dict, teacher: dict) -> StepOutputs:
    """StepOutputs with the given features (tensors) and dummy logits."""
    n = next(iter(student.values())).shape[0]
    return StepOutputs(
        student=ModelOutputs(torch.zeros(n, 3, dtype=torch.float64), dict(student)),
        teachers=[ModelOutputs(torch.zeros(n, 3, dtype=torch.float64), dict(teacher))],
        labels=torch.zeros(n, dtype=torch.long),
    )


def run(term: LossTerm, student: dict, teacher: dict, teacher_modules=None, build=True, double=True):
    """Build the term for the given arrays, then evaluate it on float64 leaves (teacher without grads)."""
    if build:
        term.build(context(student, teacher, teacher_modules))
    if double:
        term.double()
    s = {k: leaf(v) for k, v in student.items()}
    t = {k: leaf(v, requires_grad=False) for k, v in teacher.items()}
    return term(outputs(s, t)), s


def np_avg_pool(maps: np.ndarray, factor_h: int, factor_w: int) -> np.ndarray:
    n, c, h, w = maps.shape
    return maps.reshape(n, c, h // factor_h, factor_h, w // factor_w, factor_w).mean(axis=(3, 5))


def np_pool_pair(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool the larger map (per dimension) to the smaller size; sizes must divide."""
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    return (
        np_avg_pool(s, s.shape[2] // h, s.shape[3] // w),
        np_avg_pool(t, t.shape[2] // h, t.shape[3] // w),
    )


def np_conv1x1(weight: np.ndarray, maps: np.ndarray, bias=None) -> np.ndarray:
    """1x1 convolution with explicit loops over output and input channels."""
    n, c_in, h, w = maps.shape
    out = np.zeros((n, weight.shape[0], h, w))
    for o in range(weight.shape[0]):
        for c in range(c_in):
            out[:, o] += weight[o, c] * maps[:, c]
        if bias is not None:
            out[:, o] += bias[o]
    return out


def np_conv3x3(weight: np.ndarray, bias: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """3x3 convolution, padding 1, with explicit loops (cross-correlation as in PyTorch)."""
    n, c_in, h, w = maps.shape
    padded = np.zeros((n, c_in, h + 2, w + 2))
    padded[:, :, 1:-1, 1:-1] = maps
    out = np.zeros((n, weight.shape[0], h, w))
    for o in range(weight.shape[0]):
        for i in range(h):
            for j in range(w):
                out[:, o, i, j] = (padded[:, :, i : i + 3, j : j + 3] * weight[o][None]).sum(axis=(1, 2, 3)) + bias[o]
    return out


def set_conv(conv: nn.Conv2d, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight).view_as(conv.weight))
        if bias is not None:
            conv.bias.copy_(torch.tensor(bias))


def check_gradients(term: LossTerm, student: dict, teacher: dict, teacher_modules=None) -> None:
    """Gradients reach every student tensor and every parameter of the term, and never the teacher."""
    term.build(context(student, teacher, teacher_modules))
    s = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in student.items()}
    t = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in teacher.items()}  # tracking grads
    value = term(outputs(s, t))
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    for tensor in s.values():
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0 and torch.isfinite(tensor.grad).all()
    for name, parameter in term.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(tensor.grad is None for tensor in t.values())


# -- registration and the shared contract ---------------------------------------------------------


def test_the_feature_terms_are_registered_in_the_feature_family():
    for name in FEATURE_TERMS:
        assert SPECS[name].family == "feature"


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_spec_documents_reference_example_and_layers(name):
    spec = SPECS[name]
    assert isinstance(spec, LossSpec)
    assert spec.reference and "20" in spec.reference
    assert spec.layers and "\n" not in spec.layers and spec.layers != "logits"
    assert spec.summary and "\n" not in spec.summary
    assert spec.factory.__doc__ and spec.params.__doc__
    for field_name, field in spec.params.model_fields.items():
        assert field.description and field.description.strip(), f"{name}.{field_name}"
    layers = spec.example["layers"]
    assert layers[0]["student"].startswith("features.2") and layers[0]["teacher"].startswith("features.4")
    assert all(set(pair) == {"student", "teacher"} for pair in layers)
    params = spec.params(**spec.example)
    with pytest.raises(ValidationError):  # frozen
        params.layers = []
    with pytest.raises(ValidationError):  # extra forbidden
        spec.params(**spec.example, not_a_param=1)
    with pytest.raises(ValidationError):  # layers are required ...
        spec.params()
    with pytest.raises(ValidationError):  # ... at least one pair ...
        spec.params(layers=[])
    with pytest.raises(ValidationError):  # ... of two non-empty paths
        spec.params(layers=[{"student": "a"}])
    with pytest.raises(ValidationError):
        spec.params(layers=[{"student": "", "teacher": "b"}])


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_example_builds_and_gives_a_finite_scalar_with_gradients(name):
    torch.manual_seed(0)
    spec = SPECS[name]
    term = spec.factory(spec.params(**spec.example))
    assert term.needs_teacher is True
    paths = [(pair["student"], pair["teacher"]) for pair in spec.example["layers"]]
    assert tuple(term.student_layers) == tuple(s for s, _ in paths)
    assert tuple(term.teacher_layers) == tuple(t for _, t in paths)
    student = {s: fixed(i, 4, 3, 6, 6) for i, (s, _) in enumerate(paths)}
    teacher = {t: fixed(10 + i, 4, 5, 3, 3) for i, (_, t) in enumerate(paths)}
    modules = {t: nn.BatchNorm2d(5) for t in teacher}
    check_gradients(term, student, teacher, modules)
    with pytest.raises(ComponentError, match="needs a teacher"):
        term(StepOutputs(student=ModelOutputs(torch.zeros(4, 3), {}), teachers=[], labels=torch.zeros(4, dtype=torch.long)))


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_layer_paths_are_declared_once_each(name):
    layers = pairs(("s.a", "t.a"), ("s.a", "t.b"), ("s.b", "t.a"))
    term = make(name, layers=layers)
    assert tuple(term.student_layers) == ("s.a", "s.b")
    assert tuple(term.teacher_layers) == ("t.a", "t.b")


@pytest.mark.parametrize("name", FEATURE_TERMS)
@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "match"),
    [
        ((2, 3, 4, 4), (2, 5), r"\(2, 3, 4, 4\).*\(2, 5\)"),
        ((2, 3), (2, 5, 4, 4), r"\(2, 3\).*\(2, 5, 4, 4\)"),
        ((2, 3, 4), (2, 3, 4), r"\(2, 3, 4\)"),
        ((2, 3, 4, 4), (3, 5, 4, 4), "batch sizes differ"),
    ],
)
def test_wrong_ranks_and_shapes_are_layer_errors_naming_layers_and_shapes(name, student_shape, teacher_shape, match):
    term = make(name)
    modules = {"t.a": nn.BatchNorm2d(teacher_shape[1])}
    with pytest.raises(LayerError, match=match) as error:
        term.build(context({"s.a": student_shape}, {"t.a": teacher_shape}, modules))
    assert "'s.a'" in str(error.value) and "'t.a'" in str(error.value)


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_wrong_shapes_at_forward_are_layer_errors(name):
    term = make(name)
    if name in ("at", "nst"):  # no build needed: the check happens at forward
        with pytest.raises(LayerError, match=r"'s.a'.*\(2, 3\).*'t.a'.*\(2, 5, 4, 4\)"):
            term(outputs({"s.a": torch.zeros(2, 3)}, {"t.a": torch.zeros(2, 5, 4, 4)}))
        return
    term.build(context({"s.a": (2, 3, 4, 4)}, {"t.a": (2, 5, 4, 4)}, {"t.a": nn.BatchNorm2d(5)}))
    with pytest.raises(LayerError, match=r"'s.a'.*'t.a'"):
        term(outputs({"s.a": torch.zeros(2, 4, 4, 4)}, {"t.a": torch.zeros(2, 5, 4, 4)}))


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_layers_missing_from_the_dry_run_or_the_outputs_are_layer_errors(name):
    term = make(name)
    with pytest.raises(LayerError, match="'s.a' was not reported.*layers seen: other"):
        term.build(context({"other": (2, 3, 4, 4)}, {"t.a": (2, 3, 4, 4)}, {"t.a": nn.BatchNorm2d(3)}))
    term.build(context({"s.a": (2, 3, 4, 4)}, {"t.a": (2, 3, 4, 4)}, {"t.a": nn.BatchNorm2d(3)}))
    with pytest.raises(LayerError, match="'t.a' is missing"):
        term(outputs({"s.a": torch.zeros(2, 3, 4, 4)}, {}))


@pytest.mark.parametrize("name", ["fitnet", "vid", "ofd"])
def test_terms_with_adapters_refuse_to_run_before_build(name):
    with pytest.raises(ComponentError, match="before build"):
        make(name)(outputs({"s.a": torch.zeros(2, 3, 4, 4)}, {"t.a": torch.zeros(2, 5, 4, 4)}))


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_batch_of_one(name):
    torch.manual_seed(1)
    term = make(name)
    student, teacher = {"s.a": fixed(1, 1, 3, 4, 4)}, {"t.a": fixed(2, 1, 5, 2, 2)}
    check_gradients(term, student, teacher, {"t.a": nn.BatchNorm2d(5)})


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_several_pairs_average_the_single_pair_values(name):
    torch.manual_seed(2)
    student = {"s.a": fixed(3, 2, 3, 4, 4), "s.b": fixed(4, 2, 6, 2, 2)}
    teacher = {"t.a": fixed(5, 2, 5, 4, 4), "t.b": fixed(6, 2, 4, 4, 4)}
    modules = {"t.a": nn.BatchNorm2d(5), "t.b": nn.BatchNorm2d(4)}
    both = make(name, layers=TWO)
    both.build(context(student, teacher, modules))
    singles = []
    for index, layers in enumerate((TWO[:1], TWO[1:])):
        single = make(name, layers=layers)
        single.build(context(student, teacher, modules))
        # Give the single-pair term the same adapter as the two-pair term has for that pair.
        adapters = [child for child in both.children() if isinstance(child, nn.ModuleList)]
        for own, shared in zip((c for c in single.children() if isinstance(c, nn.ModuleList)), adapters):
            own[0].load_state_dict(shared[index].state_dict())
        singles.append(run(single, student, teacher, build=False)[0].item())
    value = run(both, student, teacher, build=False)[0].item()
    assert value == pytest.approx(sum(singles) / 2, rel=1e-12)
    assert singles[0] != pytest.approx(singles[1])


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_end_to_end_with_feature_taps_on_a_small_cnn(name):
    """The core's path: taps on real modules, a BuildContext like the runner's, one optimiser step."""
    torch.manual_seed(3)

    def cnn(widths):
        blocks, channels = [], 1
        for width in widths:
            blocks.append(nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()))
            blocks.append(nn.MaxPool2d(2))
            channels = width
        return nn.Sequential(nn.Sequential(*blocks), nn.Flatten(), nn.LazyLinear(3))

    student, teacher = cnn([4, 6]), cnn([8, 8])
    layers = pairs(("0.0.1", "0.0.1"), ("0.2.1", "0.2.1"))  # the BatchNorms, before the ReLUs
    term = make(name, layers=layers)
    s_tap = FeatureTap(student, term.student_layers, "student")
    t_tap = FeatureTap(teacher, term.teacher_layers, "teacher")
    images = torch.randn(4, 1, 8, 8)
    student(images), teacher(images)
    term.build(
        BuildContext(
            student_shapes={k: v.shape for k, v in s_tap.take().items()},
            teacher_shapes={k: v.shape for k, v in t_tap.take().items()},
            student_modules=dict(s_tap.modules),
            teacher_modules=dict(t_tap.modules),
        )
    )
    optimiser = torch.optim.SGD([*student.parameters(), *term.parameters()], lr=0.01)
    with torch.no_grad():
        t_logits = teacher(images)
    s_logits = student(images)
    value = term(
        StepOutputs(
            student=ModelOutputs(s_logits, s_tap.take()),
            teachers=[ModelOutputs(t_logits, t_tap.take())],
            labels=torch.zeros(4, dtype=torch.long),
        )
    )
    value.backward()
    optimiser.step()
    assert torch.isfinite(value)
    assert student[0][0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


# -- fitnet ---------------------------------------------------------------------------------------


def test_fitnet_params_and_declared_layers():
    term = make("fitnet", layers=TWO)
    assert tuple(term.student_layers) == ("s.a", "s.b") and tuple(term.teacher_layers) == ("t.a", "t.b")
    assert SPECS["fitnet"].params(layers=ONE).regressor == "conv1x1"
    with pytest.raises(ValidationError):
        SPECS["fitnet"].params(layers=ONE, regressor="conv5x5")
    with pytest.raises(ValidationError):  # the single-pair params of the old API are gone
        SPECS["fitnet"].params(student_layer="a", teacher_layer="b")


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (3, 7), (1, 2, 3, 3), (1, 6)])
def test_fitnet_without_regressor_is_the_elementwise_mean_squared_error(shape):
    s, t = fixed(20, *shape), fixed(21, *shape)
    term = make("fitnet", regressor="none")
    value, _ = run(term, {"s.a": s}, {"t.a": t})
    assert list(term.parameters()) == []
    assert value.item() == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-12)


def test_fitnet_none_works_without_build():
    s, t = fixed(22, 2, 3), fixed(23, 2, 3)
    value, _ = run(make("fitnet", regressor="none"), {"s.a": s}, {"t.a": t}, build=False)
    assert value.item() == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-12)


@pytest.mark.parametrize("regressor", ["conv1x1", "linear"])
def test_fitnet_1x1_regressor_maps_channels(regressor):
    s, t = fixed(24, 2, 3, 4, 4), fixed(25, 2, 5, 4, 4)
    term = make("fitnet", regressor=regressor)
    term.build(context({"s.a": s}, {"t.a": t}))
    term.double()  # adapters exist only after build(); the core moves the term afterwards
    conv = term.regressors[0]
    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, 5, (1, 1))
    weight, bias = fixed(26, 5, 3), fixed(27, 5)
    set_conv(conv, weight, bias)
    value, _ = run(term, {"s.a": s}, {"t.a": t}, build=False)
    expected = float(((np_conv1x1(weight, s, bias) - t) ** 2).mean())
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_fitnet_conv3x3_matches_an_explicit_convolution():
    s, t = fixed(28, 2, 3, 5, 5), fixed(29, 2, 4, 5, 5)
    term = make("fitnet", regressor="conv3x3")
    term.build(context({"s.a": s}, {"t.a": t}))
    term.double()  # adapters exist only after build(); the core moves the term afterwards
    conv = term.regressors[0]
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.out_channels == 4
    weight, bias = fixed(30, 4, 3, 3, 3), fixed(31, 4)
    set_conv(conv, weight, bias)
    value, _ = run(term, {"s.a": s}, {"t.a": t}, build=False)
    expected = float(((np_conv3x3(weight, bias, s) - t) ** 2).mean())
    assert value.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("regressor", ["conv1x1", "conv3x3", "linear"])
def test_fitnet_regressor_on_vectors_is_linear(regressor):
    s, t = fixed(32, 4, 6), fixed(33, 4, 3)
    term = make("fitnet", regressor=regressor)
    term.build(context({"s.a": s}, {"t.a": t}))
    term.double()  # adapters exist only after build(); the core moves the term afterwards
    linear = term.regressors[0]
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (6, 3)
    weight, bias = fixed(34, 3, 6), fixed(35, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))
    value, _ = run(term, {"s.a": s}, {"t.a": t}, build=False)
    expected = sum((sum(weight[d, k] * s[n, k] for k in range(6)) + bias[d] - t[n, d]) ** 2 for n in range(4) for d in range(3)) / 12
    assert value.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "pool_student", "pool_teacher"),
    [
        ((2, 3, 8, 8), (2, 3, 4, 4), (2, 2), (1, 1)),  # the student's map is larger: pool it
        ((2, 3, 2, 2), (2, 3, 6, 6), (1, 1), (3, 3)),  # the teacher's map is larger: pool it
        ((2, 3, 8, 2), (2, 3, 4, 4), (2, 1), (1, 2)),  # each larger in one direction
    ],
)
def test_fitnet_pools_the_larger_map_to_the_smaller_size(student_shape, teacher_shape, pool_student, pool_teacher):
    s, t = fixed(36, *student_shape), fixed(37, *teacher_shape)
    value, _ = run(make("fitnet", regressor="none"), {"s.a": s}, {"t.a": t})
    expected = float(((np_avg_pool(s, *pool_student) - np_avg_pool(t, *pool_teacher)) ** 2).mean())
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_fitnet_pools_after_the_regressor():
    s, t = fixed(38, 2, 3, 8, 8), fixed(39, 2, 4, 4, 4)
    term = make("fitnet")
    term.build(context({"s.a": s}, {"t.a": t}))
    term.double()  # adapters exist only after build(); the core moves the term afterwards
    weight = fixed(40, 4, 3)
    set_conv(term.regressors[0], weight, np.zeros(4))
    value, _ = run(term, {"s.a": s}, {"t.a": t}, build=False)
    expected = float(((np_avg_pool(np_conv1x1(weight, s), 2, 2) - t) ** 2).mean())
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_fitnet_builds_one_regressor_per_pair_and_averages():
    student = {"s.a": fixed(41, 2, 3, 4, 4), "s.b": fixed(42, 2, 6)}
    teacher = {"t.a": fixed(43, 2, 5, 4, 4), "t.b": fixed(44, 2, 2)}
    term = make("fitnet", layers=TWO)
    term.build(context(student, teacher))
    term.double()  # adapters exist only after build(); the core moves the term afterwards
    first, second = term.regressors
    assert isinstance(first, nn.Conv2d) and (first.in_channels, first.out_channels) == (3, 5)
    assert isinstance(second, nn.Linear) and (second.in_features, second.out_features) == (6, 2)
    w1, b1, w2, b2 = fixed(45, 5, 3), fixed(46, 5), fixed(47, 2, 6), fixed(48, 2)
    set_conv(first, w1, b1)
    with torch.no_grad():
        second.weight.copy_(torch.tensor(w2))
        second.bias.copy_(torch.tensor(b2))
    value, _ = run(term, student, teacher, build=False)
    mse_a = ((np_conv1x1(w1, student["s.a"], b1) - teacher["t.a"]) ** 2).mean()
    mse_b = ((student["s.b"] @ w2.T + b2 - teacher["t.b"]) ** 2).mean()
    assert value.item() == pytest.approx((mse_a + mse_b) / 2, rel=1e-10)


def test_fitnet_gradients_reach_student_and_regressors_but_not_teacher():
    student = {"s.a": fixed(49, 4, 3, 5, 5), "s.b": fixed(50, 4, 2, 5, 5)}
    teacher = {"t.a": fixed(51, 4, 6, 5, 5), "t.b": fixed(52, 4, 3, 5, 5)}
    term = make("fitnet", layers=TWO, regressor="conv3x3")
    check_gradients(term, student, teacher)
    assert len(list(term.parameters())) == 4  # a weight and a bias per pair, optimised with the student


def test_fitnet_rank_mismatch_message():
    with pytest.raises(LayerError) as error:
        make("fitnet").build(context({"s.a": (8, 16, 4, 4)}, {"t.a": (8, 10)}))
    for text in ("s.a", "t.a", "(8, 16, 4, 4)", "(8, 10)", "4-D vs 2-D"):
        assert text in str(error.value)


def test_fitnet_other_build_errors():
    with pytest.raises(LayerError, match=r"channels \(3 vs 5\)"):
        make("fitnet", regressor="none").build(context({"s.a": (2, 3, 4, 4)}, {"t.a": (2, 5, 4, 4)}))
    with pytest.raises(LayerError, match=r"\(2, 3\).*\(2, 5\)"):
        make("fitnet", regressor="none").build(context({"s.a": (2, 3)}, {"t.a": (2, 5)}))
    with pytest.raises(LayerError, match="feature maps"):
        make("fitnet").build(context({"s.a": (2, 3, 4)}, {"t.a": (2, 5, 4)}))
    # The second pair is checked too.
    with pytest.raises(LayerError, match="'s.b'.*'t.b'"):
        make("fitnet", layers=TWO).build(
            context({"s.a": (2, 3, 4, 4), "s.b": (2, 3)}, {"t.a": (2, 5, 4, 4), "t.b": (2, 3, 4, 4)})
        )
    # Equal shapes of another rank are fine without a regressor.
    make("fitnet", regressor="none").build(context({"s.a": (2, 3, 4)}, {"t.a": (2, 3, 4)}))


# -- at -------------------------------------------------------------------------------------------


def ref_attention(maps: np.ndarray, p: float) -> list[list[float]]:
    """Per sample: the channel mean of |f|^p at every position, flattened, divided by its L2 norm."""
    n, c, h, w = maps.shape
    result = []
    for i in range(n):
        q = [sum(abs(maps[i, k, y, x]) ** p for k in range(c)) / c for y in range(h) for x in range(w)]
        norm = math.sqrt(sum(v * v for v in q))
        result.append([v / max(norm, 1e-12) for v in q])
    return result


def ref_at(s: np.ndarray, t: np.ndarray, p: float = 2.0) -> float:
    s, t = np_pool_pair(s, t)
    a_s, a_t = ref_attention(s, p), ref_attention(t, p)
    squares = [(x - y) ** 2 for row_s, row_t in zip(a_s, a_t) for x, y in zip(row_s, row_t)]
    return sum(squares) / len(squares)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_at_matches_loops(p):
    s, t = fixed(60, 3, 4, 5, 5), fixed(61, 3, 7, 5, 5)  # channel counts may differ
    term = make("at", p=p)
    assert list(term.parameters()) == []
    value, _ = run(term, {"s.a": s}, {"t.a": t})
    assert value.item() == pytest.approx(ref_at(s, t, p), rel=1e-10)


def test_at_default_p_is_2_and_hand_checked_example():
    assert make("at").p == 2.0
    # One channel, two positions: student [1, 0] -> a = [1, 0]; teacher [1, 1] -> a = [1, 1]/sqrt 2.
    s = np.array([[[[1.0, 0.0]]]])
    t = np.array([[[[1.0, -1.0]]]])
    value, _ = run(make("at"), {"s.a": s}, {"t.a": t}, build=False)
    r = 1 / math.sqrt(2)
    assert value.item() == pytest.approx(((1 - r) ** 2 + r**2) / 2, rel=1e-12)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((2, 3, 8, 8), (2, 4, 4, 4)), ((2, 3, 2, 2), (2, 4, 6, 6)), ((2, 3, 8, 2), (2, 4, 4, 4))],
)
def test_at_pools_the_larger_feature_map_before_the_attention(student_shape, teacher_shape):
    s, t = fixed(62, *student_shape), fixed(63, *teacher_shape)
    value, _ = run(make("at"), {"s.a": s}, {"t.a": t}, build=False)
    assert value.item() == pytest.approx(ref_at(s, t), rel=1e-10)


def test_at_is_zero_for_proportional_maps_and_finite_for_zero_maps():
    s = fixed(64, 2, 3, 4, 4)
    value, _ = run(make("at"), {"s.a": s}, {"t.a": np.concatenate([3 * s, -3 * s], axis=1)}, build=False)
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    student = torch.zeros(2, 3, 4, 4, requires_grad=True)
    value = make("at")(outputs({"s.a": student}, {"t.a": torch.randn(2, 3, 4, 4)}))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def test_at_params():
    for bad in (0.5, 0.0, -2.0, float("nan")):
        with pytest.raises(ValidationError):
            SPECS["at"].params(layers=ONE, p=bad)


def test_at_computes_half_precision_in_float32():
    s = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    value = make("at")(outputs({"s.a": s}, {"t.a": torch.randn(2, 5, 4, 4, dtype=torch.bfloat16)}))
    assert value.dtype == torch.float32
    value.backward()
    assert s.grad.dtype == torch.bfloat16


# -- nst ------------------------------------------------------------------------------------------


def ref_nst(s: np.ndarray, t: np.ndarray, degree: int = 2, constant: float = 0.0) -> float:
    s, t = np_pool_pair(s, t)

    def vectors(maps, i):
        rows = [maps[i, c].ravel() for c in range(maps.shape[1])]
        return [row / max(math.sqrt(float(sum(v * v for v in row))), 1e-12) for row in rows]

    def mean_kernel(xs, ys):
        return sum((float(np.dot(x, y)) + constant) ** degree for x in xs for y in ys) / (len(xs) * len(ys))

    total = 0.0
    for i in range(s.shape[0]):
        vs, vt = vectors(s, i), vectors(t, i)
        total += mean_kernel(vt, vt) + mean_kernel(vs, vs) - 2 * mean_kernel(vs, vt)
    return total / s.shape[0]


@pytest.mark.parametrize(("degree", "constant"), [(2, 0.0), (1, 0.0), (3, 0.5)])
def test_nst_matches_loops(degree, constant):
    s, t = fixed(70, 3, 4, 4, 4), fixed(71, 3, 6, 4, 4)
    term = make("nst", degree=degree, constant=constant)
    assert list(term.parameters()) == []
    value, _ = run(term, {"s.a": s}, {"t.a": t})
    assert value.item() == pytest.approx(ref_nst(s, t, degree, constant), rel=1e-10)


def test_nst_defaults_and_params():
    term = make("nst")
    assert (term.degree, term.constant) == (2, 0.0)
    for bad in ({"degree": 0}, {"degree": 1.5}, {"constant": -1.0}):
        with pytest.raises(ValidationError):
            SPECS["nst"].params(layers=ONE, **bad)


def test_nst_linear_kernel_is_the_distance_between_mean_channel_vectors():
    # With k(x, y) = x.y the MMD is || mean_i s_i - mean_j t_j ||^2 (a hand-checkable identity).
    s, t = fixed(72, 2, 3, 3, 3), fixed(73, 2, 5, 3, 3)
    value, _ = run(make("nst", degree=1), {"s.a": s}, {"t.a": t}, build=False)
    expected = 0.0
    for i in range(2):
        mean_s = np.mean([s[i, c].ravel() / np.linalg.norm(s[i, c]) for c in range(3)], axis=0)
        mean_t = np.mean([t[i, c].ravel() / np.linalg.norm(t[i, c]) for c in range(5)], axis=0)
        expected += float(((mean_s - mean_t) ** 2).sum()) / 2
    assert value.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(("student_shape", "teacher_shape"), [((2, 3, 8, 8), (2, 4, 4, 4)), ((2, 3, 2, 4), (2, 4, 4, 2))])
def test_nst_pools_the_larger_map(student_shape, teacher_shape):
    s, t = fixed(74, *student_shape), fixed(75, *teacher_shape)
    value, _ = run(make("nst"), {"s.a": s}, {"t.a": t}, build=False)
    assert value.item() == pytest.approx(ref_nst(s, t), rel=1e-10)


def test_nst_is_zero_for_the_same_channels_in_another_order_and_scale():
    t = fixed(76, 2, 4, 3, 3)
    s = 5.0 * t[:, [2, 0, 3, 1]]
    value, _ = run(make("nst"), {"s.a": s}, {"t.a": t}, build=False)
    assert value.item() == pytest.approx(0.0, abs=1e-12)


# -- vid ------------------------------------------------------------------------------------------


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def ref_vid(s: np.ndarray, t: np.ndarray, weights: list[np.ndarray], alpha: np.ndarray, eps: float) -> float:
    """Pool, then 1x1 conv -> ReLU -> 1x1 conv -> ReLU -> 1x1 conv, then the Gaussian NLL with loops."""
    s, t = np_pool_pair(s, t)
    hidden = np.maximum(np_conv1x1(weights[0], s), 0.0)
    hidden = np.maximum(np_conv1x1(weights[1], hidden), 0.0)
    mean = np_conv1x1(weights[2], hidden)
    variance = [softplus(a) + eps for a in alpha]
    n, c, h, w = t.shape
    total = 0.0
    for i in range(n):
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    total += 0.5 * (math.log(variance[k]) + (mean[i, k, y, x] - t[i, k, y, x]) ** 2 / variance[k])
    return total / (n * c * h * w)


def set_vid_adapter(adapter, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    convs = [m for m in adapter.regressor if isinstance(m, nn.Conv2d)]
    weights = [fixed(seed + i, conv.out_channels, conv.in_channels) * 0.5 for i, conv in enumerate(convs)]
    for conv, weight in zip(convs, weights):
        set_conv(conv, weight)
    alpha = fixed(seed + 9, adapter.alpha.shape[0]) * 0.5
    with torch.no_grad():
        adapter.alpha.copy_(torch.tensor(alpha))
    return weights, alpha


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((2, 3, 4, 4), (2, 5, 4, 4)), ((2, 3, 8, 8), (2, 5, 4, 4)), ((2, 3, 2, 2), (2, 5, 4, 4))],
)
def test_vid_matches_loops(student_shape, teacher_shape):
    s, t = fixed(80, *student_shape), fixed(81, *teacher_shape)
    term = make("vid", mid_channels=4)
    term.build(context({"s.a": s}, {"t.a": t}))
    term.double()  # adapters exist only after build(); the core moves the term afterwards
    weights, alpha = set_vid_adapter(term.adapters[0], 82)
    value, _ = run(term, {"s.a": s}, {"t.a": t}, build=False)
    assert value.item() == pytest.approx(ref_vid(s, t, weights, alpha, 1e-5), rel=1e-10)


def test_vid_architecture_and_initial_variance():
    term = make("vid", init_pred_var=3.0, eps=1e-3)
    term.build(context({"s.a": (2, 3, 4, 4)}, {"t.a": (2, 7, 4, 4)}))
    adapter = term.adapters[0]
    kinds = [type(m).__name__ for m in adapter.regressor]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    channels = [(m.in_channels, m.out_channels) for m in adapter.regressor if isinstance(m, nn.Conv2d)]
    assert channels == [(3, 7), (7, 7), (7, 7)]  # mid channels default to the teacher's
    assert all(m.bias is None and m.kernel_size == (1, 1) for m in adapter.regressor if isinstance(m, nn.Conv2d))
    assert [softplus(a) + 1e-3 for a in adapter.alpha.tolist()] == pytest.approx([3.0] * 7, rel=1e-6)
    term = make("vid", mid_channels=2)
    term.build(context({"s.a": (2, 3, 4, 4)}, {"t.a": (2, 7, 4, 4)}))
    assert [m.out_channels for m in term.adapters[0].regressor if isinstance(m, nn.Conv2d)] == [2, 2, 7]
    assert make("vid").init_pred_var == 5.0 and make("vid").eps == 1e-5


def test_vid_initial_variance_enters_the_value():
    # With a zero regressor the mean is 0, so the value is 0.5 * (log 5 + mean(t^2) / 5).
    t = fixed(83, 2, 3, 2, 2)
    term = make("vid")
    term.build(context({"s.a": (2, 4, 2, 2)}, {"t.a": t}))
    for module in term.adapters[0].regressor:
        if isinstance(module, nn.Conv2d):
            nn.init.zeros_(module.weight)
    value, _ = run(term, {"s.a": fixed(84, 2, 4, 2, 2)}, {"t.a": t}, build=False)
    assert value.item() == pytest.approx(0.5 * (math.log(5.0) + float((t**2).mean()) / 5.0), rel=1e-6)


def test_vid_params():
    with pytest.raises(ValidationError, match="larger than eps"):
        SPECS["vid"].params(layers=ONE, init_pred_var=1e-6, eps=1e-5)
    for bad in ({"mid_channels": 0}, {"init_pred_var": 0.0}, {"eps": 0.0}, {"init_pred_var": float("inf")}):
        with pytest.raises(ValidationError):
            SPECS["vid"].params(layers=ONE, **bad)


def test_vid_gradients_reach_regressor_and_variances():
    term = make("vid", layers=TWO)
    student = {"s.a": fixed(85, 3, 3, 4, 4), "s.b": fixed(86, 3, 2, 2, 2)}
    teacher = {"t.a": fixed(87, 3, 5, 4, 4), "t.b": fixed(88, 3, 4, 2, 2)}
    check_gradients(term, student, teacher)
    names = {name for name, _ in term.named_parameters()}
    assert {"adapters.0.alpha", "adapters.1.alpha", "adapters.0.regressor.0.weight", "adapters.1.regressor.4.weight"} <= names


# -- ofd ------------------------------------------------------------------------------------------


def integrated_margin(gamma: float, beta: float) -> float:
    """E[x | x < 0] for x ~ N(beta, gamma^2) by the trapezoid rule on a fine grid (no closed form)."""
    s = abs(gamma)
    x = np.linspace(min(beta - 14 * s, -1e-9), 0.0, 400_001)
    density = np.exp(-((x - beta) ** 2) / (2 * s * s))
    dx = x[1] - x[0]

    def trapezoid(y):
        return float((y[:-1] + y[1:]).sum() * dx / 2)

    return trapezoid(x * density) / trapezoid(density)


@pytest.mark.parametrize(("gamma", "beta"), [(1.0, 0.0), (2.0, -1.0), (0.5, 0.7), (-1.5, 0.3), (0.8, 2.0)])
def test_ofd_margin_is_the_mean_of_the_negative_part(gamma, beta):
    margin = channel_margin(gamma, beta)
    assert margin < 0
    assert margin == pytest.approx(integrated_margin(gamma, beta), rel=1e-6, abs=1e-9)


def test_ofd_margin_by_sampling_and_edge_cases():
    rng = np.random.default_rng(90)
    samples = rng.normal(0.4, 1.3, size=2_000_000)
    assert channel_margin(1.3, 0.4) == pytest.approx(float(samples[samples < 0].mean()), abs=5e-3)
    # The standard normal: E[x | x < 0] = -sqrt(2 / pi).
    assert channel_margin(1.0, 0.0) == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-12)
    # Almost never negative (Phi(-beta/gamma) <= 0.001): -3 |gamma| as in the authors' code.
    assert channel_margin(1.0, 4.0) == -3.0
    assert channel_margin(-2.0, 7.0) == -6.0
    # A constant output (gamma = 0): beta when negative, else 0.
    assert channel_margin(0.0, -0.5) == -0.5
    assert channel_margin(0.0, 0.5) == 0.0


def test_ofd_margins_are_read_from_the_teacher_batchnorm():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 0.7]))
    expected = [integrated_margin(g, b) for g, b in ((1.0, 0.0), (2.0, -1.0), (-0.5, 0.7))]
    assert margins_from_batchnorm(bn).tolist() == pytest.approx(expected, rel=1e-6)
    plain = nn.BatchNorm2d(2, affine=False)
    assert margins_from_batchnorm(plain).tolist() == pytest.approx([-math.sqrt(2 / math.pi)] * 2, rel=1e-6)
    term = make("ofd")
    term.build(context({"s.a": (2, 4, 3, 3)}, {"t.a": (2, 3, 3, 3)}, {"t.a": bn}))
    assert term.adapters[0].margin.shape == (1, 3, 1, 1)
    assert term.adapters[0].margin.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    assert "margin" in dict(term.adapters[0].named_buffers())
    assert len(list(term.parameters())) == 3  # connector conv weight, BN weight and bias; margins are buffers


def ref_ofd(s, t, weight, margins, bn_weight, bn_bias, eps=1e-5) -> float:
    """Pool, conv1x1 (no bias), BatchNorm with batch statistics, margin max, partial L2 / N, with loops."""
    s, t = np_pool_pair(s, t)
    conv = np_conv1x1(weight, s)
    n, c, h, w = conv.shape
    total = 0.0
    for k in range(c):
        values = conv[:, k].ravel()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)  # biased, as BatchNorm normalises
        for i in range(n):
            for y in range(h):
                for x in range(w):
                    source = (conv[i, k, y, x] - mean) / math.sqrt(var + eps) * bn_weight[k] + bn_bias[k]
                    target = max(t[i, k, y, x], margins[k])
                    if source > target or target > 0:
                        total += (source - target) ** 2
    return total / n


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((3, 4, 3, 3), (3, 5, 3, 3)), ((2, 4, 4, 4), (2, 5, 2, 2)), ((2, 4, 2, 2), (2, 5, 4, 4))],
)
def test_ofd_matches_loops(student_shape, teacher_shape):
    s, t = fixed(91, *student_shape), fixed(92, *teacher_shape)
    teacher_bn = nn.BatchNorm2d(5)
    gammas, betas = fixed(93, 5) * 0.5, fixed(94, 5) * 0.5
    with torch.no_grad():
        teacher_bn.weight.copy_(torch.tensor(gammas))
        teacher_bn.bias.copy_(torch.tensor(betas))
    margins = [integrated_margin(g, b) for g, b in zip(gammas, betas)]
    term = make("ofd")
    term.build(context({"s.a": s}, {"t.a": t}, {"t.a": teacher_bn}))
    term.double()  # adapters exist only after build(); the core moves the term afterwards
    conv, bn = term.adapters[0].connector
    weight, bn_weight, bn_bias = fixed(95, 5, 4) * 0.5, fixed(96, 5), fixed(97, 5)
    set_conv(conv, weight)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(bn_weight))
        bn.bias.copy_(torch.tensor(bn_bias))
    value, _ = run(term, {"s.a": s}, {"t.a": t}, build=False)
    assert value.item() == pytest.approx(ref_ofd(s, t, weight, margins, bn_weight, bn_bias), rel=1e-6)


def test_ofd_partial_l2_hand_checked():
    # One channel, margin -1 (set directly); positions: teacher 2 / student 1 -> (1-2)^2 = 1;
    # teacher -3 (target -1) / student -2 -> skipped (student below target); teacher -3 / student 0.5
    # -> (0.5+1)^2 = 2.25; teacher -0.5 (target -0.5) / student -0.25 -> 0.0625. Sum 3.3125, N = 1.
    term = make("ofd")
    term.build(context({"s.a": (1, 1, 2, 2)}, {"t.a": (1, 1, 2, 2)}, {"t.a": nn.BatchNorm2d(1)}))
    adapter = term.adapters[0]
    # Isolate the partial L2 from the connector: an identity 1x1 convolution and no BatchNorm.
    adapter.connector = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Identity())
    set_conv(adapter.connector[0], np.ones((1, 1)))
    adapter.margin.fill_(-1.0)
    student = torch.tensor([[[[1.0, -2.0], [0.5, -0.25]]]], requires_grad=True)
    teacher = torch.tensor([[[[2.0, -3.0], [-3.0, -0.5]]]])
    value = term(outputs({"s.a": student}, {"t.a": teacher}))
    assert value.item() == pytest.approx(3.3125, rel=1e-6)
    value.backward()
    assert student.grad.flatten().tolist() == pytest.approx([-2.0, 0.0, 3.0, 0.5])


def test_ofd_batch_normalisation_by_n():
    # The same samples twice: the sum doubles and so does N, so the value is unchanged.
    s, t = fixed(98, 2, 3, 3, 3), fixed(99, 2, 4, 3, 3)
    term = make("ofd")
    term.build(context({"s.a": s}, {"t.a": t}, {"t.a": nn.BatchNorm2d(4)}))
    once, _ = run(term, {"s.a": s}, {"t.a": t}, build=False)
    twice, _ = run(term, {"s.a": np.concatenate([s, s])}, {"t.a": np.concatenate([t, t])}, build=False)
    assert twice.item() == pytest.approx(once.item(), rel=1e-10)


def test_ofd_connector_initialisation():
    torch.manual_seed(4)
    term = make("ofd")
    term.build(context({"s.a": (2, 64, 3, 3)}, {"t.a": (2, 128, 3, 3)}, {"t.a": nn.BatchNorm2d(128)}))
    conv, bn = term.adapters[0].connector
    assert isinstance(conv, nn.Conv2d) and conv.bias is None and conv.kernel_size == (1, 1)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 128
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / 128), rel=0.05)
    assert bn.weight.tolist() == [1.0] * 128 and bn.bias.tolist() == [0.0] * 128


def test_ofd_teacher_layer_must_be_a_batchnorm():
    shapes = ({"s.a": (2, 3, 4, 4)}, {"t.a": (2, 5, 4, 4)})
    block = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU())
    with pytest.raises(LayerError, match=r"'t.a'.*BatchNorm2d.*Sequential.*\(2, 5, 4, 4\).*features.<i>.1"):
        make("ofd").build(context(*shapes, {"t.a": block}))
    with pytest.raises(LayerError, match="ReLU"):
        make("ofd").build(context(*shapes, {"t.a": nn.ReLU()}))
    with pytest.raises(LayerError, match="BatchNorm2d"):
        make("ofd").build(context(*shapes, {"t.a": nn.BatchNorm1d(5)}))
    with pytest.raises(LayerError, match="has 4 channels"):
        make("ofd").build(context(*shapes, {"t.a": nn.BatchNorm2d(4)}))
    with pytest.raises(LayerError, match="teacher_modules"):
        make("ofd").build(context(*shapes))
    make("ofd").build(context(*shapes, {"t.a": block[1]}))
