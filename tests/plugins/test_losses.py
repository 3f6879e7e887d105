"""Tests of the first-party loss plugin ``kdframe_losses``.

Every term is compared with an independent, straightforward computation (NumPy or plain Python loops
in float64), never with the torch functions the term itself calls.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import kdframe_losses
from kdframe import ComponentError, LayerError, LossSpec, LossTerm, ModelOutputs, StepOutputs
from kdframe.plugins import create_plugins

# -- helpers --------------------------------------------------------------------------------------


def registry():
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_losses", kdframe_losses)])
    return plugins.registry


SPECS = {component.name: component.spec for component in registry().iter("loss")}


def make(name: str, **params) -> LossTerm:
    spec = SPECS[name]
    return spec.factory(spec.params(**params))


def step(student_logits, teachers=(), labels=None, student_features=None, epoch=0) -> StepOutputs:
    """StepOutputs from a student (logits, features) and teachers given as (logits, features) pairs."""
    if labels is None:
        labels = torch.zeros(student_logits.shape[0], dtype=torch.long)
    return StepOutputs(
        student=ModelOutputs(student_logits, dict(student_features or {})),
        teachers=[ModelOutputs(logits, dict(features or {})) for logits, features in teachers],
        labels=labels,
        epoch=epoch,
    )


def leaf(array, requires_grad=True, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=dtype, requires_grad=requires_grad)


def fixed(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * 2.0


def np_softmax_row(row, temperature=1.0):
    scaled = [value / temperature for value in row]
    top = max(scaled)
    exps = [math.exp(value - top) for value in scaled]
    total = sum(exps)
    return [value / total for value in exps]


def ref_kl(student, teacher, temperature) -> float:
    """Batch mean of KL(softmax(t/T) || softmax(s/T)) with explicit loops."""
    total = 0.0
    for s_row, t_row in zip(np.asarray(student).tolist(), np.asarray(teacher).tolist()):
        p_s = np_softmax_row(s_row, temperature)
        p_t = np_softmax_row(t_row, temperature)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return total / len(student)


def ref_rkd(student, teacher) -> float:
    """RKD distance-wise loss with explicit pair loops."""

    def normalised(embeddings):
        rows = [np.asarray(e, dtype=np.float64).ravel().tolist() for e in embeddings]
        n = len(rows)
        pairs = {}
        for i in range(n):
            for j in range(i + 1, n):
                pairs[i, j] = math.sqrt(sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])))
        mean = sum(pairs.values()) / len(pairs)
        return {key: value / mean for key, value in pairs.items()}

    psi_s, psi_t = normalised(student), normalised(teacher)
    total = 0.0
    for key in psi_s:
        diff = abs(psi_s[key] - psi_t[key])
        total += 0.5 * diff**2 if diff < 1.0 else diff - 0.5
    return total / len(psi_s)


def np_avg_pool(maps: np.ndarray, factor_h: int, factor_w: int) -> np.ndarray:
    n, c, h, w = maps.shape
    return maps.reshape(n, c, h // factor_h, factor_h, w // factor_w, factor_w).mean(axis=(3, 5))


# -- registration ---------------------------------------------------------------------------------


def test_plugin_registers_the_four_losses_with_their_families():
    assert {name: spec.family for name, spec in SPECS.items()} == {
        "cross_entropy": "label",
        "hinton_kd": "response",
        "fitnet": "feature",
        "rkd_distance": "relation",
    }


def test_plugin_is_found_through_its_entry_point():
    plugins = create_plugins(load_entry_points=True)
    assert plugins.registry.get("loss", "hinton_kd").provider.plugin == "kdframe_losses"


# -- cross_entropy --------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_cross_entropy_matches_hand_computation(smoothing):
    logits = fixed(0, 4, 5)
    labels = [0, 3, 4, 3]
    expected = 0.0
    for row, label in zip(logits.tolist(), labels):
        probs = np_softmax_row(row)
        nll = -math.log(probs[label])
        uniform = -sum(math.log(p) for p in probs) / len(probs)
        expected += (1 - smoothing) * nll + smoothing * uniform
    expected /= len(labels)
    term = make("cross_entropy", label_smoothing=smoothing)
    assert term.needs_teacher is False
    assert tuple(term.student_layers) == () and tuple(term.teacher_layers) == ()
    value = term(step(leaf(logits), labels=torch.tensor(labels)))
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_cross_entropy_hand_checked_value_and_batch_of_one():
    # softmax([0, ln 3]) = [1/4, 3/4] -> CE with label 1 is ln(4/3).
    logits = leaf([[0.0, math.log(3.0)]])
    value = make("cross_entropy")(step(logits, labels=torch.tensor([1])))
    assert value.item() == pytest.approx(math.log(4.0 / 3.0), rel=1e-12)
    value.backward()
    # d CE / d logits = softmax - onehot = [1/4, -1/4]
    assert logits.grad[0].tolist() == pytest.approx([0.25, -0.25])


def test_cross_entropy_rejects_bad_smoothing():
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValidationError):
            SPECS["cross_entropy"].params(label_smoothing=bad)


# -- hinton_kd ------------------------------------------------------------------------------------


def test_hinton_kd_hand_checked_example():
    # s = [1, 0], t = [0, 1], T = 2: p_t = [q, 1-q], p_s = [1-q, q] with q = 1/(1+e^0.5), so
    # KL = (1-2q) * ln((1-q)/q) = tanh(0.25) * 0.5 and the term is T^2 * KL = 2 tanh(0.25) = 0.4898...
    term = make("hinton_kd", temperature=2.0)
    value = term(step(leaf([[1.0, 0.0]]), teachers=[(leaf([[0.0, 1.0]], requires_grad=False), None)]))
    assert value.item() == pytest.approx(2.0 * math.tanh(0.25), rel=1e-12)
    assert value.item() == pytest.approx(0.489837, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5, 4.0, 20.0])
def test_hinton_kd_matches_loops(temperature):
    student, teacher = fixed(1, 6, 10), fixed(2, 6, 10)
    term = make("hinton_kd", temperature=temperature)
    value = term(step(leaf(student), teachers=[(leaf(teacher, False), None)]))
    assert value.item() == pytest.approx(temperature**2 * ref_kl(student, teacher, temperature), rel=1e-9)


def test_hinton_kd_default_temperature_is_4_and_scales_by_t_squared():
    student, teacher = fixed(3, 5, 7), fixed(4, 5, 7)
    term = make("hinton_kd")
    assert term.temperature == 4.0
    value = term(step(leaf(student), teachers=[(leaf(teacher, False), None)])).item()
    kl_at_4 = ref_kl(student, teacher, 4.0)
    assert value == pytest.approx(16.0 * kl_at_4, rel=1e-9)
    assert value / 16.0 == pytest.approx(kl_at_4, rel=1e-9)


def test_hinton_kd_averages_several_teachers():
    student = fixed(5, 4, 6)
    teachers = [fixed(6, 4, 6), fixed(7, 4, 6), fixed(8, 4, 6)]
    term = make("hinton_kd", temperature=3.0)
    both = term(step(leaf(student), teachers=[(leaf(t, False), None) for t in teachers])).item()
    expected = sum(9.0 * ref_kl(student, t, 3.0) for t in teachers) / len(teachers)
    assert both == pytest.approx(expected, rel=1e-9)
    singles = [term(step(leaf(student), teachers=[(leaf(t, False), None)])).item() for t in teachers]
    assert both == pytest.approx(sum(singles) / 3, rel=1e-12)


def test_hinton_kd_is_zero_for_identical_logits():
    logits = fixed(9, 3, 5)
    student = leaf(logits)
    value = make("hinton_kd")(step(student, teachers=[(leaf(logits, False), None)]))
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    value.backward()
    assert torch.allclose(student.grad, torch.zeros_like(student.grad), atol=1e-12)


def test_hinton_kd_gradients_reach_the_student_only():
    student = leaf(fixed(10, 4, 5))
    teacher = leaf(fixed(11, 4, 5), requires_grad=True)  # a teacher that accidentally tracks grads
    value = make("hinton_kd", temperature=2.0)(step(student, teachers=[(teacher, None)]))
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_hinton_kd_batch_of_one_and_float32():
    student, teacher = fixed(12, 1, 4), fixed(13, 1, 4)
    value = make("hinton_kd", temperature=2.0)(
        step(leaf(student, dtype=torch.float32), teachers=[(leaf(teacher, False, torch.float32), None)])
    )
    assert value.dim() == 0
    assert value.item() == pytest.approx(4.0 * ref_kl(student, teacher, 2.0), rel=1e-5)


def test_hinton_kd_computes_half_precision_inputs_in_float32():
    student, teacher = fixed(14, 3, 5), fixed(15, 3, 5)
    s16 = leaf(student, dtype=torch.bfloat16)
    value = make("hinton_kd", temperature=2.0)(step(s16, teachers=[(leaf(teacher, False, torch.bfloat16), None)]))
    assert value.dtype == torch.float32
    rounded = [t.to(torch.bfloat16).double().numpy() for t in (torch.tensor(student), torch.tensor(teacher))]
    assert value.item() == pytest.approx(4.0 * ref_kl(*rounded, 2.0), rel=1e-5)
    value.backward()
    assert s16.grad.dtype == torch.bfloat16 and s16.grad.abs().sum() > 0


def test_hinton_kd_errors():
    term = make("hinton_kd")
    with pytest.raises(ComponentError, match="needs a teacher"):
        term(step(leaf(fixed(0, 2, 3))))
    with pytest.raises(ComponentError, match=r"\(2, 4\).*\(2, 3\)"):
        term(step(leaf(fixed(0, 2, 3)), teachers=[(leaf(fixed(1, 2, 4), False), None)]))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValidationError):
            SPECS["hinton_kd"].params(temperature=bad)


# -- fitnet ---------------------------------------------------------------------------------------


def fitnet_step(student_feature, teacher_feature, n=None):
    n = student_feature.shape[0] if n is None else n
    return step(
        leaf(np.zeros((n, 3))),
        teachers=[(leaf(np.zeros((n, 3)), False), {"t.hint": teacher_feature})],
        student_features={"s.guided": student_feature},
    )


def fitnet(regressor="conv1x1") -> LossTerm:
    return make("fitnet", student_layer="s.guided", teacher_layer="t.hint", regressor=regressor)


def test_fitnet_declares_its_layers():
    term = fitnet()
    assert term.needs_teacher is True
    assert tuple(term.student_layers) == ("s.guided",)
    assert tuple(term.teacher_layers) == ("t.hint",)
    assert SPECS["fitnet"].params(student_layer="a", teacher_layer="b").regressor == "conv1x1"
    with pytest.raises(ValidationError):
        SPECS["fitnet"].params(student_layer="a")
    with pytest.raises(ValidationError):
        SPECS["fitnet"].params(student_layer="a", teacher_layer="b", regressor="conv5x5")


@pytest.mark.parametrize("shape", [(3, 4, 5, 5), (3, 7), (1, 2, 3, 3), (1, 6)])
def test_fitnet_without_regressor_is_the_elementwise_mean_squared_error(shape):
    s, t = fixed(20, *shape), fixed(21, *shape)
    term = fitnet("none")
    term.build({"s.guided": torch.Size(shape)}, {"t.hint": torch.Size(shape)})
    assert list(term.parameters()) == []
    value = term(fitnet_step(leaf(s), leaf(t, False)))
    assert value.item() == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-12)


def test_fitnet_none_works_without_build():
    s, t = fixed(22, 2, 3), fixed(23, 2, 3)
    value = fitnet("none")(fitnet_step(leaf(s), leaf(t, False)))
    assert value.item() == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-12)


@pytest.mark.parametrize("regressor", ["conv1x1", "linear"])
def test_fitnet_1x1_regressor_maps_channels(regressor):
    s, t = fixed(24, 2, 3, 4, 4), fixed(25, 2, 5, 4, 4)
    term = fitnet(regressor)
    term.build({"s.guided": torch.Size(s.shape)}, {"t.hint": torch.Size(t.shape)})
    term.double()  # adapters exist only after build(); the core moves the term afterwards
    conv = term.regressor
    assert isinstance(conv, torch.nn.Conv2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (3, 5, (1, 1))
    weight, bias = fixed(26, 5, 3), fixed(27, 5)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight).view(5, 3, 1, 1))
        conv.bias.copy_(torch.tensor(bias))
    regressed = np.einsum("oc,nchw->nohw", weight, s) + bias[None, :, None, None]
    value = term(fitnet_step(leaf(s), leaf(t, False)))
    assert value.item() == pytest.approx(float(((regressed - t) ** 2).mean()), rel=1e-10)


def test_fitnet_conv3x3_keeps_spatial_size_and_linear_on_vectors():
    term = fitnet("conv3x3")
    term.build({"s.guided": torch.Size([2, 3, 6, 6])}, {"t.hint": torch.Size([2, 8, 6, 6])})
    assert term.regressor.kernel_size == (3, 3) and term.regressor.out_channels == 8
    value = term(fitnet_step(torch.randn(2, 3, 6, 6, requires_grad=True), torch.randn(2, 8, 6, 6)))
    assert value.dim() == 0 and torch.isfinite(value)

    s, t = fixed(28, 4, 6), fixed(29, 4, 3)
    term = fitnet("conv1x1")
    term.build({"s.guided": torch.Size(s.shape)}, {"t.hint": torch.Size(t.shape)})
    term.double()
    linear = term.regressor
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (6, 3)
    weight, bias = fixed(30, 3, 6), fixed(31, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))
    expected = float(((s @ weight.T + bias - t) ** 2).mean())
    assert term(fitnet_step(leaf(s), leaf(t, False))).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "pool_student", "pool_teacher"),
    [
        ((2, 3, 8, 8), (2, 3, 4, 4), (2, 2), (1, 1)),  # the student's map is larger: pool it
        ((2, 3, 2, 2), (2, 3, 6, 6), (1, 1), (3, 3)),  # the teacher's map is larger: pool it
        ((2, 3, 8, 2), (2, 3, 4, 4), (2, 1), (1, 2)),  # each larger in one direction
    ],
)
def test_fitnet_pools_the_larger_map_to_the_smaller_size(student_shape, teacher_shape, pool_student, pool_teacher):
    s, t = fixed(32, *student_shape), fixed(33, *teacher_shape)
    term = fitnet("none")
    term.build({"s.guided": torch.Size(student_shape)}, {"t.hint": torch.Size(teacher_shape)})
    expected = float(((np_avg_pool(s, *pool_student) - np_avg_pool(t, *pool_teacher)) ** 2).mean())
    value = term(fitnet_step(leaf(s), leaf(t, False)))
    assert value.item() == pytest.approx(expected, rel=1e-10)


def test_fitnet_pooling_with_a_regressor():
    s, t = fixed(34, 2, 3, 8, 8), fixed(35, 2, 4, 4, 4)
    term = fitnet("conv1x1")
    term.build({"s.guided": torch.Size(s.shape)}, {"t.hint": torch.Size(t.shape)})
    term.double()
    weight = fixed(36, 4, 3)
    with torch.no_grad():
        term.regressor.weight.copy_(torch.tensor(weight).view(4, 3, 1, 1))
        term.regressor.bias.zero_()
    regressed = np_avg_pool(np.einsum("oc,nchw->nohw", weight, s), 2, 2)
    value = term(fitnet_step(leaf(s), leaf(t, False)))
    assert value.item() == pytest.approx(float(((regressed - t) ** 2).mean()), rel=1e-10)


def test_fitnet_gradients_reach_student_and_regressor_but_not_teacher():
    student = torch.randn(4, 3, 5, 5, requires_grad=True)
    teacher = torch.randn(4, 6, 5, 5, requires_grad=True)  # accidentally tracking grads
    term = fitnet("conv3x3")
    term.build({"s.guided": student.shape}, {"t.hint": teacher.shape})
    params = list(term.parameters())
    assert len(params) == 2  # conv weight and bias, optimised with the student
    term(fitnet_step(student, teacher)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    assert teacher.grad is None


def test_fitnet_rank_mismatch_is_a_layer_error_naming_layers_and_shapes():
    term = fitnet()
    with pytest.raises(LayerError) as error:
        term.build({"s.guided": torch.Size([8, 16, 4, 4])}, {"t.hint": torch.Size([8, 10])})
    message = str(error.value)
    for text in ("s.guided", "t.hint", "(8, 16, 4, 4)", "(8, 10)", "4-D vs 2-D"):
        assert text in message


def test_fitnet_other_build_errors():
    with pytest.raises(LayerError, match=r"channels \(3 vs 5\)"):
        fitnet("none").build({"s.guided": torch.Size([2, 3, 4, 4])}, {"t.hint": torch.Size([2, 5, 4, 4])})
    with pytest.raises(LayerError, match=r"\(2, 3\).*\(2, 5\)"):
        fitnet("none").build({"s.guided": torch.Size([2, 3])}, {"t.hint": torch.Size([2, 5])})
    with pytest.raises(LayerError, match="'s.guided' was not reported.*layers seen: other"):
        fitnet().build({"other": torch.Size([2, 3])}, {"t.hint": torch.Size([2, 5])})
    with pytest.raises(LayerError, match="feature maps"):
        fitnet().build({"s.guided": torch.Size([2, 3, 4])}, {"t.hint": torch.Size([2, 5, 4])})
    # Equal shapes of another rank are fine without a regressor.
    fitnet("none").build({"s.guided": torch.Size([2, 3, 4])}, {"t.hint": torch.Size([2, 3, 4])})


def test_fitnet_forward_before_build_is_a_clear_error():
    with pytest.raises(ComponentError, match="before build"):
        fitnet("conv1x1")(fitnet_step(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)))


def test_fitnet_missing_feature_at_forward_is_a_layer_error():
    term = fitnet("none")
    outputs = step(torch.zeros(2, 3), teachers=[(torch.zeros(2, 3), {})], student_features={"s.guided": torch.zeros(2, 3)})
    with pytest.raises(LayerError, match="'t.hint' is missing"):
        term(outputs)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (1, 5)])
def test_fitnet_batch_of_one(shape):
    student = torch.randn(*shape, requires_grad=True)
    teacher_shape = (1, 2, 2, 2) if len(shape) == 4 else (1, 2)
    term = fitnet()
    term.build({"s.guided": torch.Size(shape)}, {"t.hint": torch.Size(teacher_shape)})
    value = term(fitnet_step(student, torch.randn(*teacher_shape)))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert student.grad.abs().sum() > 0


# -- rkd_distance ---------------------------------------------------------------------------------


def test_rkd_distance_on_logits_matches_pair_loops():
    student, teacher = fixed(40, 6, 5), fixed(41, 6, 9)  # embedding sizes may differ
    term = make("rkd_distance")
    assert term.needs_teacher is True
    assert tuple(term.student_layers) == () and tuple(term.teacher_layers) == ()
    value = term(step(leaf(student), teachers=[(leaf(teacher, False), None)]))
    assert value.item() == pytest.approx(ref_rkd(student, teacher), rel=1e-9)


def test_rkd_distance_on_layers_flattens_each_sample():
    student, teacher = fixed(42, 5, 2, 3, 3), fixed(43, 5, 4, 2, 2)
    term = make("rkd_distance", student_layer="body.2", teacher_layer="body.5")
    assert tuple(term.student_layers) == ("body.2",) and tuple(term.teacher_layers) == ("body.5",)
    term.build({"body.2": torch.Size(student.shape)}, {"body.5": torch.Size(teacher.shape)})
    outputs = step(
        torch.zeros(5, 3),
        teachers=[(torch.zeros(5, 3), {"body.5": leaf(teacher, False)})],
        student_features={"body.2": leaf(student)},
    )
    assert term(outputs).item() == pytest.approx(ref_rkd(student, teacher), rel=1e-9)


def test_rkd_distance_uses_the_huber_linear_branch():
    # Large distance differences exercise |x| - 0.5 as well as 0.5 x^2.
    student = np.array([[0.0], [1.0], [2.0], [100.0]])
    teacher = np.array([[0.0], [50.0], [51.0], [52.0]])
    value = make("rkd_distance")(step(leaf(student), teachers=[(leaf(teacher, False), None)]))
    assert value.item() == pytest.approx(ref_rkd(student, teacher), rel=1e-9)


def test_rkd_distance_is_scale_invariant_and_zero_for_the_same_structure():
    embeddings = fixed(44, 5, 4)
    term = make("rkd_distance")
    value = term(step(leaf(embeddings * 3.0), teachers=[(leaf(embeddings * 10.0, False), None)]))
    assert value.item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_distance_gradients_reach_the_student_only():
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(6, 8, requires_grad=True)
    make("rkd_distance")(step(student, teachers=[(teacher, None)])).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert torch.isfinite(student.grad).all()
    assert teacher.grad is None


def test_rkd_distance_batch_of_one_is_a_zero_that_keeps_the_graph():
    student = torch.randn(1, 4, requires_grad=True)
    value = make("rkd_distance")(step(student, teachers=[(torch.randn(1, 7), None)]))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_rkd_distance_batch_of_two_is_always_zero():
    value = make("rkd_distance")(step(torch.randn(2, 4, requires_grad=True), teachers=[(torch.randn(2, 7), None)]))
    assert value.item() == pytest.approx(0.0, abs=1e-6)


def test_rkd_distance_errors():
    term = make("rkd_distance")
    with pytest.raises(ComponentError, match="same batch size"):
        term(step(torch.randn(3, 4), teachers=[(torch.randn(4, 4), None)]))
    with pytest.raises(ComponentError, match="needs a teacher"):
        term(step(torch.randn(3, 4)))
    with pytest.raises(LayerError, match="'x' was not reported"):
        make("rkd_distance", student_layer="x").build({}, {})


# -- the contract every registered loss meets -----------------------------------------------------

#: Params a spec needs beyond its defaults (layer names are given so that build() can be driven).
REQUIRED = {"fitnet": {"student_layer": "student.layer", "teacher_layer": "teacher.layer"}}

#: (student feature shape, teacher feature shape, logits shape) per case.
SHAPE_CASES = {
    "maps": ((4, 3, 6, 6), (4, 5, 3, 3), (4, 10)),
    "vectors": ((3, 7), (3, 4), (3, 6)),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_contract(name):
    spec = SPECS[name]
    assert isinstance(spec, LossSpec)
    assert spec.family in {"label", "response", "feature", "relation"}
    assert spec.summary and "\n" not in spec.summary
    assert spec.factory.__doc__ and spec.params.__doc__
    for field_name, field in spec.params.model_fields.items():
        assert field.description and field.description.strip(), f"{name}.{field_name} is undescribed"
    required = REQUIRED.get(name, {})
    with pytest.raises(ValidationError):
        spec.params(**required, not_a_param=1)
    params = spec.params(**required)
    with pytest.raises(ValidationError):  # params are immutable
        setattr(params, next(iter(spec.params.model_fields)), None)
    term = spec.factory(params)
    assert isinstance(term, LossTerm) and isinstance(term.needs_teacher, bool)
    assert all(isinstance(layer, str) and layer for layer in (*term.student_layers, *term.teacher_layers))
    if term.needs_teacher:
        with pytest.raises(ComponentError):
            term(step(torch.randn(2, 3)))


@pytest.mark.parametrize("case", sorted(SHAPE_CASES))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_default_build_gives_a_finite_scalar_with_gradients(name, case):
    torch.manual_seed(0)
    spec = SPECS[name]
    term = spec.factory(spec.params(**REQUIRED.get(name, {})))
    student_shape, teacher_shape, logits_shape = SHAPE_CASES[case]
    n = logits_shape[0]
    student_features = {layer: torch.randn(*student_shape, requires_grad=True) for layer in term.student_layers}
    teacher_features = {layer: torch.randn(*teacher_shape, requires_grad=True) for layer in term.teacher_layers}
    student_logits = torch.randn(*logits_shape, requires_grad=True)
    teacher_logits = torch.randn(*logits_shape, requires_grad=True)
    term.build(
        {layer: value.shape for layer, value in student_features.items()},
        {layer: value.shape for layer, value in teacher_features.items()},
    )
    outputs = StepOutputs(
        student=ModelOutputs(student_logits, student_features),
        teachers=[ModelOutputs(teacher_logits, teacher_features)],
        labels=torch.randint(0, logits_shape[1], (n,)),
    )
    value = term(outputs)
    assert isinstance(value, torch.Tensor) and value.dim() == 0
    assert torch.isfinite(value)
    value.backward()
    student_grads = [t.grad for t in (student_logits, *student_features.values()) if t.grad is not None]
    assert student_grads and any(g.abs().sum() > 0 for g in student_grads)
    assert all(torch.isfinite(g).all() for g in student_grads)
    assert all(p.grad is not None for p in term.parameters())
    assert teacher_logits.grad is None
    assert all(t.grad is None for t in teacher_features.values())
