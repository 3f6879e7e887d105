"""A stage's teachers: frozen, their outputs cached or computed, chosen per batch by the policy.

Teachers stay in eval mode without gradients (their BatchNorm statistics never change). When the
teacher-output cache is valid (:mod:`kdframe.teacher_cache`), each batch gathers the selected
teachers' outputs from it; otherwise only the selected teachers run on the batch. Feature terms tap
the first teacher, whose layers the cache keeps too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from kdframe import precision, teacher_cache
from kdframe.data import AnyDataset, InMemoryDataset
from kdframe.errors import TrainingError
from kdframe.losses import ModelOutputs
from kdframe.stage_setup import StageSetup
from kdframe.teacher_policy import TeacherBatch, TeacherSelection, all_teachers, run_select


def freeze_teacher(teacher: nn.Module) -> None:
    """Eval mode and no gradients: a teacher's weights and BatchNorm statistics never change."""
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)


class StageTeachers:
    """The teachers of one stage and how a batch gets their outputs."""

    def __init__(self, setup: StageSetup, device: torch.device, store: teacher_cache.TeacherCache | None = None) -> None:
        self.setup = setup
        self.device = device
        self.store = store if store is not None else teacher_cache.default_store()
        self.cached: list[teacher_cache.CachedOutputs] | None = None
        self.every_teacher = all_teachers(len(setup.teachers))

    def freeze(self) -> None:
        """Freeze every teacher (see :func:`freeze_teacher`)."""
        for teacher in self.setup.teachers:
            freeze_teacher(teacher)

    def prepare_cache(
        self, data: AnyDataset, eval_batch_size: int, progress: Callable[[str, int], Callable[[int], None]] | None = None
    ) -> None:
        """Compute (or load) every teacher's outputs over the training split when the cache is valid
        and wanted; otherwise the teachers run every batch. ``progress(teacher, total)`` gives the
        callback that hears how many images of a teacher's outputs are computed (not called for
        outputs loaded from the cache)."""
        setup, config = self.setup, self.setup.training
        self.cached = None
        mode = config.teacher_cache
        if mode == "off" or not setup.teachers:
            return
        reason = teacher_cache.invalid_reason(data)
        if reason is not None:
            if mode != "auto":
                raise TrainingError(f"training.teacher_cache is '{mode}', but {reason}. Set it to \"auto\" or \"off\".")
            self.store.say_once(
                f"training.teacher_cache is 'auto', but {reason}: the teachers run every batch (set "
                "training.teacher_cache to \"off\" to silence this)."
            )
            return
        assert isinstance(data, InMemoryDataset)  # invalid_reason() refuses a StreamingDataset
        entries = []
        for index, teacher in enumerate(setup.teachers):
            entry = self.store.outputs(
                teacher,
                setup.teacher_tap if index == 0 else None,
                data.train_images,
                mode=mode,
                batch_size=eval_batch_size,
                channels_last=config.channels_last,
                precision_name=config.precision,
                device=self.device,
                label=f"teacher '{setup.info.teachers[index]}'",
                progress=None if progress is None else progress(setup.info.teachers[index], int(data.train_images.shape[0])),
            )
            if entry is None:
                return
            entries.append(entry)
        self.cached = entries

    def select(self, epoch: int, batch: int, step: int, generator: torch.Generator) -> TeacherSelection:
        """The teachers of a batch: all of them, or those the stage's teacher policy picks."""
        policy = self.setup.teacher_policy
        if policy is None:
            return self.every_teacher
        context = TeacherBatch(epoch, self.setup.training.epochs, batch, step, self.setup.info.teachers, generator)
        return run_select(policy, context, self.setup.policy_provider)

    def outputs(self, images: Tensor, indices: Tensor, kept: tuple[int, ...]) -> list[ModelOutputs]:
        """The kept teachers' outputs for a batch: gathered from the cache, or computed."""
        if self.cached is not None:
            return [self.cached[index].gather(indices, images.device) for index in kept]
        outputs = []
        with torch.no_grad(), precision.autocast(self.setup.training.precision, self.device):
            for index in kept:
                logits = self.setup.teachers[index](images)
                tap = self.setup.teacher_tap if index == 0 else None
                features = tap.take() if tap else {}
                as_float = {path: precision.to_float32(value) for path, value in features.items()}
                outputs.append(ModelOutputs(precision.to_float32(logits), as_float))
        return outputs
