"""kdframe from Python: run a schedule given as a dict, get its results and trained models back, load
any saved model in one call, and register a model or loss defined in a notebook without a package.

These are the functions ``import kdframe`` offers next to the plugin-author API::

    import kdframe

    run = kdframe.run({"name": "demo", "data": {...}, "models": {...}, "curriculum": {...}})
    print(run.table())                      # the stage table `kdframe run` prints
    student = run.model()                   # the final student, an nn.Module in eval mode
    best = kdframe.load_model(run.folder, best=True)   # later, from the run folder alone

Everything runs exactly as ``kdframe run`` does (same validation, preflight, run folder, results):
the command line is a thin layer over the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from kdframe import registry as _registry
from kdframe.errors import ScheduleError
from kdframe.hookspecs import hookimpl
from kdframe.plugins import Plugins, register_in_process, unregister_in_process
from kdframe.results import final_student_index, format_table
from kdframe.runner import RESULTS_FILE, prepare, run_raw, stage_result_from_row, validate_raw
from kdframe.saved_models import finished_stages, load_stage_model
from kdframe.schedule import Schedule, load_json
from kdframe.state import StageResult

#: The registration hook of each kind of component spec.
_HOOKS: dict[type, str] = {
    _registry.LossSpec: "kdframe_register_losses",
    _registry.ModelSpec: "kdframe_register_models",
    _registry.CurriculumSpec: "kdframe_register_curricula",
    _registry.DatasetSpec: "kdframe_register_datasets",
    _registry.LoggerSpec: "kdframe_register_loggers",
    _registry.OptimizerSpec: "kdframe_register_optimizers",
    _registry.LRScheduleSpec: "kdframe_register_lr_schedules",
    _registry.ExporterSpec: "kdframe_register_exporters",
}

#: What :func:`run` and :func:`validate` accept as a schedule.
ScheduleLike = dict[str, Any] | Schedule | str | Path


@dataclass
class RunResult:
    """A finished (or stopped) run: its folder and the results of its stages.

    Attributes:
        folder: The run folder (``schedule.json``, ``results.json``, each stage's ``student.pt`` and
            ``best.pt``, TensorBoard events).
        stages: One :class:`~kdframe.StageResult` per stage, in order.
        plugins: The plugin manager the run used (``None``: the one its schedule asks for).
    """

    folder: Path
    stages: list[StageResult]
    plugins: Plugins | None = field(default=None, repr=False)

    @property
    def final(self) -> StageResult:
        """The last stage that trained a model (the run's final student)."""
        final = final_student_index([stage.checkpoint for stage in self.stages])
        if final is None:
            raise ScheduleError(f"No stage of the run in '{self.folder}' trained a model.")
        return self.stages[final]

    def model(self, stage: str | None = None, *, best: bool = False) -> nn.Module:
        """A stage's trained model (default: the final student) rebuilt from the run folder, in eval
        mode on the CPU: its weights after the last epoch, or with ``best`` after its best epoch."""
        return load_model(self.folder, stage, best=best, plugins=self.plugins)

    def table(self) -> str:
        """The stage table ``kdframe run`` prints."""
        return format_table([stage.to_dict() for stage in self.stages])

    def history(self, stage: str | None = None) -> list[dict[str, float]]:
        """A stage's metrics by epoch (default: the final student's), as its ``history.csv`` holds
        them: one dict per epoch with ``epoch`` (from 1), ``train/loss``, ``train/acc``,
        ``test/acc``, ``val/acc`` (with a validation split), ``lr``, ...; ``[]`` for a stage without
        epochs (an evaluate stage)."""
        from kdframe.history import read_history
        from kdframe.run_report import stage_folder

        if stage is None:
            chosen = self.final
        else:
            named = [result for result in self.stages if result.stage == stage]
            if not named:
                names = ", ".join(result.stage for result in self.stages) or "none"
                raise ScheduleError(f"The run in '{self.folder}' has no stage '{stage}'. Its stages: {names}.")
            chosen = named[-1]
        where = stage_folder(self.folder, chosen.to_dict())
        return read_history(where) if where is not None else []

    def __str__(self) -> str:
        return f"Run folder: {self.folder}\n{self.table()}"


def _raw(schedule: ScheduleLike) -> tuple[dict[str, Any], str]:
    """The schedule as plain JSON data, and how errors name it."""
    if isinstance(schedule, (str, Path)):
        return load_json(schedule), f"Schedule '{schedule}'"
    if isinstance(schedule, Schedule):
        return schedule.model_dump(mode="json", by_alias=True, exclude_unset=True), "schedule"
    if not isinstance(schedule, dict):
        raise ScheduleError(
            f"A schedule is a dict (as JSON would give), a kdframe.Schedule or the path of a JSON file, "
            f"not a {type(schedule).__name__}."
        )
    return _plain(schedule, ""), "schedule"


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON would hold it (a ``Path`` becomes a string, a tuple a list); anything JSON
    cannot hold (NaN, infinity, other objects, keys that are not strings) is a ScheduleError naming
    its key."""
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ScheduleError(f"Schedule key {key!r}{_at(where)} is not a string; a schedule is JSON, whose keys are strings.")
            result[key] = _plain(item, f"{where}.{key}" if where else key)
        return result
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}.{index}" if where else str(index)) for index, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ScheduleError(f"Schedule value{_at(where)} is {value}, not a finite number; give a number JSON can hold.")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise ScheduleError(
        f"Schedule value{_at(where)} is a {type(value).__name__}, which is not a JSON value; use numbers, "
        "strings, booleans, null, lists and dicts, as a schedule file would."
    )


def _at(where: str) -> str:
    return f" at '{where}'" if where else ""


def run(
    schedule: ScheduleLike,
    *,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = True,
    plugins: Plugins | None = None,
) -> RunResult:
    """Validate and run a schedule, exactly as ``kdframe run`` does; return its folder and results.

    Args:
        schedule: A dict (the JSON object of a schedule file), a :class:`~kdframe.Schedule`, or the
            path of a schedule file.
        out: The run folder (default ``runs/<name>-<timestamp>``); one that holds files is refused.
        overrides: ``dotted.key=VALUE`` assignments, as ``--set`` takes them.
        quiet: No progress bars and tables (the default here; ``False`` prints what ``kdframe run``
            prints).
        plugins: A plugin manager (default: the installed plugins, those the schedule's ``plugins``
            section selects, and those registered with :func:`register`).

    Raises:
        KdframeError: The schedule, a component, the data or a checkpoint is invalid (nothing is
            trained), or training failed (see docs/reliability.md).
    """
    raw, source = _raw(schedule)
    folder, stages = run_raw(raw, overrides=overrides, out=out, quiet=quiet, plugins=plugins, source=source)
    return RunResult(folder, stages, plugins)


def validate(schedule: ScheduleLike, *, overrides: list[str] | None = None, plugins: Plugins | None = None) -> Schedule:
    """Check a schedule as ``kdframe validate`` does (structure, every component's params, the data,
    every model and checkpoint, one dry step of every stage) without training or writing anything;
    return the validated :class:`~kdframe.Schedule`. Raises :class:`~kdframe.KdframeError`."""
    raw, source = _raw(schedule)
    parsed, manager, resolved = validate_raw(raw, overrides, plugins, source=source)
    prepare(parsed, manager, resolved)
    return parsed


def load_model(folder: str | Path, stage: str | None = None, *, best: bool = False, plugins: Plugins | None = None) -> nn.Module:
    """A trained model from its run folder, in eval mode on the CPU: the stage ``stage`` (default: the
    last that trained a model, the run's final student), with its weights after the last epoch
    (``student.pt``) or with ``best`` after its best epoch (``best.pt``). Files are read with
    ``weights_only=True`` and their checksums verified. Raises :class:`~kdframe.KdframeError`."""
    return load_stage_model(folder, stage, plugins, best=best).model


def load_run(folder: str | Path) -> RunResult:
    """The results of a run folder (finished or not), as :func:`run` returns them."""
    path = Path(folder)
    rows = finished_stages(path)  # a clear error for a folder that is not a run's
    return RunResult(path, [stage_result_from_row(row, str(path / RESULTS_FILE)) for row in rows])


def register(*components: Any) -> None:
    """Make components defined in this process (a notebook's model, loss, dataset...) available to
    every schedule run afterwards, as if a plugin had registered them.

    Each argument is a component spec (:class:`~kdframe.ModelSpec`, :class:`~kdframe.LossSpec`,
    :class:`~kdframe.DatasetSpec`, ...; registered under its ``name``) or a plugin object with
    ``@kdframe.hookimpl`` methods. Registering a spec of the same kind and name again replaces it, so
    a notebook cell can be run twice. :func:`unregister` removes one.
    """
    for component in components:
        register_in_process(_plugin_name(component), _as_plugin(component))


def unregister(*components: Any) -> None:
    """Remove components (or plugin objects) added with :func:`register`."""
    for component in components:
        unregister_in_process(_plugin_name(component))


def _plugin_name(component: Any) -> str:
    if isinstance(component, _registry.ComponentSpec):
        return f"in-process:{component.kind}:{component.name}"
    return f"in-process:plugin:{type(component).__module__}.{type(component).__qualname__}:{id(component)}"


def _as_plugin(component: Any) -> object:
    """A plugin object registering ``component`` (a spec), or ``component`` itself (a plugin)."""
    if not isinstance(component, _registry.ComponentSpec):
        if not any(callable(getattr(component, name, None)) and name.startswith("kdframe_") for name in dir(component)):
            raise ScheduleError(
                f"kdframe.register takes component specs (ModelSpec, LossSpec, DatasetSpec, ...) or plugin "
                f"objects with @kdframe.hookimpl methods; {type(component).__name__} is neither."
            )
        return component
    hook = next((name for kind, name in _HOOKS.items() if isinstance(component, kind)), None)
    if hook is None:
        raise ScheduleError(f"kdframe.register does not know the kind of {type(component).__name__}.")

    def registration(self: Any) -> list[Any]:
        return [component]

    registration.__name__ = hook
    module = getattr(component.factory, "__module__", None) or __name__  # named in messages, e.g. __main__
    return type(f"InProcess_{component.name}", (), {hook: hookimpl(registration), "__module__": module})()


__all__ = ["RunResult", "load_model", "load_run", "register", "run", "unregister", "validate"]
