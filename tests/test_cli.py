"""The command line: commands, --help, exit codes and one-paragraph errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_schedule, write_schedule
from kdframe.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kdframe", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "plugins", "schema"):
        assert command in result.stdout
    run_help = run_cli("run", "--help")
    assert "--set" in run_help.stdout and "--out" in run_help.stdout and "--quiet" in run_help.stdout


def test_run_prints_the_results_table(tmp_path, capsys) -> None:
    path = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1}))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet", "--set", "seed=3"]) == 0
    output = capsys.readouterr().out
    assert "stage" in output and "best acc" in output
    for stage in ("teacher", "assistant", "student"):
        assert stage in output
    assert "tensorboard --logdir" in output
    assert json.loads((tmp_path / "run" / "schedule.json").read_text())["seed"] == 3


def test_run_without_the_tensorboard_logger_prints_no_tensorboard_line(tmp_path, capsys) -> None:
    path = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1, "logging.loggers": []}))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "Run folder:" in output and "tensorboard" not in output.lower()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda text: text.replace('"name": "tiny",', '"name": "tiny"'), "line 3, column 3"),
        (lambda text: text.replace('"epochs": 2', '"epochs": "two"'), "training.epochs"),
        (lambda text: text.replace('"ta_chain"', '"ta_chian"'), "Did you mean 'ta_chain'"),
        (lambda text: text.replace('"depth": 2', '"depth": 3'), "models.student.params.depth"),
    ],
)
def test_bad_schedules_exit_2_without_traceback(tmp_path, mutate, expected) -> None:
    path = tmp_path / "bad.json"
    path.write_text(mutate(json.dumps(tiny_schedule(), indent=2)))
    result = run_cli("validate", str(path))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")


def test_debug_shows_the_traceback(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{")
    result = run_cli("--debug", "validate", str(path))
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_missing_data_says_how_to_get_it(tmp_path) -> None:
    schedule = tiny_schedule()
    schedule["data"] = {"dataset": "fashion_mnist", "params": {"root": str(tmp_path / "nowhere")}}
    result = run_cli("validate", str(write_schedule(tmp_path, schedule)))
    assert result.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_lists_stages(tmp_path, capsys) -> None:
    path = write_schedule(tmp_path, tiny_schedule())
    assert main(["validate", str(path)]) == 0
    output = capsys.readouterr().out
    assert "3 stage(s)" in output
    assert "student (plain_cnn), 2 epochs, from assistant: 0.1*cross_entropy + 0.9*hinton_kd" in output


def test_plugins_listing_and_json(capsys) -> None:
    assert main(["plugins", "--kind", "loss"]) == 0
    text = capsys.readouterr().out
    assert "hinton_kd" in text and "plain_cnn" not in text
    assert main(["plugins", "--json", "--params", "hint*"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == ["hinton_kd"]
    assert rows[0]["distribution"] == "kdframe" and "temperature" in rows[0]["params"]["properties"]


def test_schema_command_prints_json_and_writes_a_file(tmp_path, capsys) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == printed
    assert "hinton_kd" in json.dumps(printed)


def test_examples_validate(capsys) -> None:
    for example in sorted((ROOT / "examples").glob("*.json")):
        data = json.loads(example.read_text())
        if "variants" in data or "space" in data:  # a sweep or a tune file: tests/test_sweep.py, tests/test_tune.py
            continue
        if data["data"]["dataset"] == "fashion_mnist" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
            continue
        assert main(["validate", str(example)]) == 0, example


# --- bad input found by trying to break it (issue 11) ------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"curriculum.params.student": "evil\x1b[2J\u202ename"},  # a model the curriculum names
        {"models.student": {"arch": "torchvision", "params": {"name": "evil\x1b[2J\u202ename"}}},
        {"models": {"evil\x1b[2J\u202ename": {"arch": "plain_cnn", "params": {"depth": 2}}}},
    ],
    ids=["curriculum-model", "component-param", "model-key"],
)
def test_names_with_terminal_escapes_are_printed_escaped(tmp_path, changes) -> None:
    path = write_schedule(tmp_path, tiny_schedule(**changes))
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
    assert "evil\\x1b[2J\\u202ename" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "seed=" + "[" * 20_000 + "]" * 20_000], "nested far too deeply"),
        (["--set", "data.params=" + "[" * 80 + "]" * 80], "nested more than"),
        (["--set", "seed=" + "7" * 5000], "holds a number Python cannot read"),
        (["--set", "logging.loggers.\u00b2.name=x"], "use an index from 0"),
        (["--set", "logging.loggers." + "9" * 5000 + ".name=x"], "use an index from 0"),
    ],
    ids=["deep", "deep-after-parse", "huge-int", "superscript-index", "huge-index"],
)
def test_hostile_set_values_exit_2_with_one_paragraph(tmp_path, args, expected) -> None:
    path = write_schedule(tmp_path, tiny_schedule())
    result = run_cli("validate", str(path), *args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr and "unexpectedly" not in result.stderr
    assert len(result.stderr) < 2000


@pytest.mark.parametrize("seeds", ["7" * 5000, "\u00b2", "0,\u0661", "99999999999"])
def test_hostile_sweep_seeds_exit_2(tmp_path, seeds) -> None:
    result = run_cli("sweep", str(ROOT / "examples" / "takd_fashion_mnist.json"), "--seeds", seeds, "--out", str(tmp_path / "s"))
    assert result.returncode == 2, result.stderr
    assert "--seeds" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()


def test_schema_output_to_a_folder_or_a_missing_folder_is_a_clear_error(tmp_path) -> None:
    result = run_cli("schema", "-o", str(tmp_path))
    assert result.returncode == 2 and "is a folder" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("schema", "-o", str(tmp_path / "missing" / "s.json"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "missing").exists()
