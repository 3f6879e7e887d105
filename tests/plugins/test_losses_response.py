"""Tests of the response-based terms of ``kdframe_losses.response``: hinton_kd, dkd, dist and
logit_standard_kd.

Values are compared with independent, straightforward computations (plain Python loops or NumPy in
float64), never with the torch functions the terms call.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import kdframe_losses
from kdframe import ComponentError, LossSpec, LossTerm, ModelOutputs, StepOutputs
from kdframe.plugins import create_plugins

RESPONSE = ("hinton_kd", "dkd", "dist", "logit_standard_kd")
#: The name of each term's (schedulable) temperature param.
TEMPERATURE = {"hinton_kd": "temperature", "dkd": "temperature", "dist": "tau", "logit_standard_kd": "temperature"}


def registry():
    plugins = create_plugins(load_entry_points=False, plugins=[("kdframe_losses", kdframe_losses)])
    return plugins.registry


SPECS = {component.name: component.spec for component in registry().iter("loss")}


def make(name: str, **params) -> LossTerm:
    spec = SPECS[name]
    return spec.factory(spec.params(**params))


def leaf(array, requires_grad=True, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(np.asarray(array), dtype=dtype, requires_grad=requires_grad)


def fixed(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * 2.0


def labels_for(seed: int, n: int, k: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, k, size=n).tolist()


def step(student, teachers=(), labels=None, epoch=0, epochs=1) -> StepOutputs:
    if labels is None:
        labels = [0] * student.shape[0]
    return StepOutputs(
        student=ModelOutputs(student),
        teachers=[ModelOutputs(teacher) for teacher in teachers],
        labels=torch.as_tensor(labels, dtype=torch.long),
        epoch=epoch,
        epochs=epochs,
    )


# -- independent references (float64, loops) --------------------------------------------------------


def softmax(row, temperature=1.0):
    scaled = [value / temperature for value in row]
    top = max(scaled)
    exps = [math.exp(value - top) for value in scaled]
    total = sum(exps)
    return [value / total for value in exps]


def kl(p, q) -> float:
    """KL(p || q) of two discrete distributions."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def ref_hinton(student, teacher, temperature) -> float:
    rows = zip(np.asarray(student).tolist(), np.asarray(teacher).tolist())
    values = [kl(softmax(t, temperature), softmax(s, temperature)) for s, t in rows]
    return temperature**2 * sum(values) / len(values)


def ref_dkd(student, teacher, labels, alpha, beta, temperature) -> float:
    """TCKD and NCKD as the paper defines them: the non-target classes are left out exactly."""
    tckd = nckd = 0.0
    for s, t, y in zip(np.asarray(student).tolist(), np.asarray(teacher).tolist(), labels):
        p_s, p_t = softmax(s, temperature), softmax(t, temperature)
        rest_s = sum(value for k, value in enumerate(p_s) if k != y)  # 1 - p_s[y] without cancellation
        rest_t = sum(value for k, value in enumerate(p_t) if k != y)
        tckd += kl([p_t[y], rest_t], [p_s[y], rest_s])
        others_s = [value for k, value in enumerate(s) if k != y]
        others_t = [value for k, value in enumerate(t) if k != y]
        nckd += kl(softmax(others_t, temperature), softmax(others_s, temperature))
    n = len(labels)
    return temperature**2 * (alpha * tckd / n + beta * nckd / n)


def pearson(a, b, eps=1e-8) -> float:
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    da = [x - mean_a for x in a]
    db = [x - mean_b for x in b]
    num = sum(x * y for x, y in zip(da, db))
    return num / (math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(y * y for y in db)) + eps)


def ref_dist(student, teacher, beta, gamma, tau) -> float:
    y_s = [softmax(row, tau) for row in np.asarray(student).tolist()]
    y_t = [softmax(row, tau) for row in np.asarray(teacher).tolist()]
    n, k = len(y_s), len(y_s[0])
    inter = 1.0 - sum(pearson(y_s[i], y_t[i]) for i in range(n)) / n
    if n > 1:
        columns = [([y_s[i][c] for i in range(n)], [y_t[i][c] for i in range(n)]) for c in range(k)]
        intra = 1.0 - sum(pearson(a, b) for a, b in columns) / k
    else:
        intra = 0.0  # kdframe's documented choice for a batch of one
    return tau**2 * (beta * inter + gamma * intra)


def ref_standardize(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    mean = logits.mean(axis=1, keepdims=True)
    std = logits.std(axis=1, ddof=1, keepdims=True)  # Bessel's correction, as torch.std
    return (logits - mean) / (std + 1e-7)


def ref_logit_standard(student, teacher, temperature) -> float:
    return ref_hinton(ref_standardize(student), ref_standardize(teacher), temperature)


def reference(name: str, student, teacher, labels, **params) -> float:
    """The reference value of a term with its defaults overridden by ``params``."""
    defaults = SPECS[name].params().model_dump()
    values = {**defaults, **params}
    if name == "hinton_kd":
        return ref_hinton(student, teacher, values["temperature"])
    if name == "dkd":
        return ref_dkd(student, teacher, labels, values["alpha"], values["beta"], values["temperature"])
    if name == "dist":
        return ref_dist(student, teacher, values["beta"], values["gamma"], values["tau"])
    return ref_logit_standard(student, teacher, values["temperature"])


# -- registration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RESPONSE)
def test_response_specs_are_registered_and_documented(name):
    spec = SPECS[name]
    assert isinstance(spec, LossSpec) and spec.family == "response"
    assert spec.reference and spec.layers.startswith("logits")
    assert spec.summary and "\n" not in spec.summary
    params = spec.params(**spec.example)
    term = spec.factory(params)
    assert term.needs_teacher is True
    assert tuple(term.student_layers) == () and tuple(term.teacher_layers) == ()
    for field_name, field in spec.params.model_fields.items():
        assert field.description, f"{name}.{field_name}"
    with pytest.raises(ValidationError):
        spec.params(not_a_param=1)


def test_defaults_are_the_documented_ones():
    assert SPECS["hinton_kd"].params().temperature == 4.0
    assert SPECS["dkd"].params().model_dump() == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}
    assert SPECS["dist"].params().model_dump() == {"beta": 1.0, "gamma": 1.0, "tau": 1.0}
    assert SPECS["logit_standard_kd"].params().temperature == 2.0


# -- properties every response term has -----------------------------------------------------------


@pytest.mark.parametrize("name", RESPONSE)
def test_value_matches_the_reference_with_defaults(name):
    student, teacher = fixed(1, 6, 7), fixed(2, 6, 7)
    labels = labels_for(3, 6, 7)
    value = make(name)(step(leaf(student), [leaf(teacher, False)], labels))
    assert value.dim() == 0
    assert value.item() == pytest.approx(reference(name, student, teacher, labels), rel=1e-9)


@pytest.mark.parametrize("name", RESPONSE)
def test_gradients_reach_the_student_and_never_the_teacher(name):
    student = leaf(fixed(4, 5, 6))
    teacher = leaf(fixed(5, 5, 6), requires_grad=True)  # a teacher that accidentally tracks grads
    value = make(name)(step(student, [teacher], labels_for(6, 5, 6)))
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert torch.isfinite(student.grad).all()
    assert teacher.grad is None


@pytest.mark.parametrize("name", RESPONSE)
def test_batch_of_one_matches_the_reference(name):
    student, teacher = fixed(7, 1, 5), fixed(8, 1, 5)
    tensor = leaf(student)
    value = make(name)(step(tensor, [leaf(teacher, False)], [2]))
    assert value.dim() == 0
    assert value.item() == pytest.approx(reference(name, student, teacher, [2]), rel=1e-9)
    value.backward()
    assert tensor.grad.abs().sum() > 0


@pytest.mark.parametrize("name", RESPONSE)
def test_several_teachers_are_averaged(name):
    student = fixed(9, 4, 5)
    teachers = [fixed(10, 4, 5), fixed(11, 4, 5), fixed(12, 4, 5)]
    labels = labels_for(13, 4, 5)
    term = make(name)
    value = term(step(leaf(student), [leaf(t, False) for t in teachers], labels)).item()
    expected = sum(reference(name, student, t, labels) for t in teachers) / len(teachers)
    assert value == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", RESPONSE)
def test_scheduled_temperature_follows_the_schedule(name):
    key = TEMPERATURE[name]
    schedule = {"schedule": "linear", "start": 8.0, "end": 2.0}
    term = make(name, **{key: schedule})
    epochs = 5
    assert term.current_values(0, epochs) == {key: pytest.approx(8.0)}
    assert term.current_values(2, epochs) == {key: pytest.approx(5.0)}
    assert term.current_values(epochs - 1, epochs) == {key: pytest.approx(2.0)}
    student, teacher = fixed(14, 4, 6), fixed(15, 4, 6)
    labels = labels_for(16, 4, 6)
    for epoch, temperature in ((0, 8.0), (2, 5.0), (epochs - 1, 2.0)):
        value = term(step(leaf(student), [leaf(teacher, False)], labels, epoch=epoch, epochs=epochs)).item()
        assert value == pytest.approx(reference(name, student, teacher, labels, **{key: temperature}), rel=1e-9)


@pytest.mark.parametrize("name", RESPONSE)
def test_constant_temperature_is_reported(name):
    key = TEMPERATURE[name]
    term = make(name, **{key: 3.0})
    assert term.current_values(0, 10) == {key: 3.0}
    assert term.current_values(9, 10) == {key: 3.0}


@pytest.mark.parametrize("name", RESPONSE)
def test_temperatures_must_stay_positive(name):
    key = TEMPERATURE[name]
    params = SPECS[name].params
    for bad in (
        0.0,
        -1.0,
        float("inf"),
        float("nan"),
        {"schedule": "linear", "start": 4.0, "end": 0.0},
        {"schedule": "cosine", "start": -1.0, "end": 2.0},
        {"schedule": "step", "start": 4.0, "milestones": [2], "gamma": -0.5},
        {"schedule": "linear", "start": 4.0},  # linear needs 'end'
    ):
        with pytest.raises(ValidationError):
            params(**{key: bad})
    assert isinstance(params(**{key: 2}).model_dump()[key], float)


@pytest.mark.parametrize("name", RESPONSE)
def test_errors_name_the_problem(name):
    term = make(name)
    with pytest.raises(ComponentError, match="needs a teacher"):
        term(step(leaf(fixed(0, 2, 3))))
    with pytest.raises(ComponentError, match=r"\(2, 4\).*\(2, 3\)"):
        term(step(leaf(fixed(0, 2, 3)), [leaf(fixed(1, 2, 4), False)]))
    with pytest.raises(ComponentError, match=r"\(2, 3, 1\)"):
        term(step(leaf(fixed(0, 2, 3, 1)), [leaf(fixed(1, 2, 3, 1), False)]))


@pytest.mark.parametrize("name", RESPONSE)
def test_half_precision_is_computed_in_float32(name):
    student, teacher = fixed(17, 3, 5), fixed(18, 3, 5)
    s16 = leaf(student, dtype=torch.bfloat16)
    value = make(name)(step(s16, [leaf(teacher, False, torch.bfloat16)], [0, 1, 2]))
    assert value.dtype == torch.float32
    rounded = [torch.tensor(a).to(torch.bfloat16).double().numpy() for a in (student, teacher)]
    assert value.item() == pytest.approx(reference(name, *rounded, [0, 1, 2]), rel=1e-4, abs=1e-6)
    value.backward()
    assert s16.grad.dtype == torch.bfloat16 and s16.grad.abs().sum() > 0


# -- hinton_kd ----------------------------------------------------------------------------------------


def test_hinton_kd_keeps_a_plain_temperature_as_a_number():
    term = make("hinton_kd", temperature=2.5)
    assert term.temperature == 2.5
    assert "temperature=2.5" in repr(term)
    assert "linear" in repr(make("hinton_kd", temperature={"schedule": "linear", "start": 4, "end": 1}))


# -- dkd ------------------------------------------------------------------------------------------


def test_dkd_with_beta_zero_is_the_hand_computed_tckd():
    # T = 2, label 0: s/T = [0, 0, 0] gives b_s = [1/3, 2/3]; t/T = [ln 2, 0, 0] gives b_t = [1/2, 1/2].
    # TCKD = 0.5 ln(1.5) + 0.5 ln(0.75) = 0.5 ln(1.125), times T^2 = 4.
    term = make("dkd", alpha=1.0, beta=0.0, temperature=2.0)
    student = leaf([[0.0, 0.0, 0.0]])
    teacher = leaf([[2.0 * math.log(2.0), 0.0, 0.0]], False)
    value = term(step(student, [teacher], [0]))
    assert value.item() == pytest.approx(4.0 * 0.5 * math.log(1.125), rel=1e-12)
    assert value.item() == pytest.approx(0.235566, abs=1e-6)


def test_dkd_with_alpha_zero_is_hinton_kd_over_the_non_target_classes():
    student, teacher = fixed(20, 5, 6), fixed(21, 5, 6)
    labels = labels_for(22, 5, 6)
    value = make("dkd", alpha=0.0, beta=1.0, temperature=3.0)(step(leaf(student), [leaf(teacher, False)], labels))
    keep = [[k for k in range(6) if k != y] for y in labels]
    s_nt = np.array([student[n, keep[n]] for n in range(5)])
    t_nt = np.array([teacher[n, keep[n]] for n in range(5)])
    assert value.item() == pytest.approx(ref_hinton(s_nt, t_nt, 3.0), rel=1e-9)


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.5, 7.5)])
def test_dkd_matches_loops(alpha, beta, temperature):
    student, teacher = fixed(23, 8, 10), fixed(24, 8, 10)
    labels = labels_for(25, 8, 10)
    term = make("dkd", alpha=alpha, beta=beta, temperature=temperature)
    value = term(step(leaf(student), [leaf(teacher, False)], labels))
    assert value.item() == pytest.approx(ref_dkd(student, teacher, labels, alpha, beta, temperature), rel=1e-9)


def test_dkd_decomposes_hinton_kd():
    # The paper's identity: KD = TCKD + (1 - p_t[y]) * NCKD, per sample; checked on one sample.
    student, teacher = fixed(26, 1, 5), fixed(27, 1, 5)
    outputs = step(leaf(student), [leaf(teacher, False)], [3])
    tckd = make("dkd", alpha=1.0, beta=0.0, temperature=1.0)(outputs).item()
    nckd = make("dkd", alpha=0.0, beta=1.0, temperature=1.0)(outputs).item()
    p_t = softmax(teacher[0].tolist())[3]
    assert ref_hinton(student, teacher, 1.0) == pytest.approx(tckd + (1.0 - p_t) * nckd, rel=1e-9)


def test_dkd_is_stable_for_extreme_logits():
    # Non-target probabilities of e^-200 underflow to 0 in float32, so the authors' log of the summed
    # probabilities would be log(0) = -inf; the term's logsumexp form stays finite.
    student = leaf([[200.0, 0.0, 0.0], [0.0, -200.0, 0.0]])
    teacher = leaf([[0.0, 90.0, 0.0], [0.0, 0.0, 95.0]], False)
    for dtype in (torch.float64, torch.float32):
        s = student.detach().to(dtype).requires_grad_()
        value = make("dkd", temperature=1.0)(step(s, [teacher.to(dtype)], [0, 1]))
        assert torch.isfinite(value)
        value.backward()
        assert torch.isfinite(s.grad).all()
    expected = ref_dkd(student.detach().numpy(), teacher.numpy(), [0, 1], 1.0, 8.0, 1.0)
    value = make("dkd", temperature=1.0)(step(student, [teacher], [0, 1]))
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_dkd_needs_labels_for_each_sample_and_two_classes():
    term = make("dkd")
    with pytest.raises(ComponentError, match="one class index per sample"):
        term(step(leaf(fixed(0, 3, 4)), [leaf(fixed(1, 3, 4), False)], [0, 1]))
    with pytest.raises(ComponentError, match="at least 2 class"):
        term(step(leaf(fixed(0, 3, 1)), [leaf(fixed(1, 3, 1), False)], [0, 0, 0]))
    for field, bad in (("alpha", -1.0), ("beta", -0.1), ("alpha", float("nan"))):
        with pytest.raises(ValidationError):
            SPECS["dkd"].params(**{field: bad})


def test_dkd_warm_up_is_a_weight_schedule_not_a_param():
    assert set(SPECS["dkd"].params.model_fields) == {"alpha", "beta", "temperature"}
    doc = kdframe_losses.response.__doc__
    assert '{"schedule": "linear", "start": 0, "end": 1, "epochs": 20}' in doc


# -- dist -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "gamma", "tau"), [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (0.0, 1.0, 2.0), (1.0, 0.0, 0.5)])
def test_dist_matches_loops(beta, gamma, tau):
    student, teacher = fixed(30, 6, 5), fixed(31, 6, 5)
    value = make("dist", beta=beta, gamma=gamma, tau=tau)(step(leaf(student), [leaf(teacher, False)]))
    assert value.item() == pytest.approx(ref_dist(student, teacher, beta, gamma, tau), rel=1e-9)


def test_dist_is_zero_for_identical_logits():
    # Zero up to the authors' 1e-8 in the correlation's denominator: 1 - |a|^2 / (|a|^2 + 1e-8).
    logits = fixed(32, 5, 4)
    student = leaf(logits)
    value = make("dist", tau=2.0)(step(student, [leaf(logits, False)]))
    assert value.item() == pytest.approx(0.0, abs=1e-5)
    assert value.item() == pytest.approx(ref_dist(logits, logits, 1.0, 1.0, 2.0), rel=1e-6)
    value.backward()
    assert torch.allclose(student.grad, torch.zeros_like(student.grad), atol=1e-5)


def test_dist_is_invariant_to_affine_changes_of_the_teachers_probabilities():
    # A Pearson correlation ignores shifts and positive scales, unlike KL: a teacher whose soft labels
    # are linearly related to the student's per sample gives inter = 0.
    student = fixed(33, 1, 6)
    p_s = np.array(softmax(student[0].tolist()))
    p_t = 0.5 * p_s + 0.5 / 6  # a valid, flatter distribution, affine in p_s
    teacher = np.log(p_t)[None, :]
    value = make("dist", gamma=0.0)(step(leaf(student), [leaf(teacher, False)]))
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert value.item() == pytest.approx(ref_dist(student, teacher, 1.0, 0.0, 1.0), rel=1e-6)


def test_dist_batch_of_one_has_no_intra_class_part():
    student, teacher = fixed(34, 1, 5), fixed(35, 1, 5)
    inter_only = make("dist", gamma=0.0)(step(leaf(student), [leaf(teacher, False)])).item()
    both = make("dist", gamma=5.0)(step(leaf(student), [leaf(teacher, False)])).item()
    assert both == pytest.approx(inter_only, rel=1e-12)
    y_s, y_t = softmax(student[0].tolist()), softmax(teacher[0].tolist())
    assert both == pytest.approx(1.0 - pearson(y_s, y_t), rel=1e-9)


# -- logit_standard_kd --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_logit_standard_kd_matches_numpy(temperature):
    student, teacher = fixed(40, 6, 8) * 3.0, fixed(41, 6, 8)
    value = make("logit_standard_kd", temperature=temperature)(step(leaf(student), [leaf(teacher, False)]))
    assert value.item() == pytest.approx(ref_logit_standard(student, teacher, temperature), rel=1e-9)


def test_logit_standard_kd_ignores_the_logits_scale_and_shift():
    student, teacher = fixed(42, 4, 6), fixed(43, 4, 6)
    term = make("logit_standard_kd")
    base = term(step(leaf(student), [leaf(teacher, False)])).item()
    moved = term(step(leaf(student * 5.0 - 3.0), [leaf(teacher * 0.2 + 7.0, False)])).item()
    assert moved == pytest.approx(base, rel=1e-6)
    # ...which plain KD does not: the teacher's scale matters there.
    kd = make("hinton_kd", temperature=2.0)
    assert kd(step(leaf(student), [leaf(teacher * 0.2, False)])).item() != pytest.approx(
        kd(step(leaf(student), [leaf(teacher, False)])).item(), rel=1e-3
    )


def test_logit_standard_kd_hand_checked_two_classes():
    # Two classes: z-scores are +-1/sqrt(2) (std with Bessel's correction of [a, b] is |a-b|/sqrt(2)).
    # Student [0, 1] -> [-c, c], teacher [3, 1] -> [c, -c], c = 1/sqrt(2); at T = 1 this is
    # KL([q, 1-q] || [1-q, q]) with q = sigmoid(2c) = sigmoid(sqrt(2)).
    c = 1.0 / math.sqrt(2.0)
    q = 1.0 / (1.0 + math.exp(-2.0 * c))
    expected = q * math.log(q / (1 - q)) + (1 - q) * math.log((1 - q) / q)
    value = make("logit_standard_kd", temperature=1.0)(step(leaf([[0.0, 1.0]]), [leaf([[3.0, 1.0]], False)]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_logit_standard_kd_needs_two_classes():
    with pytest.raises(ComponentError, match="at least 2 class"):
        make("logit_standard_kd")(step(leaf(fixed(0, 3, 1)), [leaf(fixed(1, 3, 1), False)]))
