"""Sweeps in parallel: --jobs N, workers that join by lock like a job array, a killed worker's run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from kdframe.cli import main
from kdframe.errors import RunFolderError, SweepError
from kdframe.runner import resume_run
from kdframe.sweep import join_sweep, run_sweep
from tests.test_sweep import base_schedule, stage_rows, write_schedule, write_sweep

pytestmark = pytest.mark.filterwarnings("ignore:Stage .* collapsed")


def sweep_file(folder: Path, epochs: int = 1, train_size: int = 64) -> Path:
    """The three-variant tiny sweep (NOKD, BLKD, TAKD x 2 seeds), the teacher shared across seeds."""
    folder.mkdir(parents=True, exist_ok=True)
    write_schedule(folder, base_schedule(**{"training.epochs": epochs, "data.params.train_size": train_size}), "base.json")
    return write_sweep(folder, "base.json", share_across_seeds=["teacher"])


def kdframe(*args: str, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kdframe", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every trained ``student.pt`` of a sweep, by path relative to the sweep folder."""
    return {
        str(path.relative_to(folder)): torch.load(path, weights_only=True)["state_dict"]
        for path in sorted(folder.glob("*/seed-*/stages/*/student.pt"))
    }


def assert_same_results(first: Path, second: Path) -> None:
    a, b = weights(first), weights(second)
    assert sorted(a) == sorted(b) and a
    for name in a:
        assert all(torch.equal(a[name][key], b[name][key]) for key in a[name]), name
    accuracies = [[(run, row["stage"], row["final_test_acc"]) for run, row in stage_rows(folder)] for folder in (first, second)]
    assert accuracies[0] == accuracies[1]


def assert_each_stage_trained_once(folder: Path) -> None:
    """Every planned stage training happened exactly once, in the run the plan names."""
    plan = json.loads((folder / "sweep.json").read_text())
    planned = sorted((run["folder"], entry["stage"]) for run in plan["runs"] for entry in run["trains"])
    trained = sorted((run, row["stage"]) for run, row in stage_rows(folder))
    assert trained == planned
    fingerprints = [entry["fingerprint"] for run in plan["runs"] for entry in run["trains"] if entry["fingerprint"]]
    assert len(fingerprints) == len(set(fingerprints))
    assert plan["stages_reused"] == 3 and plan["finished"] is True  # the teacher, reused by 3 runs


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> Path:
    """The sweep run one run after another in this process, with one thread."""
    folder = tmp_path_factory.mktemp("sequential")
    out, _ = run_sweep(sweep_file(folder, epochs=3, train_size=256), out=folder / "out", quiet=True, threads=1, log=None)
    return out


def test_two_jobs_give_bit_identical_results_and_train_each_shared_stage_once(tmp_path: Path, sequential: Path) -> None:
    out, report = run_sweep(sweep_file(tmp_path, epochs=3, train_size=256), out=tmp_path / "out", quiet=True, jobs=2, log=None)
    assert json.loads((out / "sweep.json").read_text())["threads"] == 1  # 2 threads / 2 jobs
    assert_same_results(sequential, out)
    assert_each_stage_trained_once(out)
    workers = {run["worker"] for run in json.loads((out / "sweep.json").read_text())["runs"]}
    assert len(workers) == 2  # both worker processes took runs
    assert sorted(path.name for path in (out / "logs").iterdir()) == ["worker-1.log", "worker-2.log"]
    assert [row.n for row in report.rows] == [2, 2, 2]


def test_a_killed_workers_run_is_resumed_by_another_nothing_trained_twice(tmp_path: Path, sequential: Path) -> None:
    out = tmp_path / "out"
    coordinator = kdframe("sweep", str(sweep_file(tmp_path, epochs=3, train_size=256)), "--out", str(out), "--jobs", "2", "--quiet")
    victim, kept = None, {}
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and coordinator.poll() is None:
        try:
            runs = json.loads((out / "sweep.json").read_text())["runs"]
        except (OSError, ValueError, KeyError):
            runs = []
        for run in runs:
            # A run in the middle of a stage: one epoch saved (state.pt), the stage not finished.
            stages = out / run["folder"] / "stages"
            if run.get("status") == "running" and any(
                (stage / "state.pt").is_file() and not (stage / "student.pt").is_file() for stage in stages.glob("*")
            ):
                victim = run
                kept = {path: path.stat().st_mtime_ns for path in stages.glob("*/student.pt")}
                os.kill(int(run["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
                break
        time.sleep(0.01)
    output, _ = coordinator.communicate(timeout=600)
    assert victim is not None, output
    assert coordinator.returncode == 0, output
    assert "was killed by signal 9" in output
    logs = "".join(path.read_text() for path in (out / "logs").glob("*.log"))
    assert f"Resuming {victim['folder']}" in logs
    for path, mtime in kept.items():  # stages that had finished were not trained again
        assert path.stat().st_mtime_ns == mtime
    assert_same_results(sequential, out)
    assert_each_stage_trained_once(out)


def test_workers_on_two_hosts_share_a_planned_folder(tmp_path: Path, sequential: Path) -> None:
    """Two worker processes joining one planned folder, as two machines sharing it would."""
    out = tmp_path / "out"
    planned = kdframe("sweep", str(sweep_file(tmp_path, epochs=3, train_size=256)), "--out", str(out), "--plan-only", "--threads", "1")
    text, _ = planned.communicate(timeout=300)
    assert planned.returncode == 0 and f"kdframe sweep --join {out}" in text, text
    assert not list(out.glob("*/seed-*"))  # nothing ran
    hosts = [kdframe("sweep", "--join", str(out), "--quiet") for _ in range(2)]
    outputs = [host.communicate(timeout=600)[0] for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], outputs
    assert_same_results(sequential, out)
    assert_each_stage_trained_once(out)
    assert len({run["worker"] for run in json.loads((out / "sweep.json").read_text())["runs"]}) == 2
    assert (out / "results.md").is_file()


def test_join_resumes_a_sweep_that_stopped(tmp_path: Path, sequential: Path) -> None:
    out, _ = run_sweep(sweep_file(tmp_path, epochs=3, train_size=256), out=tmp_path / "out", quiet=True, threads=1, plan_only=True, log=None)
    lines: list[str] = []
    _, report = join_sweep(out, log=lines.append, quiet=True)
    assert_same_results(sequential, out)
    assert len(lines) == 6 and report is not None
    lines.clear()
    join_sweep(out, log=lines.append)  # finished already: nothing to do
    assert lines == []


def test_sweep_folder_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(SweepError, match="is not a sweep folder"):
        join_sweep(tmp_path)
    assert main(["sweep"]) == 2
    assert "Give either a sweep file" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "s.json"), "--join", str(tmp_path)]) == 2
    assert main(["sweep", "--join", str(tmp_path), "--jobs", "0"]) == 2
    assert "--jobs must be at least 1 (got 0)" in capsys.readouterr().err
    (tmp_path / "sweep.json").write_text(json.dumps({"variants": {}, "seeds": [0], "runs": [{"folder": "A/seed-0"}]}))
    with pytest.raises(SweepError, match="written by an earlier kdframe"):
        join_sweep(tmp_path)
    with pytest.raises(RunFolderError, match="is a sweep folder, not a run folder. Continue the sweep with: kdframe sweep --join"):
        resume_run(tmp_path)
