"""Running a planned sweep: workers that claim runs by file lock, on one machine or several.

:func:`kdframe.sweep.run_sweep` plans a sweep and writes ``sweep.json`` (every run's schedule, what
it trains and what it reuses). From then on the sweep folder alone says what is left to do, and any
number of worker processes, on this machine or on others that mount the folder at the same path,
run it together like a job array (``kdframe sweep --join DIR``):

* **Claiming.** A worker takes a run by holding the run folder's lock (``flock``,
  :func:`kdframe.folders.exclusive_lock`) for as long as it works on it. The operating system
  releases the lock when the worker ends, however it ends, so the run of a killed worker is free
  for the next worker that looks, which resumes it from its last finished epoch
  (:func:`kdframe.runner.resume_in_folder`): nothing finished is trained again or lost.
* **Order.** A run whose models are reused from another run's stage (a shared teacher) waits until
  that stage has finished there; every shared stage is trained once, by the run the plan names.
* **State.** A run is done when its ``results.json`` says ``finished``. ``sweep.json`` is updated
  (under the sweep folder's own lock) with each run's status and its worker; a failed run stops
  every worker from taking new runs, and ``--join`` tries it again.
* **Threads.** Each worker limits PyTorch to ``threads`` intra-op threads, so that ``jobs x threads``
  fits the machine's cores.

:func:`run_local_workers` starts ``jobs`` worker processes on this machine and follows them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdframe import folders
from kdframe.errors import KdframeError, SweepError
from kdframe.report import SWEEP_FILE, write_report

Log = Callable[[str], None]
#: Worker logs of ``--jobs N``, inside the sweep folder.
LOGS_FOLDER = "logs"
#: How long an idle worker waits before it looks again for a run it can take.
POLL_S = 0.5


def worker_name() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def default_threads(jobs: int) -> int:
    """PyTorch threads per worker so that ``jobs`` workers share the threads PyTorch would use in
    one process (its default: the cores, or ``OMP_NUM_THREADS``); one worker keeps them all, so a
    sweep's run trains as ``kdframe run`` would."""
    import torch

    return max(1, torch.get_num_threads() // max(jobs, 1))


def sweep_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the sweep folder's lock (waiting for it) while ``sweep.json`` or the report is rewritten."""
    return folders.exclusive_lock(folder, "sweep", wait=True)


def read_plan(folder: Path) -> dict[str, Any]:
    """``sweep.json`` of a sweep folder, checked to hold what a worker needs."""
    path = folder / SWEEP_FILE
    if not path.is_file():
        raise SweepError(
            f"'{folder}' is not a sweep folder (it has no {SWEEP_FILE}). Give the folder that 'kdframe "
            "sweep' printed as 'Sweep folder:'."
        )
    try:
        plan = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SweepError(f"Cannot read '{path}': {error}. It is only ever replaced atomically; restore it.") from None
    runs = plan.get("runs") if isinstance(plan, dict) else None
    if not isinstance(runs, list) or not all(isinstance(run, dict) and isinstance(run.get("schedule"), dict) for run in runs):
        raise SweepError(
            f"'{path}' holds no run schedules: it was written by an earlier kdframe, whose sweeps "
            "cannot be joined or resumed. Start the sweep again in a new folder."
        )
    return plan


def update_run(folder: Path, run_folder: str, **changes: Any) -> dict[str, Any]:
    """Change one run's entry of ``sweep.json`` (under the sweep lock); return the whole plan."""
    with sweep_lock(folder):
        plan = read_plan(folder)
        for run in plan["runs"]:
            if run["folder"] == run_folder:
                run.update(changes)
        plan["finished"] = all(run.get("status") == "finished" for run in plan["runs"])
        folders.write_text_atomic(folder / SWEEP_FILE, json.dumps(plan, indent=2) + "\n")
    return plan


def _results(run_folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_folder / "results.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def run_finished(folder: Path, run: dict[str, Any]) -> bool:
    """Whether the run's ``results.json`` says it finished."""
    return _results(folder / run["folder"]).get("finished") is True


def stage_checkpoint(folder: Path, run_folder: str, stage: str) -> Path | None:
    """The ``student.pt`` that ``stage`` of the run in ``run_folder`` saved, once it has finished."""
    for row in _results(folder / run_folder).get("stages", []):
        if isinstance(row, dict) and row.get("stage") == stage and row.get("checkpoint"):
            path = folder / run_folder / str(row["checkpoint"])
            return path if path.is_file() else None
    return None


@dataclass
class Blocked:
    """Why a run cannot start yet: the run it waits for, and whether that can still change."""

    waits_for: str
    final: bool


def dependencies(folder: Path, run: dict[str, Any]) -> dict[str, Path] | Blocked:
    """The checkpoints of the models the run reuses (``{model: student.pt}``), or why not yet."""
    paths: dict[str, Path] = {}
    for entry in run.get("reuses", []):
        checkpoint = stage_checkpoint(folder, entry["from"], entry["from_stage"])
        if checkpoint is None:
            origin = next((r for r in read_plan(folder)["runs"] if r["folder"] == entry["from"]), {"folder": entry["from"]})
            return Blocked(entry["from"], final=run_finished(folder, origin))
        paths[entry["model"]] = checkpoint
    return paths


def _with_checkpoints(run: dict[str, Any], checkpoints: dict[str, Path]) -> dict[str, Any]:
    raw = copy.deepcopy(run["schedule"])
    for model, path in checkpoints.items():
        raw["models"][model]["checkpoint"] = str(path.resolve())
    overrides = raw.get("training", {}).get("stages")
    if isinstance(overrides, dict):
        for name in run.get("dropped_overrides", []):
            overrides.pop(name, None)
    return raw


def claim(run_folder: Path) -> contextlib.AbstractContextManager[bool]:
    """Hold the run folder's lock within the block; ``False`` when another worker holds it."""
    run_folder.mkdir(parents=True, exist_ok=True)
    return folders.try_lock(run_folder)


def _execute(
    folder: Path, plan: dict[str, Any], run: dict[str, Any], checkpoints: dict[str, Path], plugins: Any, quiet: bool, say: Log
) -> list[Any]:
    """Train (or resume) one run in its locked folder; return its stage results."""
    from kdframe.runner import SCHEDULE_FILE, resume_in_folder, start_in_folder

    run_folder = folder / run["folder"]
    source = f"Sweep '{plan.get('source', folder)}', variant '{run['variant']}' (seed {run['seed']})"
    if (run_folder / SCHEDULE_FILE).is_file():
        done = [row.get("stage") for row in _results(run_folder).get("stages", []) if isinstance(row, dict)]
        say(
            f"Resuming {run['folder']}, which a stopped or killed worker left: finished stages "
            f"({', '.join(map(str, done)) or 'none'}) are kept, the next continues from its last saved epoch."
        )
        return resume_in_folder(run_folder, quiet=quiet, plugins=plugins)
    return start_in_folder(run_folder, _with_checkpoints(run, checkpoints), plugins, quiet=quiet, source=source)


def work(
    folder: str | Path,
    *,
    plugins: Any = None,
    quiet: bool = False,
    threads: int | None = None,
    log: Log | None = print,
    retry_failed: bool = False,
) -> bool:
    """Be one worker of the sweep in ``folder``: take runs that are free and ready until none is
    left; return whether the whole sweep has finished (then the report is written).

    Raises :class:`SweepError` when a run fails here (after marking it failed), when another
    worker's run failed, or when a run waits for a stage that can no longer finish.
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _work(Path(folder), plugins, quiet, log or (lambda line: None), retry_failed)
    finally:
        torch.set_num_threads(before)


def _work(folder: Path, plugins: Any, quiet: bool, say: Log, retry_failed: bool) -> bool:
    """:func:`work` with its threads set."""
    from kdframe.runner import plugins_for
    from kdframe.schedule import plugin_selection

    plan = read_plan(folder)
    if plugins is None:
        plugins = plugins_for(plugin_selection(plan.get("base", {}), f"'{folder / SWEEP_FILE}': base"))
    me = worker_name()
    if retry_failed:
        for run in plan["runs"]:
            if run.get("status") == "failed":
                plan = update_run(folder, run["folder"], status="pending", error=None)
    total = len(plan["runs"])
    while True:
        plan = read_plan(folder)
        failed = [run for run in plan["runs"] if run.get("status") == "failed"]
        if failed:
            names = ", ".join(run["folder"] for run in failed)
            raise SweepError(
                f"Run(s) {names} of the sweep in '{folder}' failed (see sweep.json); this worker takes no "
                f"more runs. Fix the cause, then continue with: kdframe sweep --join {folder}"
            )
        pending = [run for run in plan["runs"] if not run_finished(folder, run)]
        if not pending:
            break
        took = False
        for run in pending:
            ready = dependencies(folder, run)
            if isinstance(ready, Blocked):
                if ready.final:
                    raise SweepError(
                        f"Run {run['folder']} reuses a model from {ready.waits_for}, but that run finished "
                        "without saving the stage (a hook stopped it early). Rerun the sweep with "
                        "\"share\": false, or fix that run."
                    )
                continue
            with claim(folder / run["folder"]) as claimed:
                if not claimed or run_finished(folder, run):
                    continue
                took = True
                number = plan["runs"].index(run) + 1
                say(f"{'' if quiet else chr(10)}[{number}/{total}] {run['variant']} seed {run['seed']} -> {folder / run['folder']}")
                update_run(folder, run["folder"], status="running", worker=me, error=None)
                try:
                    results = _execute(folder, plan, run, ready, plugins, quiet, say)
                except BaseException as error:
                    interrupted = not isinstance(error, KdframeError) or getattr(error, "exit_code", 1) == 130
                    update_run(folder, run["folder"], status="stopped" if interrupted else "failed", error=str(error)[:2000])
                    if isinstance(error, KdframeError) and not interrupted:
                        raise SweepError(
                            f"Sweep '{plan.get('source', folder)}', variant '{run['variant']}' (seed {run['seed']}): "
                            f"{error}\nThe sweep stopped here; the finished runs are kept in '{folder}', and "
                            f"'kdframe report {folder}' reports them."
                        ) from error
                    raise
                _record_finished(folder, run, results, ready)
            break  # look at the plan afresh after every run
        if not took:
            time.sleep(POLL_S)
    with sweep_lock(folder):
        write_report(folder)
    return True


def _record_finished(folder: Path, run: dict[str, Any], results: list[Any], reused: dict[str, Path]) -> None:
    by_stage = {result.stage: result for result in results}
    trains = []
    for entry in run.get("trains", []):
        result = by_stage.get(entry["stage"])
        trains.append({**entry, **({"checkpoint": f"{run['folder']}/{result.checkpoint}"} if result is not None and result.checkpoint else {})})
    reuses = [{**entry, "checkpoint": os.path.relpath(reused[entry["model"]], folder)} for entry in run.get("reuses", []) if entry["model"] in reused]
    update_run(folder, run["folder"], status="finished", trains=trains, reuses=reuses or run.get("reuses", []))


def run_local_workers(folder: str | Path, jobs: int, *, threads: int | None = None, log: Log | None = print, retry_failed: bool = False) -> bool:
    """Run the sweep in ``folder`` with ``jobs`` worker processes on this machine (each
    ``kdframe sweep --join``, its output in ``logs/worker-<N>.log``); print a line when a run
    starts or ends; return whether the whole sweep finished."""
    folder = Path(folder)
    say = log or (lambda line: None)
    threads = threads or default_threads(jobs)
    (folder / LOGS_FOLDER).mkdir(exist_ok=True)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "kdframe", "sweep", "--join", str(folder), "--jobs", "1", "--threads", str(threads), "--quiet"]
    if retry_failed:
        command.append("--retry-failed")
    say(f"Starting {jobs} workers with {threads} thread(s) each; their output: {folder / LOGS_FOLDER}/worker-<N>.log")
    workers: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for index in range(1, jobs + 1):
            stream = open(folder / LOGS_FOLDER / f"worker-{index}.log", "ab")
            logs.append(stream)
            workers.append(subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=environment))
        seen: dict[str, str] = {}
        while True:
            _report_changes(folder, seen, say)
            if all(worker.poll() is not None for worker in workers):
                break
            time.sleep(POLL_S)
        _report_changes(folder, seen, say)
    except BaseException:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)  # each stops between two batches, its state saved
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=60)
        raise
    finally:
        for stream in logs:
            stream.close()
    for index, worker in enumerate(workers, start=1):
        if worker.returncode not in (0, None):
            how = f"was killed by signal {-worker.returncode}" if worker.returncode < 0 else f"exited with code {worker.returncode}"
            say(f"Worker {index} {how}; see {folder / LOGS_FOLDER}/worker-{index}.log")
    plan = read_plan(folder)
    return all(run_finished(folder, run) for run in plan["runs"])


def _report_changes(folder: Path, seen: dict[str, str], say: Log) -> None:
    try:
        plan = read_plan(folder)
    except SweepError:
        return
    total = len(plan["runs"])
    for number, run in enumerate(plan["runs"], start=1):
        status = str(run.get("status", "pending"))
        if seen.get(run["folder"], "pending") == status:
            continue
        seen[run["folder"]] = status
        label = f"[{number}/{total}] {run['variant']} seed {run['seed']}"
        if status == "running":
            say(f"{label} started ({run.get('worker', '?')})")
        elif status == "finished":
            say(f"{label} finished")
        elif status in ("failed", "stopped"):
            first = str(run.get("error") or "").splitlines()[0:1]
            say(f"{label} {status}{': ' + first[0] if first else ''}")


__all__ = ["default_threads", "read_plan", "run_local_workers", "work"]
