"""The trainer's parts on their own: the teachers (selection, cache or forward), the optimization
step (non-finite policy, buffers put back), and the stage state's round trip."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from kdframe import TeacherBatch, TeacherPolicy, TeacherSelection, TrainingError
from kdframe.losses import ModelOutputs, StepOutputs
from kdframe.runner import Experiment, load_schedule, prepare
from kdframe.stage_setup import StageSetup, trained_parameters
from kdframe.stage_state import StageOutcome, checkpoint, restore
from kdframe.stage_teachers import StageTeachers
from kdframe.train_step import StepLoss, TrainStep
from tests.conftest import tiny_schedule, write_schedule


def experiment(tmp_path, **changes: Any) -> Experiment:
    schedule = {**tiny_schedule(**changes), "logging": {"loggers": []}}
    loaded, plugins, resolved = load_schedule(write_schedule(tmp_path, schedule))
    return prepare(loaded, plugins, resolved)


def setups(tmp_path, **changes: Any) -> list[StageSetup]:
    return experiment(tmp_path, **changes).setups


class _SecondOnlyEveryOtherBatch(TeacherPolicy):
    def select(self, batch: TeacherBatch) -> TeacherSelection:
        return TeacherSelection((0, 1), (1.0, 3.0)) if batch.batch % 2 else TeacherSelection((0,))


def test_teachers_run_only_the_selected_ones(tmp_path) -> None:
    setup = setups(tmp_path, **{"training.teacher_cache": "off"})[1]  # 'assistant', taught by 'teacher'
    setup = replace(setup, teachers=[setup.teachers[0], setup.teachers[0]], teacher_policy=_SecondOnlyEveryOtherBatch())
    setup.info = replace(setup.info, teachers=("teacher", "teacher"))
    teachers = StageTeachers(setup, torch.device("cpu"))
    teachers.freeze()
    assert all(not p.requires_grad for t in setup.teachers for p in t.parameters()) and not setup.teachers[0].training
    generator = torch.Generator().manual_seed(0)
    assert teachers.select(0, 0, 0, generator) == TeacherSelection((0,))
    assert teachers.select(0, 1, 0, generator) == TeacherSelection((0, 1), (1.0, 3.0))
    images = torch.randn(3, 1, 16, 16)
    outputs = teachers.outputs(images, torch.arange(3), (0, 1))
    assert len(outputs) == 2 and all(o.logits.shape == (3, 4) and o.logits.dtype == torch.float32 for o in outputs)
    assert len(teachers.outputs(images, torch.arange(3), (0,))) == 1


def test_teachers_without_a_policy_all_teach_and_the_cache_serves_them(tmp_path) -> None:
    prepared = experiment(tmp_path, **{"training.teacher_cache": "memory"})
    setup, data = prepared.setups[1], prepared.data
    teachers = StageTeachers(setup, torch.device("cpu"))
    teachers.freeze()
    assert teachers.select(0, 0, 0, torch.Generator()) == TeacherSelection((0,))
    teachers.prepare_cache(data, 64)
    assert teachers.cached is not None
    indices = torch.tensor([3, 1])
    cached = teachers.outputs(data.train_images[indices], indices, (0,))[0]
    with torch.no_grad():
        live = setup.teachers[0](data.train_images[indices])
    assert torch.allclose(cached.logits, live, atol=1e-5)


def _loss(values: list[float]) -> StepLoss:
    return StepLoss(torch.tensor(0.0), torch.tensor(values, dtype=torch.float64))


def test_the_step_skips_a_non_finite_batch_and_puts_the_buffers_back(tmp_path) -> None:
    setup = setups(tmp_path, **{"training.on_nonfinite": "skip", "training.max_skipped_batches": 1})[0]
    step = TrainStep(setup, torch.device("cpu"), 32)
    step.start_epoch()
    assert step.restorable, "BatchNorm statistics are restorable buffers"
    before = [b.clone() for b in step.restorable]
    step.keep_buffers()
    setup.student.train()(torch.randn(4, 1, 16, 16) * 5)  # moves the running statistics
    assert not step.skips(_loss([1.0]), 0, 0, 0)
    assert step.skips(_loss([float("nan")]), 0, 1, 1)
    assert all(torch.equal(a, b) for a, b in zip(step.restorable, before))
    assert step.skipped == 1
    with pytest.raises(TrainingError, match=r"more than training.max_skipped_batches=1 batches of one epoch, the last at epoch 1, batch 3 \(step 2\)"):
        step.skips(_loss([float("inf")]), 0, 2, 1)


def test_the_step_stops_on_a_non_finite_term_by_default(tmp_path) -> None:
    setup = setups(tmp_path)[0]
    step = TrainStep(setup, torch.device("cpu"), 32)
    step.start_epoch()
    assert step.restorable == []  # nothing to put back under "stop"
    with pytest.raises(TrainingError, match=r"loss term\(s\) cross_entropy became non-finite at epoch 1, batch 1 \(step 1\)"):
        step.skips(_loss([float("nan")]), 0, 0, 0)


def test_the_step_computes_the_weighted_loss_and_steps_the_optimizer(tmp_path) -> None:
    setup = setups(tmp_path)[1]
    named = trained_parameters(setup)
    step = TrainStep(setup, torch.device("cpu"), 32)
    step.prepare([p for _, p in named])
    images, labels = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    logits, features = step.forward_student(images)
    with torch.no_grad():
        teacher = setup.teachers[0].eval()(images)
    outputs = StepOutputs(ModelOutputs(logits, features), [ModelOutputs(teacher)], labels)
    loss = step.loss(outputs, [0.1, 0.9], pretraining=False)
    assert loss.values.dtype == torch.float64 and loss.values.shape == (2,)
    assert float(loss.total.detach()) == pytest.approx(float((loss.values * torch.tensor([0.1, 0.9], dtype=torch.float64)).sum()), rel=1e-5)
    optimizer = setup.optimizer.make(named)
    before = [p.detach().clone() for _, p in named]
    step.backward_and_step(loss.total, optimizer)
    assert any(not torch.equal(b, p) for b, (_, p) in zip(before, named))


def test_the_stage_state_round_trips(tmp_path) -> None:
    setup = setups(tmp_path)[0]
    named = trained_parameters(setup)
    optimizer = setup.optimizer.make(named)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    outcome = StageOutcome(2, 50.0, 60.0, 1, False, False, [{"test/acc": 60.0}], 3)
    saved = checkpoint(setup, 2, 17, optimizer, scheduler, outcome)
    with torch.no_grad():
        for _, parameter in named:
            parameter.add_(1.0)
    restored = StageOutcome(0, 0.0, 0.0, -1, False, False)
    assert restore(setup, saved, optimizer, scheduler, restored) == (2, 17)
    assert restored == outcome
    assert all(torch.equal(setup.student.state_dict()[k], v) for k, v in saved["student"].items())
