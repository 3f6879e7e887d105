"""kdframe's first-party loss strategies, one per family of Gou et al. (2020):

==============  =========  ===============================================================
name            family     term
==============  =========  ===============================================================
cross_entropy   label      CE(s, y), optional label smoothing; needs no teacher
hinton_kd       response   T^2 * KL(softmax(t/T) || softmax(s/T)), Hinton et al. 2015
fitnet          feature    MSE(r(f_s), f_t) with a trained regressor r, Romero et al. 2015
rkd_distance    relation   Huber(psi_s, psi_t) of normalised pairwise distances, Park et al. 2019
==============  =========  ===============================================================

A stage's loss is ``sum(weight_i * term_i)`` with the weights in the schedule; Hinton's classic
``(1 - a) * CE + a * T^2 * KL`` is ``cross_entropy`` with weight ``1 - a`` plus ``hinton_kd`` with
weight ``a``. The formulas, reductions and edge cases are documented in each module.

The plugin is registered through the ``kdframe`` entry point ``kdframe_losses`` and uses only
kdframe's public API, like a third-party plugin would.
"""

from __future__ import annotations

from kdframe import LossSpec, hookimpl
from kdframe_losses.feature import FITNET
from kdframe_losses.label import CROSS_ENTROPY
from kdframe_losses.relation import RKD_DISTANCE
from kdframe_losses.response import HINTON_KD


@hookimpl
def kdframe_register_losses() -> list[LossSpec]:
    """Register ``cross_entropy``, ``hinton_kd``, ``fitnet`` and ``rkd_distance``."""
    return [CROSS_ENTROPY, HINTON_KD, FITNET, RKD_DISTANCE]
