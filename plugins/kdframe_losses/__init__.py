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
from kdframe_losses import (
    activation_boundaries,
    attention,
    crd,
    factor_transfer,
    feature,
    label,
    nst,
    ofd,
    relation,
    response,
    vid,
)

#: Modules in the order their components are listed; each exposes ``SPECS``.
MODULES = (label, response, feature, attention, nst, vid, ofd, factor_transfer, activation_boundaries, relation, crd)


@hookimpl
def kdframe_register_losses() -> list[LossSpec]:
    """Register every loss strategy of this plugin."""
    return [spec for module in MODULES for spec in module.SPECS]
