"""``pooled_hint``: the contract, the value against a hand computation, and its adapter's shapes."""

from __future__ import annotations

import pytest
import torch

from kdframe import BuildContext, LayerError, ModelOutputs, StepOutputs
from kdframe.testing import check_loss_contract
from kdframe_template.feature_loss import SPEC, PooledHint, PooledHintParams


def test_contract() -> None:
    check_loss_contract(SPEC)


def _term(**params) -> PooledHint:
    term = SPEC.factory(PooledHintParams(layers=[{"student": "s", "teacher": "t"}], **params))
    assert term.student_layers == ["s"] and term.teacher_layers == ["t"]
    return term


def test_the_adapter_maps_the_student_channels_to_the_teachers_for_maps_and_vectors() -> None:
    for student_shape, teacher_shape in (((2, 3, 4, 4), (2, 5, 2, 2)), ((2, 3), (2, 5))):
        term = _term()
        term.build(BuildContext(student_shapes={"s": torch.Size(student_shape)}, teacher_shapes={"t": torch.Size(teacher_shape)}))
        assert (term.adapters[0].in_features, term.adapters[0].out_features) == (3, 5)


def test_the_value_is_the_mse_of_adapted_pooled_features() -> None:
    term = _term(bias=False)
    term.build(BuildContext(student_shapes={"s": torch.Size((2, 2, 2, 2))}, teacher_shapes={"t": torch.Size((2, 1))}))
    with torch.no_grad():
        term.adapters[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    student = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [2.0, 2.0]]], [[[2.0, 2.0], [2.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    teacher = torch.tensor([[1.0], [3.0]])
    # pooled student: [[1, 1], [2, 1]]; adapted: [1 + 2, 2 + 2] = [3, 4]; errors 2 and 1: MSE (4 + 1) / 2
    outputs = StepOutputs(ModelOutputs(torch.zeros(2, 3), {"s": student}), [ModelOutputs(torch.zeros(2, 3), {"t": teacher})], torch.tensor([0, 1]))
    assert float(term(outputs).detach()) == pytest.approx(2.5)


def test_a_layer_of_another_rank_is_refused_with_its_shape() -> None:
    term = _term()
    with pytest.raises(LayerError, match=r"shape \(2, 3, 4\)"):
        term.build(BuildContext(student_shapes={"s": torch.Size((2, 3, 4))}, teacher_shapes={"t": torch.Size((2, 5))}))
