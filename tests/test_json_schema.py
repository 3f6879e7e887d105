"""The schedule JSON Schema: component params included, examples valid, committed copy up to date."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import tiny_schedule
from kdframe.cli import main
from kdframe.json_schema import first_party_registry, schedule_schema
from kdframe.plugins import create_plugins

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema() -> dict:
    return schedule_schema(create_plugins().registry)


def test_examples_and_fixtures_validate(schema) -> None:
    # Every schedule under examples/, the template plugin's too (sweep and tune files have their own
    # formats; the bases inline in them are schedules).
    examples, inline = [], []
    for path in sorted((ROOT / "examples").rglob("*.json")):
        data = json.loads(path.read_text())
        if "variants" in data or "space" in data:
            inline += [data["base"]] if isinstance(data["base"], dict) else []
        else:
            examples.append(path)
    assert len(examples) >= 3 and ROOT / "examples" / "plugin-template" / "schedule.json" in examples
    for example in examples:
        jsonschema.validate(json.loads(example.read_text()), schema)
    assert len(inline) >= 5  # the regime sweeps and the tune examples
    for base in inline:
        jsonschema.validate(base, schema)
    jsonschema.validate(tiny_schedule(), schema)


@pytest.mark.parametrize(
    "change",
    [
        {"distill": {"losses": [{"name": "hinton_kd", "params": {"temprature": 4}}]}},
        {"distill": {"losses": [{"name": "hinton_kd", "params": {"temperature": "hot"}}]}},
        {"distill": {"losses": [{"name": "no_such_loss"}]}},
        {"models": {"student": {"arch": "plain_cnn", "params": {"depth": 3}}}},
        {"data": {"dataset": "synthetic", "params": {"num_clases": 3}}},
        {"curriculum": {"name": "direct", "params": {"pupil": "student"}}},
    ],
)
def test_bad_component_params_are_rejected(schema, change) -> None:
    schedule = {**tiny_schedule(), **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(schedule, schema)


def test_committed_schema_matches_the_first_party_plugins() -> None:
    committed = json.loads((ROOT / "docs" / "schedule.schema.json").read_text())
    assert committed == schedule_schema(first_party_registry()), (
        "docs/schedule.schema.json is stale: run 'kdframe schema --first-party -o docs/schedule.schema.json'"
    )


def test_first_party_registry_holds_only_kdframe_components() -> None:
    components = list(first_party_registry().iter())
    assert components and {c.provider.distribution for c in components} == {"kdframe"}
    installed = {(c.kind, c.name) for c in create_plugins().registry.iter() if c.provider.distribution == "kdframe"}
    assert {(c.kind, c.name) for c in components} == installed


def test_schema_command_covers_everything_installed_unless_first_party(tmp_path, schema) -> None:
    assert main(["schema", "-o", str(tmp_path / "all.json")]) == 0
    assert json.loads((tmp_path / "all.json").read_text()) == schema
    assert main(["schema", "--first-party", "-o", str(tmp_path / "first.json")]) == 0
    committed = json.loads((ROOT / "docs" / "schedule.schema.json").read_text())
    assert json.loads((tmp_path / "first.json").read_text()) == committed
