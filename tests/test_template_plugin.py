"""The plugin template (examples/plugin-template), installed by scripts/setup.sh, works through the CLI
like any third-party plugin: its schedule runs with ``kdframe run`` and uses its three components."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdframe.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "examples" / "plugin-template"
COMPONENTS = {
    ("loss", "logit_mimic"),
    ("loss", "pooled_hint"),
    ("model", "mlp"),
    ("curriculum", "self_distillation"),
    ("logger", "csv_metrics"),
}


@pytest.fixture(scope="module")
def installed() -> None:
    from kdframe.plugins import create_plugins

    registry = create_plugins().registry
    found = {(kind, name) for kind, name in COMPONENTS if name in registry.components[kind]}
    assert found == COMPONENTS, "the plugin template is not installed: run ./scripts/setup.sh"


def test_kdframe_run_uses_the_three_template_components(installed, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", str(TEMPLATE / "schedule.json"), "--out", str(out), "--quiet"]) == 0
    assert "net-self" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] is True
    # The curriculum planned the model from labels, then its copy taught by it; both are MLPs.
    rows = [(row["stage"], row["arch"], row["teachers"]) for row in results["stages"]]
    assert rows == [("net", "mlp", []), ("net-self", "mlp", ["net"])]
    assert all(row["final_test_acc"] > 50 for row in results["stages"])  # 4 classes: chance is 25 %
    resolved = json.loads((out / "schedule.json").read_text())
    assert resolved["curriculum"]["name"] == "self_distillation"
    assert "logit_mimic" in [loss["name"] for loss in resolved["distill"]["losses"]]
    assert (out / "stages" / "01-net-self" / "student.pt").is_file()


def test_plugins_listing_names_the_template_distribution(installed, capsys) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = {(row["kind"], row["name"]): row for row in json.loads(capsys.readouterr().out)}
    for key in COMPONENTS:
        assert rows[key]["distribution"] == "kdframe-plugin-template"
        assert rows[key]["plugin"] == "kdframe_template"


def test_schema_covers_the_template_only_when_not_first_party(installed, tmp_path) -> None:
    assert main(["schema", "-o", str(tmp_path / "first.json"), "--first-party"]) == 0
    assert main(["schema", "-o", str(tmp_path / "installed.json")]) == 0
    first_party = json.loads((tmp_path / "first.json").read_text())
    everything = json.loads((tmp_path / "installed.json").read_text())
    assert "mlp" in everything["$defs"]["ModelConfig"]["properties"]["arch"]["enum"]
    assert "mlp" not in first_party["$defs"]["ModelConfig"]["properties"]["arch"]["enum"]
    assert "logit_mimic" in everything["$defs"]["LossConfig"]["properties"]["name"]["enum"]
    assert "logit_mimic" not in first_party["$defs"]["LossConfig"]["properties"]["name"]["enum"]
