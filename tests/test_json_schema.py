"""The schedule JSON Schema: component params included, examples valid, committed copy up to date."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import tiny_schedule
from kdframe.json_schema import schedule_schema
from kdframe.plugins import create_plugins

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema() -> dict:
    return schedule_schema(create_plugins().registry)


def test_examples_and_fixtures_validate(schema) -> None:
    examples = [path for path in sorted((ROOT / "examples").glob("*.json")) if "variants" not in json.loads(path.read_text())]
    assert len(examples) >= 3
    for example in examples:
        jsonschema.validate(json.loads(example.read_text()), schema)
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


def test_committed_schema_matches_the_installed_plugins(schema) -> None:
    committed = json.loads((ROOT / "docs" / "schedule.schema.json").read_text())
    assert committed == schema, "docs/schedule.schema.json is stale: run 'kdframe schema -o docs/schedule.schema.json'"
