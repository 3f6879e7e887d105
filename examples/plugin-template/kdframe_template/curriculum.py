"""``self_distillation``: train a model, then distil a fresh copy of the same architecture from it.

A student with the *same* architecture as its teacher, taught by it, often beats it: one generation of
Born-Again Networks (Furlanello et al., ICML 2018, arXiv:1805.04770) and the "self-training" of
Yuan et al. (CVPR 2020, arXiv:1909.11723). The curriculum adds the model ``<model>-self`` (the model's
arch and params, no checkpoint) and plans two stages::

    <model>        from labels (distill.scratch_losses); skipped when the model has a checkpoint
    <model>-self   taught by <model> (distill.losses)

With ``teacher_epoch`` the copy learns from the model's snapshot after that epoch
(``<model>@<epoch>``) instead of its final weights, as early-stopped teachers do (Cho & Hariharan
2019); the model must then be trained in the same run.
"""

from __future__ import annotations

import dataclasses

from pydantic import Field

from kdframe import (
    Curriculum,
    CurriculumSpec,
    ModelConfig,
    Params,
    Schedule,
    StagePlan,
    distill_stage,
    snapshot_key,
    teacher_stages,
)

COPY_SUFFIX = "-self"


class SelfDistillationParams(Params):
    """Params of ``self_distillation``."""

    model: str = Field(
        description="Model (key of 'models') that teaches; trained from labels first unless it has a "
        "checkpoint. Its copy '<model>-self' (same arch and params) is the student."
    )
    teacher_epoch: int | None = Field(
        None,
        ge=1,
        description="Teach with the model's snapshot after this epoch of its own stage instead of its "
        "final weights; null uses the final model. Needs the model to be trained in this run.",
    )


def copy_key(model: str) -> str:
    """The key of the student, the copy of ``model``."""
    return f"{model}{COPY_SUFFIX}"


class SelfDistillation(Curriculum):
    """Self-distillation: ``model`` (from labels) -> ``<model>-self`` (same architecture)."""

    def __init__(self, params: SelfDistillationParams) -> None:
        self.params = params

    def extra_models(self, schedule: Schedule) -> dict[str, ModelConfig]:
        base = schedule.models.get(self.params.model)
        if base is None:
            return {}  # check_plan reports the unknown model
        return {copy_key(self.params.model): ModelConfig(arch=base.arch, params=dict(base.params))}

    def plan(self, schedule: Schedule) -> list[StagePlan]:
        model, epoch = self.params.model, self.params.teacher_epoch
        stages = teacher_stages(schedule, [model], set())
        teacher = model
        if epoch is not None:
            teacher = snapshot_key(model, epoch)
            # Keep the snapshot in the model's own stage; without that stage check_plan reports it.
            stages = [
                dataclasses.replace(stage, snapshots=(epoch,)) if stage.student == model else stage for stage in stages
            ]
        stages.append(distill_stage(schedule, copy_key(model), (teacher,)))
        return stages


SPEC = CurriculumSpec(
    name="self_distillation",
    summary="Self-distillation: train a model, then distil its copy '<model>-self' from it "
    "(Furlanello et al. 2018; Yuan et al. 2020).",
    factory=SelfDistillation,
    params=SelfDistillationParams,
    family="self",
)
