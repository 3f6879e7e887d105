"""``history.csv``: per-epoch metrics written when a stage ends, read back as hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdframe import history
from kdframe.errors import RunFolderError
from kdframe.history import HISTORY_FILE, read_history, write_history
from kdframe.runner import run_schedule
from kdframe.testing import tiny_schedule, write_schedule

ROWS = [
    {"train/loss": 1.25, "train/acc": 40.0, "test/acc": 50.0, "lr": 0.1, "time/epoch_s": 0.3},
    {"train/loss": 0.75, "train/acc": 60.5, "test/acc": 62.25, "lr": 0.05, "time/epoch_s": 0.2, "loss/kd": 0.1},
]


def test_round_trip_keeps_every_value_exactly(tmp_path: Path) -> None:
    write_history(tmp_path, ROWS)
    text = (tmp_path / HISTORY_FILE).read_text()
    assert text.splitlines()[0] == "epoch,train/loss,train/acc,test/acc,lr,time/epoch_s,loss/kd"
    rows = read_history(tmp_path)
    assert rows == [{"epoch": 1.0, **ROWS[0]}, {"epoch": 2.0, **ROWS[1]}]  # a missing cell stays missing


def test_nothing_is_written_for_no_epochs_and_nothing_read_from_no_file(tmp_path: Path) -> None:
    assert write_history(tmp_path, []) is None
    assert not (tmp_path / HISTORY_FILE).exists()
    assert read_history(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("epoch,test/acc\n1,50\n2,oops\n3,inf\nx,70\n4,nan\n5,55\n", [{"epoch": 1.0, "test/acc": 50.0}, {"epoch": 2.0}, {"epoch": 3.0}, {"epoch": 4.0}, {"epoch": 5.0, "test/acc": 55.0}]),
        ("epoch,test/acc\n1,50,99,100\n", [{"epoch": 1.0, "test/acc": 50.0}]),  # extra cells are ignored
    ],
)
def test_cells_that_are_not_finite_numbers_are_left_out(tmp_path: Path, content: str, expected) -> None:
    (tmp_path / HISTORY_FILE).write_text(content)
    assert read_history(tmp_path) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "first column is not 'epoch'"),
        (b"step,loss\n1,2\n", "first column is not 'epoch'"),
        (b"\xff\xfe\x00garbage", "Cannot read"),
    ],
)
def test_a_file_kdframe_did_not_write_is_an_error_naming_it(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / HISTORY_FILE).write_bytes(content)
    with pytest.raises(RunFolderError, match=message) as error:
        read_history(tmp_path)
    assert str(tmp_path / HISTORY_FILE) in str(error.value)


def test_an_oversized_file_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "MAX_BYTES", 100)
    (tmp_path / HISTORY_FILE).write_text("epoch,test/acc\n" + "1,50\n" * 50)
    with pytest.raises(RunFolderError, match="larger than"):
        read_history(tmp_path)


def test_a_run_writes_each_stage_history(tmp_path: Path) -> None:
    schedule = tiny_schedule(**{"training.epochs": 2})
    schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
    folder, results = run_schedule(write_schedule(tmp_path, schedule), out=tmp_path / "run", quiet=True)
    rows = {row["stage"]: row for row in json.loads((folder / "results.json").read_text())["stages"]}
    for index, name in enumerate(["teacher", "student"]):
        epochs = read_history(folder / "stages" / f"{index:02d}-{name}")
        assert [row["epoch"] for row in epochs] == [1.0, 2.0]
        assert epochs[-1]["test/acc"] == pytest.approx(rows[name]["final_test_acc"], abs=1e-3)
        assert {"train/loss", "train/acc", "test/loss", "lr", "time/epoch_s"} <= set(epochs[-1])
    assert "train/loss/hinton_kd" in read_history(folder / "stages" / "01-student")[0]
