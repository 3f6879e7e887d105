"""kdframe's first-party loss strategies, in the three families of Gou et al. (2020).

* label: ``cross_entropy``
* response (logits): ``hinton_kd``, ``dkd``, ``dist``, ``logit_standard_kd``
* feature (intermediate maps, with adapters): ``fitnet``, ``at``, ``nst``, ``vid``, ``ofd``, ``ft``
  (pre-training phase: paraphraser), ``ab`` (pre-training phase: initialisation)
* relation (between samples): ``rkd_distance``, ``rkd_angle``, ``sp``, ``cc``, ``pkt``, ``crd``

Each module documents its terms' formulas, references, reductions and edge cases; docs/methods.md
lists them all with a JSON snippet each.

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
