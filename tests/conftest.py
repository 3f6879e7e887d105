"""Shared test helpers: they live in :mod:`kdframe.testing` (the pytest plugin kdframe installs) and are
re-exported here so that tests can keep importing them from ``tests.conftest``."""

from __future__ import annotations

import pytest

from kdframe.testing import HookRecorder, tiny_schedule, write_schedule

__all__ = ["HookRecorder", "tiny_schedule", "write_schedule"]


@pytest.fixture
def recorder(kdframe_recorder: HookRecorder) -> HookRecorder:
    """The ``kdframe_recorder`` fixture under its older name."""
    return kdframe_recorder
