"""First-party curricula: ``direct`` (teacher -> student, or NOKD without a teacher) and ``ta_chain``.

Registered through the ``kdframe`` entry point like any third-party plugin.
"""

from __future__ import annotations

from kdframe import CurriculumSpec, hookimpl
from kdframe_curricula.direct import Direct, DirectParams
from kdframe_curricula.ta_chain import TAChain, TAChainParams


@hookimpl
def kdframe_register_curricula() -> list[CurriculumSpec]:
    """The ``direct`` and ``ta_chain`` curricula."""
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
    ]
