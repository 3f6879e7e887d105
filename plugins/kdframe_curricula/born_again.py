"""The ``born_again`` curriculum: Born-Again Networks (Furlanello et al., ICML 2018, arXiv:1805.04770)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pydantic import Field
from torch import Tensor, nn

from kdframe import Curriculum, ModelConfig, Params, Schedule, StagePlan, distill_stage, teacher_stages


class BornAgainParams(Params):
    """Params of ``born_again``."""

    model: str = Field(
        description="Model (key of 'models') of generation 0, trained from labels unless it has a "
        "checkpoint. Generation k is the model '<model>-gen<k>', with the same arch and params."
    )
    generations: int = Field(
        ge=1,
        description="Number of student generations after generation 0; generation k is taught by "
        "generation k-1.",
    )
    ensemble: bool = Field(
        False,
        description="Add a final stage '<model>-ensemble' that evaluates the mean softmax of all "
        "generations, generation 0 included (it trains nothing).",
    )


class SoftmaxEnsemble(nn.Module):
    """Returns ``log(mean_i softmax(model_i(x)))``: log-probabilities, usable as logits.

    Their argmax is the ensemble's prediction and their cross-entropy its loss.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: Tensor) -> Tensor:
        log_probs = torch.stack([torch.log_softmax(member(images), dim=1) for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def generation_key(model: str, generation: int) -> str:
    """The model key of ``generation`` (0 is the model itself)."""
    return model if generation == 0 else f"{model}-gen{generation}"


class BornAgain(Curriculum):
    """Born-Again Neural Networks (Furlanello, Lipton, Tschannen, Itti and Anandkumar, ICML 2018,
    arXiv:1805.04770).

    A student with the *same* architecture as its teacher, taught by it, often outperforms it; repeat
    for several generations and, optionally, ensemble them (BAN ensembles). The curriculum adds the
    models ``<model>-gen1`` ... ``<model>-genN`` (copies of the model's arch and params, without a
    checkpoint). Stages: generation 0 from labels (unless it has a checkpoint), generation 1 taught by
    generation 0, ..., generation N taught by generation N-1, and, with ``ensemble``, an ensemble stage
    ``<model>-ensemble`` over all generations.
    """

    def __init__(self, params: BornAgainParams) -> None:
        self.params = params

    def extra_models(self, schedule: Schedule) -> dict[str, ModelConfig]:
        base = schedule.models.get(self.params.model)
        if base is None:
            return {}  # check_plan reports the unknown model
        return {
            generation_key(self.params.model, k): ModelConfig(arch=base.arch, params=dict(base.params))
            for k in range(1, self.params.generations + 1)
        }

    def plan(self, schedule: Schedule) -> list[StagePlan]:
        names = [generation_key(self.params.model, k) for k in range(self.params.generations + 1)]
        stages = teacher_stages(schedule, names[:1], set())
        stages += [distill_stage(schedule, current, (previous,)) for previous, current in zip(names, names[1:])]
        if self.params.ensemble:
            name = f"{self.params.model}-ensemble"
            stages.append(
                StagePlan(student=name, teachers=tuple(names), losses=(), name=name, kind="evaluate", build=SoftmaxEnsemble, arch="ensemble")
            )
        return stages

