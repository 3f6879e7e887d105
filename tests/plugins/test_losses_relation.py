"""Tests of the relation-based terms of ``kdframe_losses.relation``: rkd_distance, rkd_angle, sp, cc
and pkt.

Values are compared with independent, straightforward computations (plain Python loops or NumPy in
float64), never with the torch functions the terms call.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import kdframe_losses
from kdframe import ComponentError, LayerError, LossSpec, LossTerm, ModelOutputs, StepOutputs
from kdframe.losses import BuildContext
from kdframe.plugins import create_plugins

RELATION = ("rkd_distance", "rkd_angle", "sp", "cc", "pkt")


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


def pairs(*names: tuple[str, str]) -> list[dict[str, str]]:
    return [{"student": s, "teacher": t} for s, t in names]


def on_logits(student, teacher) -> StepOutputs:
    """Outputs whose logits are the embeddings (the terms' default layers)."""
    n = student.shape[0]
    return StepOutputs(
        student=ModelOutputs(student), teachers=[ModelOutputs(teacher)], labels=torch.zeros(n, dtype=torch.long)
    )


def on_layers(student_features: dict, teacher_features: dict, n: int) -> StepOutputs:
    return StepOutputs(
        student=ModelOutputs(torch.zeros(n, 3), dict(student_features)),
        teachers=[ModelOutputs(torch.zeros(n, 3), dict(teacher_features))],
        labels=torch.zeros(n, dtype=torch.long),
    )


def context(student_features: dict, teacher_features: dict) -> BuildContext:
    return BuildContext(
        student_shapes={k: v.shape for k, v in student_features.items()},
        teacher_shapes={k: v.shape for k, v in teacher_features.items()},
    )


# -- independent references (float64, loops) --------------------------------------------------------


def rows(embeddings) -> list[list[float]]:
    return [np.asarray(e, dtype=np.float64).ravel().tolist() for e in embeddings]


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def norm(a) -> float:
    return math.sqrt(dot(a, a))


def huber(x: float) -> float:
    x = abs(x)
    return 0.5 * x * x if x < 1.0 else x - 0.5


def ref_rkd_distance(student, teacher) -> float:
    def normalised(embeddings):
        e = rows(embeddings)
        d = {(i, j): norm([a - b for a, b in zip(e[i], e[j])]) for i, j in itertools.combinations(range(len(e)), 2)}
        mean = sum(d.values()) / len(d)
        return {key: value / mean for key, value in d.items()}

    psi_s, psi_t = normalised(student), normalised(teacher)
    return sum(huber(psi_s[key] - psi_t[key]) for key in psi_s) / len(psi_s)


def ref_rkd_angle(student, teacher) -> float:
    def cosines(embeddings):
        e = rows(embeddings)
        out = {}
        for i, j, k in itertools.permutations(range(len(e)), 3):
            u = [a - b for a, b in zip(e[j], e[i])]
            v = [a - b for a, b in zip(e[k], e[i])]
            out[i, j, k] = dot(u, v) / (norm(u) * norm(v))
        return out

    c_s, c_t = cosines(student), cosines(teacher)
    return sum(huber(c_s[key] - c_t[key]) for key in c_s) / len(c_s)


def ref_sp(student, teacher) -> float:
    def g(embeddings):
        a = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
        gram = a @ a.T
        return gram / np.linalg.norm(gram, axis=1, keepdims=True)

    n = len(student)
    return float(((g(student) - g(teacher)) ** 2).sum()) / (n * n)


def ref_cc(student, teacher, gamma=0.4, p_order=2) -> float:
    def c(embeddings):
        e = [[x / norm(r) for x in r] for r in rows(embeddings)]
        n = len(e)
        return [
            [
                sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot(e[i], e[j]) ** p
                    for p in range(p_order + 1)
                )
                for j in range(n)
            ]
            for i in range(n)
        ]

    c_s, c_t = c(student), c(teacher)
    n = len(c_s)
    return sum((c_s[i][j] - c_t[i][j]) ** 2 for i in range(n) for j in range(n)) / (n * n)


def ref_pkt(student, teacher, eps=1e-7) -> float:
    def p(embeddings):
        e = [[x / (norm(r) + eps) for x in r] for r in rows(embeddings)]
        k = [[(dot(a, b) + 1.0) / 2.0 for b in e] for a in e]
        return [[value / sum(row) for value in row] for row in k]

    p_s, p_t = p(student), p(teacher)
    n = len(p_s)
    total = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(n) for j in range(n))
    return total / (n * n)


REFERENCE = {"rkd_distance": ref_rkd_distance, "rkd_angle": ref_rkd_angle, "sp": ref_sp, "cc": ref_cc, "pkt": ref_pkt}


# -- registration and the layer API -----------------------------------------------------------------


@pytest.mark.parametrize("name", RELATION)
def test_relation_specs_are_registered_and_documented(name):
    spec = SPECS[name]
    assert isinstance(spec, LossSpec) and spec.family == "relation"
    assert spec.reference and spec.layers and "\n" not in spec.summary
    example = spec.params(**spec.example)
    assert example.layers[0].student and example.layers[0].teacher
    for field_name, field in spec.params.model_fields.items():
        assert field.description, f"{name}.{field_name}"
    with pytest.raises(ValidationError):
        spec.params(not_a_param=1)
    term = spec.factory(spec.params())
    assert term.needs_teacher is True
    assert term.current_values(0, 10) == {}


@pytest.mark.parametrize("name", RELATION)
def test_default_layers_are_the_logits(name):
    params = SPECS[name].params()
    assert [(p.student, p.teacher) for p in params.layers] == [("logits", "logits")]
    term = make(name)
    assert tuple(term.student_layers) == ("logits",) and tuple(term.teacher_layers) == ("logits",)
    assert SPECS[name].params().layers is not params.layers  # no shared mutable default
    schema = SPECS[name].params.model_json_schema()["properties"]["layers"]
    assert schema["default"] == [{"student": "logits", "teacher": "logits"}] and schema["minItems"] == 1


@pytest.mark.parametrize("name", RELATION)
def test_layer_pairs_are_validated_and_declared(name):
    params = SPECS[name].params
    for bad in ([], [{"student": "a"}], [{"student": "a", "teacher": ""}], [{"student": "a", "teacher": "b", "x": 1}]):
        with pytest.raises(ValidationError):
            params(layers=bad)
    term = make(name, layers=pairs(("s.a", "t.a"), ("s.b", "t.a"), ("s.a", "logits")))
    assert tuple(term.student_layers) == ("s.a", "s.b")
    assert tuple(term.teacher_layers) == ("t.a", "logits")


@pytest.mark.parametrize("name", RELATION)
def test_build_checks_the_reported_shapes(name):
    term = make(name, layers=pairs(("s.a", "t.a")))
    term.build(BuildContext({"s.a": torch.Size([4, 3, 2, 2])}, {"t.a": torch.Size([4, 7])}))
    assert list(term.parameters()) == []
    with pytest.raises(LayerError, match="'s.a' was not reported.*layers seen: other"):
        term.build(BuildContext({"other": torch.Size([4, 3])}, {"t.a": torch.Size([4, 7])}))
    with pytest.raises(LayerError, match=r"'t.a' gives output shape \(4\)"):
        term.build(BuildContext({"s.a": torch.Size([4, 3])}, {"t.a": torch.Size([4])}))
    # The logits need not be reported: they are always there.
    make(name).build(BuildContext({}, {}))


# -- properties every relation term has -----------------------------------------------------------


@pytest.mark.parametrize("name", RELATION)
def test_value_on_logits_matches_the_reference(name):
    student, teacher = fixed(1, 6, 5), fixed(2, 6, 9)  # embedding widths may differ
    value = make(name)(on_logits(leaf(student), leaf(teacher, False)))
    assert value.dim() == 0
    assert value.item() == pytest.approx(REFERENCE[name](student, teacher), rel=1e-9)


@pytest.mark.parametrize("name", RELATION)
def test_layers_are_flattened_per_sample(name):
    student, teacher = fixed(3, 5, 2, 3, 3), fixed(4, 5, 4, 2, 2)
    term = make(name, layers=pairs(("body.2", "body.5")))
    s_features, t_features = {"body.2": leaf(student)}, {"body.5": leaf(teacher, False)}
    term.build(context(s_features, t_features))
    value = term(on_layers(s_features, t_features, 5))
    assert value.item() == pytest.approx(REFERENCE[name](student, teacher), rel=1e-9)


@pytest.mark.parametrize("name", RELATION)
def test_several_pairs_are_averaged(name):
    s1, t1 = fixed(5, 5, 4), fixed(6, 5, 3, 2, 2)
    s2, t2 = fixed(7, 5, 2, 2, 2), fixed(8, 5, 6)
    logits_s, logits_t = fixed(9, 5, 3), fixed(10, 5, 3)
    term = make(name, layers=pairs(("s1", "t1"), ("s2", "t2"), ("logits", "logits")))
    s_features = {"s1": leaf(s1), "s2": leaf(s2)}
    t_features = {"t1": leaf(t1, False), "t2": leaf(t2, False)}
    outputs = StepOutputs(
        student=ModelOutputs(leaf(logits_s), s_features),
        teachers=[ModelOutputs(leaf(logits_t, False), t_features)],
        labels=torch.zeros(5, dtype=torch.long),
    )
    expected = (REFERENCE[name](s1, t1) + REFERENCE[name](s2, t2) + REFERENCE[name](logits_s, logits_t)) / 3
    assert term(outputs).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", RELATION)
def test_gradients_reach_the_student_and_never_the_teacher(name):
    student = leaf(fixed(11, 6, 4))
    teacher = leaf(fixed(12, 6, 8), requires_grad=True)  # a teacher that accidentally tracks grads
    feature = leaf(fixed(13, 6, 2, 2, 2))
    teacher_feature = leaf(fixed(14, 6, 3), requires_grad=True)
    term = make(name, layers=pairs(("logits", "logits"), ("f", "g")))
    outputs = StepOutputs(
        student=ModelOutputs(student, {"f": feature}),
        teachers=[ModelOutputs(teacher, {"g": teacher_feature})],
        labels=torch.zeros(6, dtype=torch.long),
    )
    term(outputs).backward()
    for tensor in (student, feature):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
        assert torch.isfinite(tensor.grad).all()
    assert teacher.grad is None and teacher_feature.grad is None


@pytest.mark.parametrize("name", RELATION)
def test_batch_of_one_is_a_zero_that_keeps_the_graph(name):
    student = torch.randn(1, 4, requires_grad=True)
    value = make(name)(on_logits(student, torch.randn(1, 7)))
    assert value.dim() == 0 and value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_rkd_angle_needs_three_samples():
    student = torch.randn(2, 4, requires_grad=True)
    value = make("rkd_angle")(on_logits(student, torch.randn(2, 7)))
    assert value.item() == 0.0 and value.requires_grad
    three = make("rkd_angle")(on_logits(leaf(fixed(15, 3, 4)), leaf(fixed(16, 3, 2), False)))
    assert three.item() == pytest.approx(ref_rkd_angle(fixed(15, 3, 4), fixed(16, 3, 2)), rel=1e-9)


@pytest.mark.parametrize("name", RELATION)
def test_float32_and_half_precision(name):
    student, teacher = fixed(17, 5, 6), fixed(18, 5, 3)
    value = make(name)(on_logits(leaf(student, dtype=torch.float32), leaf(teacher, False, torch.float32)))
    assert value.dtype == torch.float32
    expected = REFERENCE[name](student, teacher)
    assert value.item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    s16 = leaf(student, dtype=torch.bfloat16)
    value = make(name)(on_logits(s16, leaf(teacher, False, torch.bfloat16)))
    assert value.dtype == torch.float32
    rounded = [torch.tensor(a).to(torch.bfloat16).double().numpy() for a in (student, teacher)]
    assert value.item() == pytest.approx(REFERENCE[name](*rounded), rel=1e-4, abs=1e-7)
    value.backward()
    assert s16.grad.dtype == torch.bfloat16 and torch.isfinite(s16.grad.float()).all()


@pytest.mark.parametrize("name", RELATION)
def test_errors_name_the_problem(name):
    term = make(name)
    with pytest.raises(ComponentError, match="same batch size"):
        term(on_logits(torch.randn(3, 4), torch.randn(4, 4)))
    with pytest.raises(ComponentError, match="needs a teacher"):
        term(StepOutputs(ModelOutputs(torch.randn(3, 4)), [], torch.zeros(3, dtype=torch.long)))
    layered = make(name, layers=pairs(("s.guided", "t.hint")))
    with pytest.raises(LayerError, match="'t.hint' is missing"):
        layered(on_layers({"s.guided": torch.randn(3, 2)}, {}, 3))


@pytest.mark.parametrize("name", RELATION)
def test_same_structure_gives_zero(name):
    # Each relation is invariant to a global scale (and sp to nothing else needed here): a teacher
    # whose embeddings are the student's times a positive factor teaches nothing new.
    embeddings = fixed(19, 5, 4)
    value = make(name)(on_logits(leaf(embeddings * 3.0), leaf(embeddings * 10.0, False)))
    assert value.item() == pytest.approx(0.0, abs=1e-12)


# -- method-specific checks -----------------------------------------------------------------------


def test_rkd_distance_uses_the_huber_linear_branch():
    student = np.array([[0.0], [1.0], [2.0], [100.0]])
    teacher = np.array([[0.0], [50.0], [51.0], [52.0]])
    value = make("rkd_distance")(on_logits(leaf(student), leaf(teacher, False)))
    assert value.item() == pytest.approx(ref_rkd_distance(student, teacher), rel=1e-9)


def test_rkd_angle_hand_checked_square_against_a_line():
    # Student: the corners of a square; the angles at a corner are 90 and 45 degrees (cosines 0 and
    # 1/sqrt(2)). Teacher: four points on a line, where every cosine is +-1.
    square = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    line = np.array([[0.0], [1.0], [2.0], [3.0]])
    value = make("rkd_angle")(on_logits(leaf(square), leaf(line, False)))
    assert value.item() == pytest.approx(ref_rkd_angle(square, line), rel=1e-9)
    # Each vertex sees 3 angles between its 3 neighbours; ordered pairs count each twice.
    # Square: at every corner one 90-degree angle (two sides) and two 45-degree ones (side, diagonal).
    # Line 0-1-2-3: at the ends all cosines are 1; at the middle points one pair is opposite (-1).
    total = 0.0
    for vertex in range(4):
        others = [k for k in range(4) if k != vertex]
        for j, k in itertools.combinations(others, 2):
            u, v = square[j] - square[vertex], square[k] - square[vertex]
            cos_s = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
            cos_t = 1.0 if (line[j, 0] - line[vertex, 0]) * (line[k, 0] - line[vertex, 0]) > 0 else -1.0
            total += 2 * huber(cos_s - cos_t)
    assert value.item() == pytest.approx(total / 24, rel=1e-9)


def test_rkd_angle_is_translation_invariant_and_precise_far_from_the_origin():
    student, teacher = fixed(20, 6, 5), fixed(21, 6, 3)
    base = make("rkd_angle")(on_logits(leaf(student), leaf(teacher, False))).item()
    far = make("rkd_angle")(
        on_logits(leaf(student + 1e4, dtype=torch.float32), leaf(teacher - 5e3, False, torch.float32))
    ).item()
    assert far == pytest.approx(base, rel=1e-4)


def test_sp_hand_checked_orthogonal_batch():
    # Orthonormal student rows: G_s = I. Teacher rows all equal: G_t = ones / sqrt(N) after row
    # normalisation. ||I - 1/sqrt(N)||_F^2 = N (1 - 1/sqrt(N))^2 + N (N - 1) / N, over N^2.
    n = 4
    student = np.eye(n)
    teacher = np.ones((n, 3))
    expected = (n * (1 - 1 / math.sqrt(n)) ** 2 + (n - 1)) / n**2
    value = make("sp")(on_logits(leaf(student), leaf(teacher, False)))
    assert value.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("gamma", "p_order"), [(0.4, 2), (1.0, 1), (0.25, 5)])
def test_cc_matches_loops_for_other_kernels(gamma, p_order):
    student, teacher = fixed(22, 5, 4), fixed(23, 5, 6)
    value = make("cc", gamma=gamma, p_order=p_order)(on_logits(leaf(student), leaf(teacher, False)))
    assert value.item() == pytest.approx(ref_cc(student, teacher, gamma, p_order), rel=1e-9)


def test_cc_approaches_the_exact_gaussian_kernel_with_the_order():
    student, teacher = fixed(24, 4, 3), fixed(25, 4, 3)

    def exact(embeddings, gamma):
        e = [[x / norm(r) for x in r] for r in rows(embeddings)]
        return [[math.exp(-gamma * sum((a - b) ** 2 for a, b in zip(u, v))) for v in e] for u in e]

    k_s, k_t = exact(student, 0.4), exact(teacher, 0.4)
    expected = sum((k_s[i][j] - k_t[i][j]) ** 2 for i in range(4) for j in range(4)) / 16
    value = make("cc", gamma=0.4, p_order=15)(on_logits(leaf(student), leaf(teacher, False)))
    assert value.item() == pytest.approx(expected, rel=1e-9)


def test_cc_params_are_checked():
    for field, bad in (("gamma", 0.0), ("gamma", -1.0), ("p_order", 0), ("p_order", 1.5)):
        with pytest.raises(ValidationError):
            SPECS["cc"].params(**{field: bad})


def test_pkt_hand_checked_two_samples():
    # Student rows orthogonal: cos 0 -> K = [[1, .5], [.5, 1]] -> P rows [2/3, 1/3].
    # Teacher rows opposite: cos -1 -> K = [[1, 0], [0, 1]] -> P = I.
    # KL per row = 1 * log((1 + eps) / (2/3 + eps)); mean over 4 entries = 2 * that / 4. (The eps in
    # e / (|e| + eps) moves the cosines by O(eps), hence the tolerance.)
    eps = 1e-7
    student, teacher = [[1.0, 0.0], [0.0, 2.0]], [[1.0], [-3.0]]
    value = make("pkt")(on_logits(leaf(student), leaf(teacher, False)))
    expected = 2 * math.log((1 + eps) / (2 / 3 + eps)) / 4
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert value.item() == pytest.approx(ref_pkt(np.array(student), np.array(teacher)), rel=1e-9)


def test_pkt_zero_embeddings_are_uniform_not_nan():
    student = torch.zeros(3, 4, requires_grad=True)
    value = make("pkt")(on_logits(student, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])))
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(student.grad).all()
