"""Full-state checkpoints and ``kdframe resume``: SIGKILL at many points, then resume, gives the
uninterrupted run's weights bit for bit; SIGTERM stops cleanly; a changed schedule is refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from kdframe import hookimpl
from kdframe.checkpoints import load_state_dict
from kdframe.cli import main
from kdframe.errors import PluginError, ResumeError, RunFolderError
from kdframe.plugins import create_plugins
from kdframe.resume import STATE_FILE, rng_state, schedule_diff, set_rng_state
from kdframe.runner import resume_run, run_schedule
from tests.conftest import tiny_schedule, write_schedule

REPO = Path(__file__).resolve().parents[1]

#: A run that kills (or signals) itself when it reaches a point: the batch ``batch`` of epoch
#: ``epoch`` of stage ``stage``, or the end of stage ``stage`` when ``batch`` is -1.
DRIVER = textwrap.dedent(
    """
    import os, signal, sys
    from kdframe import hookimpl, runner
    from kdframe.cli import main
    from kdframe.plugins import create_plugins

    stage_index, epoch, batch, signal_name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    class Killer:
        def _hit(self):
            os.kill(os.getpid(), getattr(signal, signal_name))

        @hookimpl
        def kdframe_on_batch_start(self, stage, state):
            if (stage.index, state.epoch, state.batch) == (stage_index, epoch, batch):
                self._hit()

        @hookimpl
        def kdframe_on_stage_end(self, stage):
            if batch == -1 and stage.index == stage_index:
                self._hit()

    real = runner.plugins_for
    runner.plugins_for = lambda selection: create_plugins(plugins=[("killer", Killer())])
    sys.exit(main(sys.argv[5:]))
    """
)


def resumable_schedule() -> dict:
    """Three stages (TA chain), two epochs each, four batches an epoch, a feature loss with an adapter."""
    schedule = tiny_schedule(**{"training.epochs": 2, "logging.loggers": [{"name": "tensorboard"}]})
    schedule["distill"] = {
        "losses": [
            {"name": "hinton_kd", "weight": 1.0},
            {"name": "fitnet", "weight": 0.5, "params": {"layers": [{"student": "features.0", "teacher": "features.0"}]}},
        ]
    }
    return schedule


def weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    stages = sorted((folder / "stages").iterdir())
    return {stage.name: load_state_dict(stage / "student.pt") for stage in stages}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for stage in a:
        assert a[stage].keys() == b[stage].keys()
        for name in a[stage]:
            assert torch.equal(a[stage][name], b[stage][name]), f"{stage}: {name} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The schedule file and the folder of an uninterrupted run of it."""
    folder = tmp_path_factory.mktemp("reference")
    path = write_schedule(folder, resumable_schedule())
    run_folder, _ = run_schedule(path, out=folder / "run", quiet=True)
    return path, run_folder


def interrupt(tmp_path: Path, schedule: Path, point: tuple[int, int, int], signal_name: str = "SIGKILL", args: list[str] | None = None) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    command = args or ["run", str(schedule), "--out", str(tmp_path / "run"), "--quiet"]
    return subprocess.run(
        [sys.executable, str(driver), *(str(p) for p in point), signal_name, *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


# (stage, epoch, batch): -1 as batch is "at the end of the stage, before results.json is updated".
KILL_POINTS = [
    (0, 0, 2),  # first stage, before any epoch finished: the stage restarts from its beginning
    (0, 1, 0),  # first batch after the first epoch's checkpoint
    (0, 1, 3),  # last batch of the stage
    (0, 0, -1),  # the teacher is saved but results.json does not list it yet
    (1, 0, 0),  # first batch of the second stage
    (1, 1, 1),  # middle of the second stage's last epoch
    (2, 1, 3),  # last batch of the run
]


@pytest.mark.parametrize("point", KILL_POINTS, ids=lambda p: f"stage{p[0]}-epoch{p[1]}-batch{p[2]}")
def test_sigkill_then_resume_matches_an_uninterrupted_run_exactly(tmp_path, reference, point) -> None:
    schedule, reference_folder = reference
    killed = interrupt(tmp_path, schedule, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text()) if (tmp_path / "run" / "results.json").exists() else None
    assert results is None or results["finished"] is False
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert_same_weights(weights(tmp_path / "run"), weights(reference_folder))
    finished = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = json.loads((reference_folder / "results.json").read_text())
    assert finished["finished"] is True
    for got, want in zip(finished["stages"], expected["stages"]):
        assert got["final_test_acc"] == want["final_test_acc"] and got["best_epoch"] == want["best_epoch"]


def test_a_resumed_run_killed_again_still_matches(tmp_path, reference) -> None:
    schedule, reference_folder = reference
    assert interrupt(tmp_path, schedule, (0, 1, 2)).returncode == -signal.SIGKILL
    again = interrupt(tmp_path, schedule, (1, 1, 0), args=["resume", str(tmp_path / "run"), "--quiet"])
    assert again.returncode == -signal.SIGKILL, again.stderr
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert_same_weights(weights(tmp_path / "run"), weights(reference_folder))


def test_sigterm_stops_between_batches_with_a_resume_hint(tmp_path, reference) -> None:
    schedule, reference_folder = reference
    stopped = interrupt(tmp_path, schedule, (1, 1, 1), "SIGTERM")
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert "Stopped by SIGTERM in stage 'assistant' during epoch 2, batch 2" in stopped.stderr
    assert f"kdframe resume {tmp_path / 'run'}" in stopped.stderr
    assert (tmp_path / "run" / "stages" / "01-assistant" / STATE_FILE).is_file()
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert_same_weights(weights(tmp_path / "run"), weights(reference_folder))


def test_resume_refuses_a_changed_schedule_unless_forced(tmp_path, reference, capsys) -> None:
    schedule, _ = reference
    assert interrupt(tmp_path, schedule, (1, 0, 1)).returncode == -signal.SIGKILL
    folder = tmp_path / "run"
    before = (folder / "schedule.json").read_text()
    with pytest.raises(ResumeError) as error:
        resume_run(folder, overrides=["training.optimizer.lr=0.01", "seed=3"], quiet=True)
    message = str(error.value)
    assert "2 change(s)" in message and "training.optimizer.lr: 0.05 -> 0.01" in message and "seed: 0 -> 3" in message
    assert "--force" in message and (folder / "schedule.json").read_text() == before
    _, results = resume_run(folder, overrides=["training.optimizer.lr=0.01"], force=True, quiet=True)
    assert [result.stage for result in results] == ["teacher", "assistant", "student"]
    assert json.loads((folder / "schedule.json").read_text())["training"]["optimizer"]["lr"] == 0.01
    assert (folder / "schedule.before-resume-1.json").read_text() == before


def test_resume_errors_name_the_problem(tmp_path, reference, capsys) -> None:
    _, reference_folder = reference
    assert main(["resume", str(tmp_path)]) == 2
    assert "is not a kdframe run folder" in capsys.readouterr().err
    with pytest.raises(RunFolderError, match="already finished"):
        resume_run(reference_folder)


def test_corrupt_state_checkpoint_is_a_clear_error(tmp_path, reference, capsys) -> None:
    schedule, _ = reference
    assert interrupt(tmp_path, schedule, (0, 1, 1)).returncode == -signal.SIGKILL
    state = tmp_path / "run" / "stages" / "00-teacher" / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(state) in err and "Traceback" not in err


def test_rng_state_round_trips() -> None:
    saved = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(saved)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_schedule_diff_lists_every_change() -> None:
    before = {"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": True}
    after = {"a": 2, "b": {"c": [1, 3], "f": None}, "e": True}
    assert schedule_diff(before, after) == ["a: 1 -> 2", "b.c[1]: 2 -> 3", 'b.d: removed (was "x")', "b.f: added null"]
    assert schedule_diff(before, before) == []


class CountingPlugin:
    """Counts training batches; keeps the count in checkpoints; can fail once at a given point."""

    def __init__(self, fail_at: tuple[int, int, int] | None = None) -> None:
        self.batches = 0
        self.fail_at = fail_at
        self.loaded: list[tuple[str, dict]] = []

    @hookimpl
    def kdframe_on_batch_end(self, stage, state) -> None:
        self.batches += 1
        if (stage.index, state.epoch, state.batch) == self.fail_at:
            raise OSError("the logging server went away")

    @hookimpl
    def kdframe_state_dict(self) -> dict:  # a hookimpl may take fewer arguments than the hook
        return {"batches": self.batches}

    @hookimpl
    def kdframe_load_state_dict(self, stage, state) -> None:
        self.loaded.append((stage.name, state))
        self.batches = int(state["batches"])


def test_plugin_state_is_checkpointed_and_handed_back_on_resume(tmp_path, reference) -> None:
    schedule, reference_folder = reference
    first = CountingPlugin(fail_at=(1, 1, 2))
    with pytest.raises(PluginError, match="plugin 'counter'"):
        run_schedule(schedule, out=tmp_path / "run", quiet=True, plugins=create_plugins(plugins=[("counter", first)]))
    # 4 batches an epoch: stage 0 (2 epochs) and one epoch of stage 1 were checkpointed.
    second = CountingPlugin()
    resume_run(tmp_path / "run", quiet=True, plugins=create_plugins(plugins=[("counter", second)]))
    assert second.loaded == [("assistant", {"batches": 12})]
    assert second.batches == 12 + 4 + 8  # the rest of stage 1 and all of stage 2
    assert_same_weights(weights(tmp_path / "run"), weights(reference_folder))


class DeterminismProbe:
    """Records whether deterministic algorithms are on while a stage trains."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    @hookimpl
    def kdframe_on_epoch_start(self) -> None:
        self.seen.append(torch.are_deterministic_algorithms_enabled())


def test_deterministic_schedules_repeat_bit_for_bit(tmp_path) -> None:
    schedule = tiny_schedule(**{"deterministic": True, "training.epochs": 1, "logging.loggers": []})
    path = write_schedule(tmp_path, schedule)
    probe = DeterminismProbe()
    first, _ = run_schedule(path, out=tmp_path / "a", quiet=True, plugins=create_plugins(plugins=[("probe", probe)]))
    second, _ = run_schedule(path, out=tmp_path / "b", quiet=True)
    assert probe.seen == [True, True, True]
    assert not torch.are_deterministic_algorithms_enabled()  # switched back after the run
    assert_same_weights(weights(first), weights(second))


# ---------------------------------------------------------------------------------------------------
# Damaged and hostile run folders (issue 11)
# ---------------------------------------------------------------------------------------------------


def test_a_run_started_with_the_old_fixed_lr_schedule_keys_resumes_unchanged(tmp_path, reference) -> None:
    # Before LR schedules were components, a resolved schedule listed every schedule's keys.
    folder = _killed_after_one_epoch(tmp_path, reference)
    stored = json.loads((folder / "schedule.json").read_text())
    stored["training"]["lr_schedule"].update({"milestones": [], "gamma": 0.1, "min_lr_factor": 0.0})
    (folder / "schedule.json").write_text(json.dumps(stored, indent=2))
    _, results = resume_run(folder, quiet=True)
    assert [result.stage for result in results] == ["teacher", "assistant", "student"]
    assert_same_weights(weights(folder), weights(reference[1]))


def _killed_after_one_epoch(tmp_path: Path, reference) -> Path:
    schedule, _ = reference
    assert interrupt(tmp_path, schedule, (0, 1, 1)).returncode == -signal.SIGKILL
    return tmp_path / "run"


@pytest.mark.parametrize(("byte", "bit"), [(0, 0), (3, 6)], ids=["mantissa", "exponent"])
def test_a_flipped_bit_in_a_weight_of_state_pt_is_refused(tmp_path, reference, byte: int, bit: int, capsys) -> None:
    run = _killed_after_one_epoch(tmp_path, reference)
    state_path = run / "stages" / "00-teacher" / STATE_FILE
    state = torch.load(state_path, weights_only=True)
    weight = next(value for value in state["trainer"]["student"].values() if value.numel() >= 16)
    raw = state_path.read_bytes()
    start = raw.find(weight.numpy().tobytes())
    assert start > 0 and raw.count(weight.numpy().tobytes()) == 1
    damaged = bytearray(raw)
    damaged[start + byte] ^= 1 << bit
    state_path.write_bytes(bytes(damaged))
    assert main(["resume", str(run), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert str(state_path) in error and "does not match the checksum" in error and "Delete it" in error


def test_resume_removes_kdframe_temporary_files(tmp_path, reference) -> None:
    run = _killed_after_one_epoch(tmp_path, reference)
    stage = run / "stages" / "00-teacher"
    leftovers = [stage / ".state.pt.0a1b2c3d.tmp", stage / ".student.pt.deadbeef.tmp", run / ".results.json.01234567.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    mine = stage / "notes.tmp"  # not kdframe's: left alone
    mine.write_text("keep me")
    assert main(["resume", str(run), "--quiet"]) == 0
    assert not any(path.exists() for path in leftovers) and mine.read_text() == "keep me"
    assert not list(run.rglob(".*.tmp"))


def test_resume_refuses_a_stage_folder_that_is_a_link_outside_the_run(tmp_path, reference, capsys) -> None:
    run = _killed_after_one_epoch(tmp_path, reference)
    foreign = tmp_path / "elsewhere"
    foreign.mkdir()
    (foreign / "student.pt").write_bytes(b"someone else's model")
    assert not (run / "stages" / "02-student").exists()  # the student's stage has not started
    (run / "stages" / "02-student").symlink_to(foreign, target_is_directory=True)
    assert main(["resume", str(run), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "symbolic link" in error and "02-student" in error
    assert (foreign / "student.pt").read_bytes() == b"someone else's model"


def test_two_processes_never_write_one_run_folder(tmp_path, reference, capsys) -> None:
    from kdframe import folders

    run = _killed_after_one_epoch(tmp_path, reference)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; h = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(h, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(run / folders.LOCK_FILE)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = {path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()}
        assert main(["resume", str(run), "--quiet"]) == 2
        assert "in use by another kdframe process" in capsys.readouterr().err
        assert {path: path.stat().st_mtime_ns for path in run.rglob("*") if path.is_file()} == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["resume", str(run), "--quiet"]) == 0  # the lock ends with its process


def test_resume_with_results_rows_that_lack_fields_is_a_clear_error(tmp_path, reference, capsys) -> None:
    schedule, _ = reference
    assert interrupt(tmp_path, schedule, (1, 0, 1)).returncode == -signal.SIGKILL
    results_path = tmp_path / "run" / "results.json"
    results = json.loads(results_path.read_text())
    del results["stages"][0]["params"]
    results["stages"][0]["epochs_run"] = "two"
    results_path.write_text(json.dumps(results))
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "damaged row for stage 'teacher'" in error and "params: Field required" in error and "epochs_run" in error


#: ``kdframe run`` killed by SIGKILL right after its write probe exists in the new run folder.
EARLY_KILL = textwrap.dedent(
    """
    import os, signal, sys
    from kdframe import folders
    from kdframe.cli import main

    real_fsync = os.fsync

    def fsync_then_die(handle):
        real_fsync(handle)
        if any(name.startswith(".kdframe-write-test-") for name in os.listdir(sys.argv[1])):
            os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = fsync_then_die
    sys.exit(main(["run", sys.argv[2], "--out", sys.argv[1], "--quiet"]))
    """
)


def test_a_run_killed_in_its_first_milliseconds_leaves_a_reusable_folder(tmp_path) -> None:
    schedule = write_schedule(tmp_path, tiny_schedule(**{"training.epochs": 1, "logging.loggers": []}))
    driver = tmp_path / "early_kill.py"
    driver.write_text(EARLY_KILL)
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, str(driver), str(out), str(schedule)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [path.name for path in out.iterdir()] and all(p.name.startswith(".kdframe-write-test-") for p in out.iterdir())
    assert main(["run", str(schedule), "--out", str(out), "--quiet"]) == 0
    assert (out / "results.json").is_file()
    assert not list(out.glob(".kdframe-write-test-*"))
