"""docs/schedules.md covers every schedule key: its reference section is generated from the schedule
models and current, and every property of the core JSON Schema appears in it."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from kdframe.json_schema import schedule_schema
from kdframe.plugins import create_plugins
from kdframe.registry import KINDS
from kdframe.schedule import Schedule
from kdframe.value_schedule import ScheduledFloat, ValueSchedule

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "schedules.md"


@pytest.fixture(scope="module")
def schedules_doc() -> types.ModuleType:
    """``scripts/schedules_doc.py`` as a module."""
    spec = importlib.util.spec_from_file_location("schedules_doc", ROOT / "scripts" / "schedules_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["schedules_doc"] = module
    spec.loader.exec_module(module)
    return module


def generated_section(module: types.ModuleType) -> str:
    text = DOC.read_text()
    return text[text.index(module.BEGIN) : text.index(module.END)]


def documented_keys(section: str) -> list[str]:
    """The key path in the first cell of every table row of the generated section."""
    return re.findall(r"^\| `([^`]+)`", section, re.MULTILINE)


def test_reference_section_is_current(schedules_doc: types.ModuleType) -> None:
    text = DOC.read_text()
    assert schedules_doc.updated(text) == text, "run: .venv/bin/python scripts/schedules_doc.py"


def test_every_core_schema_property_is_documented(schedules_doc: types.ModuleType) -> None:
    schema = schedule_schema(create_plugins().registry)
    keys = documented_keys(generated_section(schedules_doc))
    top_level = {key for key in keys if "." not in key and "[" not in key}
    assert set(schema["properties"]) <= top_level
    last_segments = {re.split(r"[.]", key)[-1].removesuffix("[]") for key in keys}
    component_prefixes = tuple(f"{kind}_" for kind in KINDS)
    core = {name: definition for name, definition in schema["$defs"].items() if not name.startswith(component_prefixes)}
    assert {"DataConfig", "Training", "LossConfig", "ValueSchedule"} <= set(core)
    for name, definition in core.items():
        for key in definition.get("properties", {}):
            assert key in last_segments, f"schedule key '{key}' of {name} is missing from docs/schedules.md"


def test_every_key_has_a_type_and_a_description(schedules_doc: types.ModuleType) -> None:
    rows = schedules_doc.rows(Schedule)
    assert len(rows) > 40
    for row in rows:
        assert row.json_type, f"{row.path} has no type"
        assert row.description.strip(), f"{row.path} has no description (add one to its Field)"
        assert row.default, f"{row.path} has no default column"


def test_rows_follow_nested_models_lists_dicts_and_tagged_unions(schedules_doc: types.ModuleType) -> None:
    class Inner(BaseModel):
        """An inner object."""

        x: int = Field(1, ge=0, le=9, description="X.")

    class Outer(BaseModel):
        a: Inner = Field(default_factory=Inner, description="A.")
        b: list[Inner] = Field(default_factory=list, min_length=1, description="B.")
        c: dict[str, Inner] = Field(default_factory=dict, description="C.")
        d: ScheduledFloat = Field(0.5, description="D.")
        e: Inner | None = None

    shared: list[type[BaseModel]] = []
    rows = {row.path: row for row in schedules_doc.rows(Outer, shared=shared)}
    assert list(rows) == ["a", "a.x", "b", "b[].x", "c", "c.<name>.x", "d", "e", "e.x"]
    assert shared == [ValueSchedule]
    assert rows["a.x"].constraints == ">= 0, <= 9"
    assert rows["a"].default == "the defaults below"
    assert rows["b"].json_type == "list of objects" and rows["b"].constraints == "length >= 1"
    assert rows["c"].json_type == "object of objects"
    assert rows["d"].json_type == "number or ValueSchedule" and rows["d"].default == "`0.5`"
    assert rows["e"].json_type == "object or null" and rows["e"].description == "An inner object."


def test_optimizer_variants_are_told_apart(schedules_doc: types.ModuleType) -> None:
    section = generated_section(schedules_doc)
    assert "| `training.optimizer.momentum` when `name` is `sgd` |" in section
    assert "| `training.optimizer.betas` when `name` is `adam` |" in section
    assert "| `training.lr_schedule.milestones` when `name` is `step` |" in section


def test_check_mode_fails_on_a_stale_file(schedules_doc: types.ModuleType, tmp_path: Path) -> None:
    stale = tmp_path / "schedules.md"
    stale.write_text(f"# Schedules\n\n{schedules_doc.BEGIN}\n| `gone` | old |\n{schedules_doc.END}\n")
    original = schedules_doc.DOC
    schedules_doc.DOC = stale
    try:
        assert schedules_doc.main(["--check"]) == 1
        assert "`gone`" in stale.read_text()
        assert schedules_doc.main([]) == 0
        assert schedules_doc.main(["--check"]) == 0
        assert "`gone`" not in stale.read_text() and "| `data.batch_size` |" in stale.read_text()
    finally:
        schedules_doc.DOC = original
