"""The contract every registered loss strategy meets, checked on the same inputs for all of them.

The checks live in :mod:`kdframe.testing` so that third-party losses are held to the same contract.
"""

from __future__ import annotations

import pytest

from kdframe.plugins import create_plugins
from kdframe.testing import check_loss_computes, check_loss_documented, check_loss_params

REGISTRY = create_plugins().registry
LOSSES = [component.spec for component in REGISTRY.iter("loss")]


def test_every_family_is_represented() -> None:
    families = {spec.family for spec in LOSSES}
    assert {"label", "response", "feature", "relation"} <= families


@pytest.mark.parametrize("spec", LOSSES, ids=lambda spec: spec.name)
def test_spec_is_documented(spec) -> None:
    check_loss_documented(spec)


@pytest.mark.parametrize("spec", LOSSES, ids=lambda spec: spec.name)
def test_params_forbid_unknown_fields_and_round_trip(spec) -> None:
    check_loss_params(spec)


@pytest.mark.parametrize("spec", LOSSES, ids=lambda spec: spec.name)
def test_default_build_gives_a_finite_scalar_with_gradients(spec) -> None:
    check_loss_computes(spec)
