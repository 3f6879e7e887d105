"""``kdframe report`` of run folders: a run's curves, and several runs compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kdframe.cli import main
from kdframe.errors import SweepError
from kdframe.history import write_history
from kdframe.run_report import CURVES_PNG, compare_text, read_run, run_labels, run_text, stage_folder

PNG = b"\x89PNG\r\n\x1a\n"


def stage_row(stage: str, index: int, final: float, *, teachers: tuple[str, ...] = (), checkpoint: str | None = None) -> dict[str, Any]:
    return {
        "stage": stage,
        "model": stage,
        "arch": "plain_cnn",
        "teachers": list(teachers),
        "epochs": 2,
        "epochs_run": 2,
        "final_test_acc": final,
        "best_test_acc": final + 0.5,
        "best_epoch": 1,
        "params": 1000 * (index + 1),
        "wall_time_s": 3.0,
        "checkpoint": checkpoint if checkpoint is not None else f"stages/{index:02d}-{stage}/student.pt",
        "collapsed": False,
    }


def make_run(folder: Path, name: str, accuracies: dict[str, float], *, histories: bool = True, finished: bool = True) -> Path:
    """A run folder as kdframe writes it: results.json and, per stage, history.csv."""
    rows = []
    for index, (stage, final) in enumerate(accuracies.items()):
        rows.append(stage_row(stage, index, final, teachers=tuple(list(accuracies)[:index][-1:])))
        stage_folder = folder / "stages" / f"{index:02d}-{stage}"
        stage_folder.mkdir(parents=True)
        if histories:
            write_history(stage_folder, [{"train/loss": 1.0, "test/acc": final - 5}, {"train/loss": 0.5, "test/acc": final}])
    (folder / "schedule.json").write_text("{}")
    (folder / "results.json").write_text(json.dumps({"name": name, "finished": finished, "stages": rows}))
    return folder


def test_a_run_report_draws_its_curves(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "run", "takd", {"teacher": 90.0, "student": 80.0})
    run = read_run(folder)
    assert list(run.curves) == ["teacher", "student"] and run.curves["student"][-1] == {"epoch": 2.0, "train/loss": 0.5, "test/acc": 80.0}
    text = run_text(folder)
    assert f"Curves: {folder / CURVES_PNG}" in text and "80.00" in text
    assert (folder / CURVES_PNG).read_bytes().startswith(PNG)
    elsewhere = tmp_path / "elsewhere.png"
    assert f"Curves: {elsewhere}" in run_text(folder, elsewhere) and elsewhere.read_bytes().startswith(PNG)


def test_a_run_without_histories_says_so(tmp_path: Path) -> None:
    folder = make_run(tmp_path / "old", "old", {"student": 70.0}, histories=False)
    assert "No curves: no stage has a history.csv" in run_text(folder)
    assert not (folder / CURVES_PNG).exists()


def test_a_checkpoint_path_outside_the_run_folder_is_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    assert stage_folder(folder, {"checkpoint": "../../etc/student.pt"}) is None
    assert stage_folder(folder, {"checkpoint": "student.pt"}) is None  # the run folder itself
    assert stage_folder(folder, {"checkpoint": ""}) is None
    assert stage_folder(folder, {"checkpoint": "stages/00-a/student.pt"}) == (folder / "stages" / "00-a").resolve()


def test_several_runs_are_compared_by_their_final_students(tmp_path: Path, capsys) -> None:
    nokd = make_run(tmp_path / "nokd", "nokd", {"student": 71.0})
    takd = make_run(tmp_path / "takd", "takd", {"teacher": 90.0, "assistant": 85.0, "student": 74.0}, finished=False)
    old = make_run(tmp_path / "old", "old", {"student": 69.0}, histories=False)
    text = compare_text([nokd, takd, old])
    assert "3 runs, each by its final student" in text and "run: stage" in text
    assert "nokd: student" in text and "takd: student" in text and "takd: assistant" not in text
    assert "Not finished: takd." in text and "Add --plot FILE.png" in text
    plot = tmp_path / "compare.png"
    assert main(["report", str(nokd), str(takd), str(old), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert f"Curves: {plot} (no history.csv, so no curve: old)" in printed
    assert plot.read_bytes().startswith(PNG)


def test_run_labels_are_the_folder_names_unless_two_share_one(tmp_path: Path) -> None:
    assert run_labels([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
    same = [tmp_path / "x" / "seed-0", tmp_path / "y" / "seed-0"]
    assert run_labels(same) == [str(path) for path in same]


def test_report_errors_exit_2(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run", "r", {"student": 70.0})
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    assert main(["report", str(run), str(sweep)]) == 2
    assert "is not a run folder: several folders are compared only when each is a run folder" in capsys.readouterr().err
    assert main(["report", str(sweep), "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot is for run folders" in capsys.readouterr().err
    assert main(["report", str(run), "--plot", str(tmp_path / "missing" / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "Cannot write the plot" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.json").write_text(json.dumps({"name": "e", "finished": False, "stages": []}))
    with pytest.raises(SweepError, match="No stage has finished yet"):
        compare_text([run, empty])
    (empty / "results.json").write_text(json.dumps({"name": "e", "stages": [{"stage": 3}]}))
    with pytest.raises(SweepError, match="malformed stage row"):
        read_run(empty)


def test_compared_compression_rows_are_named_by_run_without_a_borrowed_teacher(tmp_path: Path) -> None:
    figures = {
        "params": 1000, "macs": 5000, "size_mb": 0.01, "latency": {"median_ms": 0.2},
        "throughput": {"images_per_s": 9000, "batch": 64}, "reference": "teacher", "device": "cpu", "threads": 2,
        "vs_reference": {"params_x": 10.0, "macs_x": 20.0, "speedup_x": 5.0, "acc_delta": -2.0},
        "reference_figures": {"params": 10000, "macs": 100000, "size_mb": 0.1, "latency": {"median_ms": 1.0},
                              "throughput": {"images_per_s": 900, "batch": 64}, "test_acc": 90.0},
    }
    folders = []
    for name in ("a", "b"):
        folder = make_run(tmp_path / name, name, {"student": 70.0})
        results = json.loads((folder / "results.json").read_text())
        results["stages"][0]["compression"] = figures
        (folder / "results.json").write_text(json.dumps(results))
        folders.append(folder)
    text = compare_text(folders)
    compression = text[text.index("Compression vs"):]
    assert "a: student" in compression and "b: student" in compression
    assert "(checkpoint)" not in compression  # each run's ratios are to its own teacher
    assert compression.startswith("Compression vs each run's own teacher (fp32")


def test_a_run_without_history_csv_gets_its_curves_from_tensorboard(tmp_path: Path) -> None:
    from kdframe.runner import run_schedule
    from kdframe.testing import tiny_schedule, write_schedule

    schedule = tiny_schedule(**{"training.epochs": 2, "compression.enabled": False})
    schedule["curriculum"] = {"name": "direct", "params": {"teacher": "teacher", "student": "student"}}
    folder, _ = run_schedule(write_schedule(tmp_path, schedule), out=tmp_path / "run", quiet=True)
    written = read_run(folder).curves
    for history in folder.glob("stages/*/history.csv"):
        history.unlink()  # as a run of an earlier kdframe left it
    from_events = read_run(folder).curves
    assert list(from_events) == ["teacher", "student"]
    for stage, rows in from_events.items():
        assert [row["epoch"] for row in rows] == [1.0, 2.0]
        for key in ("test/acc", "train/loss"):
            assert [row[key] for row in rows] == pytest.approx([row[key] for row in written[stage]], rel=1e-6)
        assert not [key for row in rows for key in row if key.startswith("batch/")]
    assert "Curves:" in run_text(folder)
    # Damaged events cost only the curves.
    for events in folder.glob("tensorboard/*/events.*"):
        events.write_bytes(b"\x00garbage")
    assert read_run(folder).curves == {}
