"""``logit_mimic``: the contract every kdframe loss meets, and its values against hand computations."""

from __future__ import annotations

import pytest
import torch

from kdframe import ComponentError, ModelOutputs, StepOutputs
from kdframe.testing import check_loss_contract
from kdframe_template.loss import SPEC, LogitMimicParams, logit_distance


def _outputs(student: torch.Tensor, *teachers: torch.Tensor, weights: tuple[float, ...] = ()) -> StepOutputs:
    labels = torch.zeros(student.shape[0], dtype=torch.long)
    return StepOutputs(ModelOutputs(student), [ModelOutputs(t) for t in teachers], labels, teacher_weights=weights)


def _term(center: bool = False):
    return SPEC.factory(LogitMimicParams(center=center))


def test_meets_the_loss_contract() -> None:
    check_loss_contract(SPEC)


def test_value_is_half_the_squared_distance_averaged_over_the_batch() -> None:
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # Sample 0: (1 + 4 + 9) / 2 = 7; sample 1: (1 + 1 + 1) / 2 = 1.5; mean 4.25.
    assert _term()(_outputs(student, teacher)).item() == pytest.approx(4.25)


def test_centring_ignores_a_shift_of_the_logits() -> None:
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # Centred, sample 0 is [-1, 0, 1] against 0: (1 + 1) / 2 = 1; sample 1 is 0 against 0; mean 0.5.
    assert _term(center=True)(_outputs(student, teacher)).item() == pytest.approx(0.5)
    assert _term(center=True)(_outputs(student + 7.0, teacher - 3.0)).item() == pytest.approx(0.5)


def test_gradient_is_the_difference_over_the_batch_size() -> None:
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], requires_grad=True)
    _term()(_outputs(student, teacher)).backward()
    torch.testing.assert_close(student.grad, (student - teacher).detach() / 2)
    assert teacher.grad is None  # teachers are never trained


def test_several_teachers_give_the_weighted_mean() -> None:
    student = torch.zeros(1, 2)
    near, far = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])  # values 1 and 4
    assert _term()(_outputs(student, near, far)).item() == pytest.approx(2.5)
    assert _term()(_outputs(student, near, far, weights=(3.0, 1.0))).item() == pytest.approx(1.75)


def test_is_the_high_temperature_limit_of_hinton_kd(kdframe_plugins) -> None:
    # Hinton et al. 2015, section 2.1: T^2 * KL -> centred logit_mimic / K as T grows.
    hinton = kdframe_plugins().registry.spec("loss", "hinton_kd")
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    kd = hinton.factory(hinton.params(temperature=1000.0))(_outputs(student, teacher)).item()
    assert kd * 5 == pytest.approx(logit_distance(student, teacher, center=True).item(), rel=1e-3)


def test_mismatched_logits_and_a_missing_teacher_are_clear_errors() -> None:
    with pytest.raises(ComponentError, match=r"\(2, 3\).*\(2, 4\)"):
        _term()(_outputs(torch.zeros(2, 3), torch.zeros(2, 4)))
    with pytest.raises(ComponentError, match="needs a teacher"):
        _term()(_outputs(torch.zeros(2, 3)))
