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
from kdframe import ComponentError, LayerError, LossTerm, ModelOutputs, StepOutputs
from kdframe.losses import BuildContext
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


def test_plugin_registers_every_family():
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_losses", kdframe_losses)])
    families = {c.name: c.spec.family for c in plugins.registry.iter("loss")}
    assert families["cross_entropy"] == "label" and families["hinton_kd"] == "response"
    assert families["fitnet"] == "feature" and families["rkd_distance"] == "relation"
    assert len(families) == 18


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
# The fitnet tests live in tests/plugins/test_losses_feature.py with the other feature terms.


# -- rkd_distance ---------------------------------------------------------------------------------


def test_rkd_distance_on_logits_matches_pair_loops():
    student, teacher = fixed(40, 6, 5), fixed(41, 6, 9)  # embedding sizes may differ
    term = make("rkd_distance")
    assert term.needs_teacher is True
    assert tuple(term.student_layers) == ("logits",) and tuple(term.teacher_layers) == ("logits",)
    value = term(step(leaf(student), teachers=[(leaf(teacher, False), None)]))
    assert value.item() == pytest.approx(ref_rkd(student, teacher), rel=1e-9)


def test_rkd_distance_on_layers_flattens_each_sample():
    student, teacher = fixed(42, 5, 2, 3, 3), fixed(43, 5, 4, 2, 2)
    term = make("rkd_distance", layers=[{"student": "body.2", "teacher": "body.5"}])
    assert tuple(term.student_layers) == ("body.2",) and tuple(term.teacher_layers) == ("body.5",)
    term.build(BuildContext({"body.2": torch.Size(student.shape)}, {"body.5": torch.Size(teacher.shape)}))
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
        make("rkd_distance", layers=[{"student": "x", "teacher": "logits"}]).build(BuildContext({}, {}))


# -- the contract every registered loss meets -----------------------------------------------------


def test_every_suggested_weight_names_the_code_or_paper_it_comes_from():
    from kdframe.json_schema import first_party_registry

    specs = {component.name: component.spec for component in first_party_registry().iter("loss")}
    for name, spec in specs.items():
        assert len(spec.weight_source) > 20, f"{name}: weight_source must say where its weight comes from"
    # Values checked against the authors' code (issue 11).
    assert specs["dist"].weight == 2.0  # DIST's kd_loss_weight 2
    assert specs["cc"].weight == 100.0  # Knowledge-Distillation-Zoo's CC, the formula implemented
    assert specs["ft"].weight == 500.0  # the FT authors' --beta with their normalisation
    assert specs["at"].weight == 1000.0 and "1000 * P" in specs["at"].weight_source
