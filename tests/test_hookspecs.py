"""Every hook is documented, and every trainer event is exercised by the recorder in the tests."""

from __future__ import annotations

import inspect

from tests.conftest import HookRecorder
from kdframe import hookspecs

HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("kdframe_") and callable(fn)}


def test_every_hook_is_prefixed_and_documented() -> None:
    assert len(HOOKS) == 15
    for name, function in HOOKS.items():
        doc = inspect.getdoc(function) or ""
        assert len(doc.splitlines()[0]) > 20, f"{name} lacks a summary line"
        parameters = [p for p in inspect.signature(function).parameters]
        for parameter in parameters:
            assert f"{parameter}:" in doc, f"{name} does not document its argument '{parameter}'"


def test_every_event_hook_is_recorded_by_the_test_recorder() -> None:
    events = {name for name in HOOKS if name.startswith("kdframe_on_")}
    recorded = {name for name in vars(HookRecorder) if name.startswith("kdframe_on_")}
    assert events == recorded


def test_module_docstring_lists_every_event_in_order() -> None:
    doc = hookspecs.__doc__ or ""
    positions = [doc.index(name) for name in (
        "kdframe_on_run_start", "kdframe_on_stage_start", "kdframe_on_epoch_start", "kdframe_on_batch_start",
        "kdframe_on_eval_end", "kdframe_on_epoch_end", "kdframe_on_stage_end", "kdframe_on_run_end",
    )]
    assert positions == sorted(positions)
    assert "kdframe_on_exception" in doc
