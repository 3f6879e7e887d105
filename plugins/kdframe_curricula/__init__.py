"""First-party curricula, registered through the ``kdframe`` entry point like any third-party plugin.

* ``direct`` (teacher -> student, or NOKD without a teacher) and ``ta_chain`` (Mirzadeh et al. 2019);
* ``dgkd``: densely guided KD (Son et al. 2021), every model taught by all larger ones;
* ``early_stopped_teacher``: the student learns from an early snapshot of its teacher (Cho and
  Hariharan 2019);
* ``born_again``: born-again generations of one architecture, optionally ensembled (Furlanello et al.
  2018);
* ``multi_teacher``: several (weighted) teachers at once (Hinton et al. 2015; You et al. 2017).

See docs/curricula.md.
"""

from __future__ import annotations

from kdframe import CurriculumSpec, hookimpl
from kdframe_curricula.born_again import BornAgain, BornAgainParams
from kdframe_curricula.dgkd import DGKD, DGKDParams
from kdframe_curricula.direct import Direct, DirectParams
from kdframe_curricula.early_stopped import EarlyStoppedTeacher, EarlyStoppedTeacherParams
from kdframe_curricula.multi_teacher import MultiTeacher, MultiTeacherParams
from kdframe_curricula.ta_chain import TAChain, TAChainParams


@hookimpl
def kdframe_register_curricula() -> list[CurriculumSpec]:
    """The first-party curricula."""
    return [
        CurriculumSpec(
            name="direct",
            summary="Teacher -> student (the teacher is trained first if it has no checkpoint); "
            "with no teacher, plain training from labels (the NOKD baseline).",
            factory=Direct,
            params=DirectParams,
            family="chain",
        ),
        CurriculumSpec(
            name="ta_chain",
            summary="Teacher-assistant chain (Mirzadeh et al. 2019): teacher -> TA1 -> ... -> TAk -> student.",
            factory=TAChain,
            params=TAChainParams,
            family="chain",
        ),
        CurriculumSpec(
            name="dgkd",
            summary="Densely guided KD (Son et al. 2021): each assistant and the student learn from the "
            "teacher and all larger assistants, with optional random teacher dropout.",
            factory=DGKD,
            params=DGKDParams,
            family="chain",
        ),
        CurriculumSpec(
            name="early_stopped_teacher",
            summary="Early-stopped teacher (Cho & Hariharan 2019): the student learns from the teacher's "
            "snapshot after 'teacher_epoch' epochs.",
            factory=EarlyStoppedTeacher,
            params=EarlyStoppedTeacherParams,
            family="chain",
        ),
        CurriculumSpec(
            name="born_again",
            summary="Born-again networks (Furlanello et al. 2018): generations of one architecture, each "
            "taught by the previous one, optionally evaluated as an ensemble.",
            factory=BornAgain,
            params=BornAgainParams,
            family="self",
        ),
        CurriculumSpec(
            name="multi_teacher",
            summary="Several teachers teach one student at once, optionally weighted "
            "(Hinton et al. 2015; You et al. 2017).",
            factory=MultiTeacher,
            params=MultiTeacherParams,
            family="ensemble",
        ),
    ]
