"""What ``kdframe report`` shows of run folders: one run's tables and training curves, or several
runs side by side.

A run's curves come from each stage's ``history.csv`` (:mod:`kdframe.history`), or, for runs written
before it existed, from the stage's TensorBoard events: accuracy (test, and
validation when there is a validation split) and training loss by epoch, one line per stage, drawn
into ``curves.png`` in the run folder. Several run folders are compared by their final student (the
last stage that saved a model): one table row per run and, with a plot file, their curves together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdframe.errors import KdframeError, SweepError
from kdframe.history import read_history
from kdframe.report import read_json_file
from kdframe.results import RESULTS_FILE, final_student_index, format_compression, format_table
from kdframe.export import format_exports

#: The curves of a run, written into its folder by ``kdframe report RUN_DIR``.
CURVES_PNG = "curves.png"
#: The run folder's TensorBoard events, one sub-folder per stage named as the stage's folder (the
#: curves of runs that have no ``history.csv``).
TENSORBOARD_FOLDER = "tensorboard"
#: Line colours, one per stage or run (matplotlib's "tab10").
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


@dataclass
class RunSummary:
    """A run folder as the report reads it.

    Attributes:
        folder: The run folder.
        name: The schedule's name.
        finished: Whether every stage finished.
        rows: The stage rows of ``results.json``.
        curves: Per-epoch metric rows by stage name (stages without a ``history.csv`` are absent).
    """

    folder: Path
    name: str
    finished: bool
    rows: list[dict[str, Any]]
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def final_row(self) -> dict[str, Any]:
        """The row of the run's final student: the last stage that saved a model (else the last)."""
        final = final_student_index([str(row.get("checkpoint") or "") for row in self.rows])
        return self.rows[-1 if final is None else final]


def stage_folder(folder: Path, row: dict[str, Any]) -> Path | None:
    """The folder of a stage row (its checkpoint's folder), only when it lies inside the run folder."""
    checkpoint = row.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint:
        return None
    root = folder.resolve()
    candidate = (folder / checkpoint).resolve().parent
    return candidate if candidate.is_relative_to(root) and candidate != root else None


def read_run(folder: str | Path) -> RunSummary:
    """Read a run folder's ``results.json`` and its stages' histories; errors name the file."""
    folder = Path(folder)
    results_path = folder / RESULTS_FILE
    if not results_path.is_file():
        raise SweepError(f"Run folder '{folder}' has no {RESULTS_FILE} yet: no stage has finished.")
    results = read_json_file(results_path, "results file")
    if not isinstance(results, dict) or not isinstance(results.get("stages"), list):
        raise SweepError(f"'{results_path}' is not a results.json written by kdframe.")
    rows = results["stages"]
    if not all(isinstance(row, dict) and isinstance(row.get("stage"), str) for row in rows):
        raise SweepError(f"'{results_path}' has a malformed stage row (every row needs a 'stage' name).")
    summary = RunSummary(folder, str(results.get("name", folder.name)), bool(results.get("finished")), rows)
    for row in rows:
        where = stage_folder(folder, row)
        history = read_history(where) if where is not None else []
        if not history and where is not None:
            history = tensorboard_history(folder / TENSORBOARD_FOLDER / where.name)
        if history:
            summary.curves[row["stage"]] = history
    return summary


def tensorboard_history(events_folder: Path) -> list[dict[str, float]]:
    """Per-epoch rows from a stage's TensorBoard events (for runs written before ``history.csv``
    existed): every curve logged per epoch, the last point of each epoch kept (a resumed epoch is
    logged twice); ``[]`` when there are none or they cannot be read."""
    if not events_folder.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    try:
        accumulator = EventAccumulator(str(events_folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        by_epoch: dict[int, dict[str, float]] = {}
        for tag in accumulator.Tags().get("scalars", []):
            if tag.startswith(("batch/", "hparam/")):
                continue  # per-step scalars and the one-point charts of earlier versions
            for event in accumulator.Scalars(tag):
                if event.step >= 1 and math.isfinite(event.value):
                    by_epoch.setdefault(event.step, {"epoch": float(event.step)})[tag] = float(event.value)
    except Exception:  # noqa: BLE001 - a damaged event file only costs the curves
        return []
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _tables(
    rows: list[dict[str, Any]], sources: list[Path], first_column: str = "stage", against: str | None = None
) -> tuple[str, str]:
    try:
        return format_table(rows, first_column=first_column), format_compression(rows, against=against)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        where = " or ".join(f"'{source / RESULTS_FILE}'" for source in sources)
        raise SweepError(f"{where} has a malformed stage row ({error}).") from None


def curves_figure(series: list[tuple[str, list[dict[str, float]]]], title: str) -> Any:
    """Accuracy (test solid, validation dashed) and training loss by epoch, a colour per series."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10.0, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    accuracy, loss = figure.subplots(1, 2)
    for index, (label, rows) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        for axes, key, style, suffix in (
            (accuracy, "test/acc", "-", " test"),
            (accuracy, "val/acc", "--", " val"),
            (loss, "train/loss", "-", ""),
        ):
            points = [(row["epoch"], row[key]) for row in rows if key in row]
            if points:
                xs, ys = zip(*points)
                axes.plot(xs, ys, style, color=colour, marker="o" if len(points) < 30 else None, markersize=3, label=label + suffix)
    accuracy.set_ylabel("accuracy %")
    accuracy.set_ylim(0.0, 100.0)
    loss.set_ylabel("training loss")
    for axes in (accuracy, loss):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def _save(figure: Any, path: Path) -> None:
    try:
        figure.savefig(path, format="png")
    except OSError as error:
        raise KdframeError(f"Cannot write the plot '{path}': {error.strerror or error}. Give a writable path with --plot.") from None


def run_text(folder: str | Path, plot: str | Path | None = None) -> str:
    """``kdframe report RUN_DIR``: the stage, compression and export tables, and the stages' curves
    drawn into ``plot`` (default ``RUN_DIR/curves.png``)."""
    run = read_run(folder)
    table, compression = _tables(run.rows, [run.folder])
    status = "finished" if run.finished else "not finished (a stage is running, or the run stopped)"
    text = f"Run '{run.name}' in {run.folder}: {status}\n\n{table}"
    if compression:
        text += f"\n\n{compression}"
    exports = format_exports(run.folder)
    if exports:
        text += f"\n\n{exports}"
    if run.curves:
        path = Path(plot) if plot is not None else run.folder / CURVES_PNG
        _save(curves_figure(list(run.curves.items()), f"{run.name}: accuracy and training loss by epoch"), path)
        text += f"\n\nCurves: {path}"
    else:
        text += (
            "\n\nNo curves: no stage has a history.csv (written when a stage ends, by kdframe after 0.1.0) "
            "or TensorBoard events (the tensorboard logger)."
        )
    return text


def run_labels(folders: list[Path]) -> list[str]:
    """Short, distinct names of run folders: their own names, or the paths as given when two share one."""
    names = [folder.name or str(folder) for folder in folders]
    return names if len(set(names)) == len(names) else [str(folder) for folder in folders]


def _labelled(label: str, row: dict[str, Any]) -> dict[str, Any]:
    """A run's final-student row named after its run; its compression figures stay relative to its
    own teacher, whose own row is left out (each run may have another)."""
    labelled = {**row, "stage": f"{label}: {row['stage']}", "model": f"{label}: {row.get('model', row['stage'])}"}
    compression = row.get("compression")
    if isinstance(compression, dict):
        labelled["compression"] = {key: value for key, value in compression.items() if key != "reference_figures"}
    return labelled


def compare_text(folders: list[str | Path], plot: str | Path | None = None) -> str:
    """``kdframe report RUN_DIR RUN_DIR ...``: each run's final student in one table and, with
    ``plot``, their curves in one figure."""
    paths = [Path(folder) for folder in folders]
    runs = [read_run(path) for path in paths]
    empty = [str(run.folder) for run in runs if not run.rows]
    if empty:
        raise SweepError(f"No stage has finished yet in: {', '.join(empty)}. Compare runs once a stage of each has finished.")
    labels = run_labels(paths)
    rows = [_labelled(label, run.final_row()) for label, run in zip(labels, runs)]
    table, compression = _tables(rows, paths, first_column="run: stage", against="each run's own teacher")
    unfinished = [label for label, run in zip(labels, runs) if not run.finished]
    text = f"{len(runs)} runs, each by its final student (the last stage that saved a model):\n\n{table}"
    if compression:
        text += f"\n\n{compression}"
    if unfinished:
        text += f"\n\nNot finished: {', '.join(unfinished)}."
    if plot is None:
        text += "\n\nAdd --plot FILE.png to draw their curves together."
        return text
    series = [(label, run.curves.get(run.final_row()["stage"], [])) for label, run in zip(labels, runs)]
    missing = [label for label, rows in series if not rows]
    _save(curves_figure([item for item in series if item[1]], "final students: accuracy and training loss by epoch"), Path(plot))
    text += f"\n\nCurves: {plot}"
    if missing:
        text += f" (no history.csv, so no curve: {', '.join(missing)})"
    return text


__all__ = ["CURVES_PNG", "RunSummary", "compare_text", "curves_figure", "read_run", "run_labels", "run_text", "stage_folder"]
