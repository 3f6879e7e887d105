"""The contract every registered loss strategy meets, checked on the same inputs for all of them."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from kdframe.errors import LayerError
from kdframe.losses import BuildContext, LossTerm, ModelOutputs, StepOutputs
from kdframe.plugins import create_plugins
from kdframe.schedule import LossConfig

REGISTRY = create_plugins().registry
LOSSES = [component.spec for component in REGISTRY.iter("loss")]
BATCH = 8
CLASSES = 10
# (student feature shape, teacher feature shape) without the batch dimension.
SHAPE_CASES = {
    "maps": ((8, 8, 8), (16, 8, 8)),
    "maps of other sizes": ((8, 8, 8), (16, 4, 4)),
    "vectors": ((24,), (32,)),
}


def test_every_family_is_represented() -> None:
    families = {spec.family for spec in LOSSES}
    assert {"label", "response", "feature", "relation"} <= families


@pytest.mark.parametrize("spec", LOSSES, ids=lambda spec: spec.name)
def test_spec_is_documented(spec) -> None:
    assert spec.summary and len(spec.summary) < 160
    assert spec.reference, f"{spec.name} names no reference"
    assert spec.layers
    for name, field in spec.params.model_fields.items():
        assert field.description, f"{spec.name}.{name} has no description"
    assert spec.factory.__doc__ or type(spec.factory).__doc__


@pytest.mark.parametrize("spec", LOSSES, ids=lambda spec: spec.name)
def test_params_forbid_unknown_fields_and_round_trip(spec) -> None:
    params = spec.params.model_validate(spec.example)
    with pytest.raises(ValidationError):
        spec.params.model_validate({**spec.example, "no_such_param": 1})
    dumped = params.model_dump(mode="json")
    assert spec.params.model_validate(dumped) == params
    config = LossConfig(name=spec.name, weight=0.5, params=spec.example)
    assert LossConfig.model_validate(json.loads(config.model_dump_json())) == config


def _features(paths, shape, generator, requires_grad) -> dict[str, torch.Tensor]:
    features = {}
    for path in paths:
        size = (BATCH, CLASSES) if path == "logits" else (BATCH, *shape)
        features[path] = torch.randn(size, generator=generator, requires_grad=requires_grad)
    return features


def _modules(paths, shape) -> dict[str, nn.Module]:
    modules = {}
    for path in paths:
        if path != "logits" and len(shape) == 3:
            norm = nn.BatchNorm2d(shape[0])
            nn.init.uniform_(norm.weight, 0.5, 1.5)
            nn.init.uniform_(norm.bias, -0.5, 0.5)
            modules[path] = norm
        else:
            modules[path] = nn.Identity()
    return modules


def _attempt(spec, student_shape, teacher_shape) -> tuple[LossTerm, torch.Tensor, dict, dict] | None:
    term = spec.factory(spec.params.model_validate(spec.example))
    generator = torch.Generator().manual_seed(0)
    student = _features(term.student_layers, student_shape, generator, True)
    teacher = _features(term.teacher_layers, teacher_shape, generator, False)
    try:
        term.build(
            BuildContext(
                student_shapes={p: v.shape for p, v in student.items()},
                teacher_shapes={p: v.shape for p, v in teacher.items()},
                student_modules=_modules(term.student_layers, student_shape),
                teacher_modules=_modules(term.teacher_layers, teacher_shape),
                num_train_samples=64,
                num_classes=CLASSES,
                epochs=3,
            )
        )
    except LayerError as error:
        assert "(" in str(error), "a shape error should show the shapes"
        return None
    student_logits = student.get("logits", torch.randn(BATCH, CLASSES, generator=generator, requires_grad=True))
    teacher_logits = teacher.get("logits", torch.randn(BATCH, CLASSES, generator=generator))
    outputs = StepOutputs(
        ModelOutputs(student_logits, student),
        [ModelOutputs(teacher_logits, teacher)],
        torch.randint(0, CLASSES, (BATCH,), generator=generator),
        epoch=1,
        epochs=3,
        indices=torch.arange(BATCH),
    )
    value = term.pretrain_loss(outputs) if term.pretrain_epochs > 0 else None
    if value is not None:
        assert value.dim() == 0 and torch.isfinite(value)
    return term, term(outputs), student, {"logits": student_logits}


@pytest.mark.parametrize("spec", LOSSES, ids=lambda spec: spec.name)
def test_default_build_gives_a_finite_scalar_with_gradients(spec) -> None:
    successes = 0
    for student_shape, teacher_shape in SHAPE_CASES.values():
        attempt = _attempt(spec, student_shape, teacher_shape)
        if attempt is None:
            continue
        term, value, student, logits = attempt
        assert value.dim() == 0 and torch.isfinite(value), f"{spec.name}: {value}"
        value.backward()
        grads = [t.grad for t in (*student.values(), *logits.values()) if t.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"{spec.name}: no gradient reaches the student"
        successes += 1
    assert successes, f"{spec.name} accepted none of the shape cases"
