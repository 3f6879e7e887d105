"""The ``ta_chain`` curriculum: teacher -> TA1 -> ... -> TAk -> student (Mirzadeh et al. 2019)."""

from __future__ import annotations

from pydantic import Field

from kdframe import Curriculum, Params, Schedule, StagePlan, distill_stage, teacher_stages


class TAChainParams(Params):
    """Params of ``ta_chain``."""

    teacher: str = Field(
        description="The largest model. Without a checkpoint it is first trained from labels in its own stage."
    )
    assistants: list[str] = Field(
        default_factory=list,
        description="Teacher assistants from largest to smallest; each is taught by the previous "
        "model in the chain. An empty list gives plain teacher -> student KD.",
    )
    student: str = Field(description="The final, smallest model, taught by the last assistant.")


class TAChain(Curriculum):
    """Improved KD via teacher assistants (Mirzadeh et al., AAAI 2020, arXiv:1902.03393).

    Stages: the teacher from labels (if it has no checkpoint), then each assistant taught by the model
    before it in the chain, then the student taught by the last assistant. An assistant that has a
    checkpoint is used as it is, not retrained; a teacher that no stage learns from (because the
    first assistant has a checkpoint) is not trained.
    """

    def __init__(self, params: TAChainParams) -> None:
        self.params = params

    def plan(self, schedule: Schedule) -> list[StagePlan]:
        chain = [self.params.teacher, *self.params.assistants, self.params.student]
        distill_stages = []
        for previous, current in zip(chain, chain[1:]):
            config = schedule.models.get(current)
            if current != self.params.student and config is not None and config.checkpoint is not None:
                continue  # a pre-trained assistant teaches the next model as it is
            distill_stages.append(distill_stage(schedule, current, (previous,)))
        # The teacher is trained from labels only when some stage learns from it.
        needed = [self.params.teacher] if any(self.params.teacher in s.teachers for s in distill_stages) else []
        return teacher_stages(schedule, needed, set()) + distill_stages
