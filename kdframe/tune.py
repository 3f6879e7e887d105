"""Hyper-parameter search over a schedule with Optuna: ``kdframe tune``.

A tune file names a base schedule, a search space (ranges or choices for any schedule key, in the
dotted form of ``--set``), an objective (a **validation** metric of one stage: the test split never
chooses), the number of trials, a sampler and a pruner. Every trial is an ordinary run of the base
schedule with the trial's values set, in ``<tune folder>/trials/trial-NNNN/``; it reports its
validation accuracy after every epoch, so that the pruner can stop a bad trial early.

The study lives in the tune folder (Optuna's journal file storage, ``study.journal``; or any Optuna
storage URL, ``storage``), so that any number of workers, on this machine or on others that mount
the folder at the same path, share it (``kdframe tune --join DIR``), and a study that stopped
continues where it was:

* **Claiming.** A worker asks Optuna for a trial under the tune folder's lock (so the study never
  runs more than ``trials`` trials) and holds the trial folder's lock (``flock``) while it trains.
* **A killed worker's trial** is still ``RUNNING`` in the study, but its folder's lock is free: the
  next worker marks it failed and enqueues its values again, and the trial that takes them resumes
  the killed one's run folder from its last saved epoch (nothing finished is trained twice).
* **Reproducible.** The sampler of trial *n* is seeded with ``sampler.seed + n``, so that a study
  gives the same trials whether it ran at once, was resumed, or was shared by workers that finished
  in the same order; every trial runs with the base schedule's ``seed``.
* **Trained once.** Models named in ``train_once`` (a teacher) are trained from labels once, in
  ``<tune folder>/train_once/<model>/``, before the first trial, and every trial loads them as its
  ``checkpoint``; the teacher-assistant search of ``docs/reproduction.md`` uses this.

At the end (and whenever a worker stops) the report is written: ``trials.csv``, ``results.md``,
``tune.png`` (the objective by trial, and against each searched key) and ``best_schedule.json``, the
base with the best trial's values, which ``kdframe run`` accepts.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdframe import folders
from kdframe.curriculum import make_curriculum, plan_stages
from kdframe.errors import KdframeError, TuneError
from kdframe.hookspecs import hookimpl
from kdframe.schedule import NAME_PATTERN, apply_overrides, format_validation_error, load_json

if TYPE_CHECKING:
    import optuna

    from kdframe.plugins import Plugins

Log = Callable[[str], None]
TUNE_FILE = "tune.json"
JOURNAL_FILE = "study.journal"
TRIALS_FOLDER = "trials"
TRAIN_ONCE_FOLDER = "train_once"
TRIALS_CSV = "trials.csv"
RESULTS_MD = "results.md"
TUNE_PNG = "tune.png"
BEST_SCHEDULE = "best_schedule.json"
STUDY_NAME = "kdframe"
METRICS = {"best_val_acc": "val/acc", "final_val_acc": "val/acc"}


# ---------------------------------------------------------------------------------------------------
# The tune file
# ---------------------------------------------------------------------------------------------------


class FloatRange(BaseModel):
    """A float between ``low`` and ``high`` (inclusive), on a log scale with ``log``, or on a grid of ``step``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(False, description="Sample on a log scale (low must be > 0).")
    step: float | None = Field(None, gt=0, description="Only multiples of step above low (not with log).")

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntRange(BaseModel):
    """An integer between ``low`` and ``high`` (inclusive), every ``step``, or on a log scale."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self


class Choice(BaseModel):
    """One of ``values``: any JSON values (numbers, strings, lists such as a chain of assistants)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[Any]) -> list[Any]:
        texts = [json.dumps(value, sort_keys=True) for value in values]
        if len(set(texts)) != len(texts):
            raise ValueError("values must be distinct")
        return values


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) must not be above high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0 (got {low})")
    if log and step is not None:
        raise ValueError("give either log or step, not both")


Space = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]


class ObjectiveConfig(BaseModel):
    """What a trial scores: a validation metric of one stage, maximised."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["best_val_acc", "final_val_acc"] = Field(
        "best_val_acc", description="best_val_acc: the validation accuracy of the selected epoch; final_val_acc: of the last."
    )
    stage: str | None = Field(None, description="The stage scored (the name of the model it trains); default: the last stage.")


class SamplerConfig(BaseModel):
    """Optuna's sampler: tpe (default), random, or grid (every combination of choices; int ranges
    become their values)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Trial n's sampler is seeded with seed + n.")
    n_startup_trials: int = Field(5, ge=0, description="tpe: random trials before the model-based search.")


class PrunerConfig(BaseModel):
    """Optuna's pruner, fed each trial's validation accuracy after every epoch of the scored stage."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["none", "median", "percentile", "successive_halving", "hyperband", "threshold"] = "median"
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the Optuna pruner, e.g. {\"n_startup_trials\": 3, \"n_warmup_steps\": 1} for median.",
    )


class TuneConfig(BaseModel):
    """A hyper-parameter search over a schedule."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    schema_url: str | None = Field(None, alias="$schema", description="JSON Schema location for editors; ignored.")
    name: str = Field(pattern=NAME_PATTERN, max_length=80, description="Study name (used in the folder's name).")
    description: str = ""
    base: str | dict[str, Any] = Field(description="The base schedule: a file path (relative to the tune file's folder) or an inline object.")
    space: dict[str, Space] = Field(min_length=1, description="Search space: dotted schedule keys (as with --set) to ranges or choices.")
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    trials: int = Field(20, ge=1, le=100_000, description="Trials in the study, over all workers.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    train_once: list[str] = Field(
        default_factory=list,
        description="Models trained from labels once, before the first trial, and loaded by every trial (a teacher).",
    )
    storage: str | None = Field(
        None,
        description="An Optuna storage URL (e.g. postgresql://... or sqlite:///...); default: the journal file study.journal in the tune folder.",
    )

    @field_validator("space")
    @classmethod
    def _keys(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key in space:
            if not key or any(not part for part in key.split(".")) or "=" in key:
                raise ValueError(f"'{key}' is not a dotted schedule key such as training.optimizer.lr")
        return space


# ---------------------------------------------------------------------------------------------------
# Loading and validating
# ---------------------------------------------------------------------------------------------------


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise TuneError(
            "kdframe tune needs Optuna, which is not installed. Install it with: pip install 'kdframe[tune]' "
            "(or pip install optuna)."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def load_tune(path: str | Path, *, trials: int | None = None) -> tuple[TuneConfig, dict[str, Any]]:
    """Read and validate a tune file; return it and its base schedule (raw)."""
    path = Path(path)
    try:
        data = load_json(path)
    except KdframeError as error:
        raise TuneError(str(error).replace("Schedule file", "Tune file")) from None
    try:
        config = TuneConfig.model_validate(data)
    except ValidationError as error:
        lines = format_validation_error(error, model=TuneConfig)
        listing = "\n".join(f"  - {line}" for line in lines)
        raise TuneError(f"Tune file '{path}' is invalid ({len(lines)} problem{'s' if len(lines) > 1 else ''}):\n{listing}") from None
    if trials is not None:
        config = config.model_copy(update={"trials": trials})
    if isinstance(config.base, str):
        base_path = (path.parent / config.base).resolve()
        try:
            base = load_json(base_path)
        except KdframeError as error:
            raise TuneError(f"Tune file '{path}', base: {error}") from None
    else:
        base = dict(config.base)
    return config, base


def trial_schedule(config: TuneConfig, base: dict[str, Any], values: dict[str, Any], number: int | None) -> dict[str, Any]:
    """The base schedule with a trial's values set, named ``<study>-trial-NNNN`` (or ``-best``)."""
    raw = apply_overrides(base, [f"{key}={json.dumps(value)}" for key, value in values.items()])
    raw["name"] = f"{config.name}-{'best' if number is None else f'trial-{number:04d}'}"
    return raw


def corner_values(config: TuneConfig) -> list[dict[str, Any]]:
    """The space's two corners (every range at its low end, then at its high end; first and last choices)."""
    low = {key: space.values[0] if isinstance(space, Choice) else space.low for key, space in config.space.items()}
    high = {key: space.values[-1] if isinstance(space, Choice) else space.high for key, space in config.space.items()}
    return [low] if low == high else [low, high]


def validate_tune(config: TuneConfig, base: dict[str, Any], source: str, plugins: Plugins | None = None) -> Plugins:
    """Check the tune file against its base before anything trains: every searched key sets a valid
    schedule at both corners of the space, the schedule has a validation split, the scored stage
    and the ``train_once`` models exist."""
    from kdframe.runner import plugins_for, prepare
    from kdframe.schedule import parse_schedule, plugin_selection, resolved, validate_components

    if plugins is None:
        plugins = plugins_for(plugin_selection(base, f"{source}: base"))
    for values in corner_values(config):
        where = ", ".join(f"{key}={json.dumps(value)}" for key, value in values.items())
        try:
            raw = trial_schedule(config, base, values, 0)
            schedule = parse_schedule(raw, f"{source}, trial with {where}")
            validate_components(schedule, plugins.registry, f"{source}, trial with {where}")
            _schedule, stages = plan_stages(schedule, make_curriculum(schedule, plugins.registry), plugins.registry, schedule.curriculum.name)
        except KdframeError as error:
            raise TuneError(f"{error}\nEvery searched key must give a valid schedule over the whole space; check the key and the range.") from None
    data = schedule.data
    if data.validation_samples is None and data.validation_fraction is None:
        experiment = prepare(schedule, plugins, resolved(schedule, plugins.registry))
        if not experiment.data.val_count:
            raise TuneError(
                f"{source}: the base schedule has no validation split, and the objective must never be the "
                "test split. Add \"validation_samples\": N (or \"validation_fraction\") to its data section."
            )
    names = [stage.name or stage.student for stage in stages]
    if config.objective.stage is not None and config.objective.stage not in names:
        raise TuneError(f"{source}: objective.stage '{config.objective.stage}' is not a stage of the schedule (stages: {', '.join(names)}).")
    for model in config.train_once:
        if model not in schedule.models:
            raise TuneError(f"{source}: train_once names '{model}', which is not a model of the base schedule ({', '.join(schedule.models)}).")
        if model in config.space or any(key.startswith(f"models.{model}.") for key in config.space):
            raise TuneError(f"{source}: train_once model '{model}' is searched in 'space'; a model trained once cannot change between trials.")
        if model == (config.objective.stage or names[-1]):
            raise TuneError(f"{source}: train_once names '{model}', the stage the objective scores; it must train in every trial.")
    return plugins


# ---------------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------------


def read_tune_folder(folder: Path) -> dict[str, Any]:
    """``tune.json`` of a tune folder."""
    path = folder / TUNE_FILE
    if not path.is_file():
        raise TuneError(f"'{folder}' is not a tune folder (it has no {TUNE_FILE}). Give the folder that 'kdframe tune' printed as 'Tune folder:'.")
    try:
        data = json.loads(path.read_text())
        data["config"] = TuneConfig.model_validate(data["config"])
        return data
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TuneError(f"Cannot read '{path}': {error}. Start the study again in a new folder.") from None


def storage_for(folder: Path, config: TuneConfig) -> Any:
    """The study's Optuna storage: the URL of the tune file, or the journal file in the folder."""
    optuna = _optuna()
    if config.storage:
        return config.storage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(folder / JOURNAL_FILE)
    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def make_sampler(config: TuneConfig, number: int) -> Any:
    """The sampler for trial ``number`` (seeded with ``sampler.seed + number``)."""
    optuna = _optuna()
    seed = (config.sampler.seed + number) % 2**32
    if config.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler.name == "grid":  # the points come from next_grid_point, enqueued
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.sampler.n_startup_trials)


def grid_space(config: TuneConfig) -> dict[str, list[Any]]:
    """Every searched key's values for the grid sampler (choices as JSON text)."""
    grid: dict[str, list[Any]] = {}
    for key, space in config.space.items():
        if isinstance(space, Choice):
            grid[key] = [json.dumps(value) for value in space.values]
        elif isinstance(space, IntRange) and not space.log:
            grid[key] = list(range(space.low, space.high + 1, space.step))
        else:
            raise TuneError(f"space.{key}: the grid sampler needs choices or int ranges; give a choice of values, or use tpe or random.")
    return grid


def grid_points(config: TuneConfig) -> list[dict[str, Any]]:
    """Every point of the grid (the product of the keys' values), in an order shuffled by the seed."""
    import itertools
    import random

    grid = grid_space(config)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    random.Random(config.sampler.seed).shuffle(points)
    return points


def next_grid_point(config: TuneConfig, trials: list[Any]) -> dict[str, Any] | None:
    """The first grid point that no counted trial has taken (``None``: the grid is done)."""
    taken = {json.dumps(trial.params, sort_keys=True) for trial in trials}
    return next((point for point in grid_points(config) if json.dumps(point, sort_keys=True) not in taken), None)


def make_pruner(config: TuneConfig) -> Any:
    optuna = _optuna()
    classes = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "threshold": optuna.pruners.ThresholdPruner,
    }
    try:
        return classes[config.pruner.name](**config.pruner.params)
    except (TypeError, ValueError) as error:
        raise TuneError(f"pruner.params: Optuna's {classes[config.pruner.name].__name__} does not accept {config.pruner.params}: {error}.") from None


def load_study(folder: Path, config: TuneConfig, number: int = 0) -> optuna.Study:
    """The folder's study, with the sampler of trial ``number``."""
    optuna = _optuna()
    return optuna.create_study(
        storage=storage_for(folder, config),
        study_name=STUDY_NAME if not config.storage else f"{STUDY_NAME}-{config.name}",
        direction="maximize",
        sampler=make_sampler(config, number),
        pruner=make_pruner(config),
        load_if_exists=True,
    )


def suggest(trial: optuna.Trial, config: TuneConfig) -> dict[str, Any]:
    """The trial's value of every searched key."""
    values: dict[str, Any] = {}
    for key, space in config.space.items():
        if isinstance(space, Choice):
            values[key] = json.loads(trial.suggest_categorical(key, [json.dumps(value) for value in space.values]))
        elif isinstance(space, IntRange):
            values[key] = trial.suggest_int(key, space.low, space.high, step=space.step, log=space.log)
        else:
            values[key] = trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)
    return values


def counted(trials: list[Any]) -> list[Any]:
    """The study's trials that count towards ``trials``: all but those a killed worker left, whose
    values a later trial took again (``user_attrs["resumes"]``)."""
    resumed = {trial.user_attrs.get("resumes") for trial in trials}
    return [trial for trial in trials if trial.number not in resumed]


class PruningReporter:
    """A per-run hook: after every epoch of the scored stage, report its validation accuracy to
    the trial and stop the run when the pruner says so."""

    def __init__(self, trial: optuna.Trial, stage: str | None) -> None:
        self.trial, self.stage = trial, stage
        self.pruned = False

    @hookimpl
    def kdframe_on_epoch_end(self, run: Any, stage: Any, state: Any, control: Any) -> None:
        if stage.name != (self.stage or run.stages[-1].name):  # only the scored stage (default: the last)
            return
        value = state.metrics.get("val/acc")
        if value is None:
            return
        self.trial.report(float(value), step=state.epoch + 1)
        if self.trial.should_prune():
            self.pruned = True
            control.stop_run = True


# ---------------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------------


def start_tune(
    path: str | Path,
    *,
    out: str | Path | None = None,
    trials: int | None = None,
    quiet: bool = False,
    plan_only: bool = False,
    log: Log | None = print,
) -> Path:
    """Validate a tune file, create its folder and study, and (unless ``plan_only``) be its first
    worker; return the tune folder."""
    say = log or (lambda line: None)
    if out is not None:
        folders.check_unused(Path(out), "tune")
    config, base = load_tune(path, trials=trials)
    source = f"Tune file '{path}'"
    _optuna()
    if config.sampler.name == "grid" and config.trials > len(grid_points(config)):
        raise TuneError(
            f"{source}: trials ({config.trials}) is more than the grid's {len(grid_points(config))} points; "
            "the grid sampler runs each point once. Set trials to at most that number."
        )
    make_pruner(config)
    say(f"Validating the search space of '{path}' ...")
    plugins = validate_tune(config, base, source)
    folder = folders.claim(Path(out) if out is not None else folders.default_folder(config.name), "tune")
    state = {"format": 1, "source": str(path), "config": config.model_dump(mode="json", by_alias=True), "base": base}
    folders.write_text_atomic(folder / TUNE_FILE, json.dumps(state, indent=2) + "\n")
    load_study(folder, config)  # create it now, so that --join finds it
    keys = ", ".join(config.space)
    say(f"Study '{config.name}': {config.trials} trial(s) over {keys}; objective {config.objective.metric} "
        f"of {config.objective.stage or 'the last stage'} (validation split); sampler {config.sampler.name}, pruner {config.pruner.name}.")
    say(f"Tune folder: {folder}")
    if plan_only:
        say(f"Start workers with: kdframe tune --join {folder}")
        return folder
    tune_worker(folder, plugins=plugins, quiet=quiet, log=say)
    return folder


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def recover_stale(folder: Path, config: TuneConfig, say: Log) -> None:
    """Mark the ``RUNNING`` trials whose folder no worker holds (their worker was killed) failed,
    and enqueue their values again for a trial that resumes their folder. Under the tune lock."""
    optuna = _optuna()
    study = load_study(folder, config)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_folder = trial.user_attrs.get("folder")
        if not trial_folder:
            continue
        with folders.try_lock(folder / trial_folder, "trial") as free:
            if not free:
                continue
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number, "folder": trial_folder})
            say(f"Trial {trial.number} was left unfinished by a stopped or killed worker; its values are queued again and its folder {trial_folder} will be resumed.")


def ensure_trained_once(folder: Path, data: dict[str, Any], plugins: Plugins, quiet: bool, say: Log) -> dict[str, str]:
    """Train (or wait for, or resume) every ``train_once`` model; return ``{model: checkpoint}``."""
    from kdframe.runner import read_results

    config: TuneConfig = data["config"]
    checkpoints: dict[str, str] = {}
    for model in config.train_once:
        run_folder = folder / TRAIN_ONCE_FOLDER / model
        run_folder.mkdir(parents=True, exist_ok=True)
        with folders.exclusive_lock(run_folder, "train_once", wait=True):
            results = read_results(run_folder) if (run_folder / "results.json").is_file() else {}
            if not results.get("finished"):
                raw = apply_overrides(data["base"], [f"curriculum={json.dumps({'name': 'direct', 'params': {'student': model}})}"])
                raw["name"] = f"{config.name}-{model}"
                stages = raw.get("training", {}).get("stages")
                if isinstance(stages, dict):  # per-stage overrides of the other stages do not apply
                    raw["training"]["stages"] = {name: value for name, value in stages.items() if name == model}
                say(f"Training '{model}' once for every trial -> {run_folder}")
                _run(run_folder, raw, plugins, quiet, f"'{folder / TUNE_FILE}', train_once '{model}'", say)
                results = read_results(run_folder)
            rows = [row for row in results.get("stages", []) if row.get("stage") == model]
            if not rows or not rows[-1].get("checkpoint"):
                raise TuneError(f"train_once '{model}' in '{run_folder}' saved no checkpoint; see its results.json.")
            checkpoints[model] = str((run_folder / rows[-1]["checkpoint"]).resolve())
    return checkpoints


def _run(run_folder: Path, raw: dict[str, Any], plugins: Plugins, quiet: bool, source: str, say: Log) -> list[Any]:
    """Run (or resume) a schedule in ``run_folder``, which the caller has locked."""
    from kdframe.runner import SCHEDULE_FILE, resume_in_folder, start_in_folder

    if (run_folder / SCHEDULE_FILE).is_file():
        say(f"Resuming {run_folder} from its last saved epoch.")
        return resume_in_folder(run_folder, quiet=quiet, plugins=plugins)
    return start_in_folder(run_folder, raw, plugins, quiet=quiet, source=source)


def tune_worker(folder: str | Path, *, plugins: Plugins | None = None, quiet: bool = False, log: Log | None = print) -> bool:
    """Be one worker of the study in ``folder``: run trials until the study has its ``trials``;
    write the report; return whether every trial has finished (no other worker is still on one)."""
    from kdframe.runner import plugins_for
    from kdframe.schedule import plugin_selection

    optuna = _optuna()
    folder = Path(folder)
    say = log or (lambda line: None)
    data = read_tune_folder(folder)
    config: TuneConfig = data["config"]
    if plugins is None:
        plugins = plugins_for(plugin_selection(data["base"], f"'{folder / TUNE_FILE}': base"))
    checkpoints = ensure_trained_once(folder, data, plugins, quiet, say)
    base = apply_overrides(data["base"], [f"models.{model}.checkpoint={json.dumps(path)}" for model, path in checkpoints.items()])
    me = _worker_name()
    while True:
        with contextlib.ExitStack() as stack:
            with folders.exclusive_lock(folder, "tune", wait=True):
                recover_stale(folder, config, say)
                study = load_study(folder, config)
                done = len(counted(study.get_trials(deepcopy=False)))
                if done >= config.trials:
                    break
                study = load_study(folder, config, number=done)
                trials = counted(study.get_trials(deepcopy=False))
                waiting = any(trial.state == optuna.trial.TrialState.WAITING for trial in trials)
                if config.sampler.name == "grid" and not waiting:
                    point = next_grid_point(config, trials)
                    if point is None:
                        break
                    study.enqueue_trial(point)
                trial = study.ask()
                values = suggest(trial, config)  # under the lock: the next worker sees these params taken
                resumes = trial.user_attrs.get("resumes")
                trial_folder = trial.user_attrs.get("folder") or f"{TRIALS_FOLDER}/trial-{trial.number:04d}"
                (folder / trial_folder).mkdir(parents=True, exist_ok=True)
                stack.enter_context(folders.exclusive_lock(folder / trial_folder, "trial"))
                trial.set_user_attr("folder", trial_folder)
                trial.set_user_attr("worker", me)
            _run_trial(folder, config, base, study, trial, values, trial_folder, done, resumes, plugins, quiet, say)
    finished = not load_study(folder, config).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    with folders.exclusive_lock(folder, "tune", wait=True):
        write_report(folder)
    return finished


def _run_trial(
    folder: Path,
    config: TuneConfig,
    base: dict[str, Any],
    study: optuna.Study,
    trial: optuna.Trial,
    values: dict[str, Any],
    trial_folder: str,
    index: int,
    resumes: int | None,
    plugins: Plugins,
    quiet: bool,
    say: Log,
) -> None:
    optuna = _optuna()
    shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in values.items())
    say(f"{'' if quiet else chr(10)}[{index + 1}/{config.trials}] trial {trial.number}: {shown}" + (f" (resumes trial {resumes})" if resumes is not None else ""))
    raw = trial_schedule(config, base, values, trial.number)
    reporter = PruningReporter(trial, config.objective.stage)
    name = "kdframe-tune-pruning"
    plugins.register_for_run(reporter, name)
    try:
        results = _run(folder / trial_folder, raw, plugins, quiet, f"Tune '{config.name}', trial {trial.number} ({shown})", say)
    except KdframeError as error:
        if getattr(error, "exit_code", 1) == 130:
            raise  # stopped by a signal: the folder's lock is released, the next worker resumes it
        trial.set_user_attr("error", str(error)[:2000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        say(f"Trial {trial.number} failed: {str(error).splitlines()[0]}")
        return
    finally:
        plugins.unregister(name)
    scored = [result for result in results if config.objective.stage in (None, result.stage)]
    result = scored[-1]
    value = getattr(result, config.objective.metric)
    trial.set_user_attr("epochs_run", result.epochs_run)
    trial.set_user_attr("test_acc_at_best", result.best_test_acc)
    trial.set_user_attr("wall_time_s", round(sum(r.wall_time_s for r in results), 3))
    if reporter.pruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        say(f"Trial {trial.number} pruned after {result.epochs_run} epoch(s) (val acc {value:.2f} %).")
    elif value is None or not math.isfinite(value):
        trial.set_user_attr("error", "no validation accuracy")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, float(value))
        best = study.best_trial
        say(f"Trial {trial.number}: {config.objective.metric} {value:.2f} % (best so far: trial {best.number}, {best.value:.2f} %).")


def join_tune(folder: str | Path, *, quiet: bool = False, log: Log | None = print) -> bool:
    """Resume a study that stopped, or add a worker to one that is running."""
    folder = Path(folder)
    read_tune_folder(folder)
    (log or print)(f"Joining the study in {folder}")
    return tune_worker(folder, quiet=quiet, log=log)


# ---------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------


def trial_rows(folder: Path) -> tuple[TuneConfig, list[dict[str, Any]]]:
    """Every counted trial of the study as a row: number, state, value, params, epochs, time."""
    data = read_tune_folder(folder)
    config: TuneConfig = data["config"]
    rows = []
    for trial in counted(load_study(folder, config).get_trials(deepcopy=False)):
        values = {key: json.loads(value) if isinstance(config.space.get(key), Choice) else value for key, value in trial.params.items()}
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value,
                "last_reported": max(trial.intermediate_values.items())[1] if trial.intermediate_values else None,
                "epochs_run": trial.user_attrs.get("epochs_run"),
                "test_acc_at_best": trial.user_attrs.get("test_acc_at_best"),
                "wall_time_s": trial.user_attrs.get("wall_time_s"),
                "folder": trial.user_attrs.get("folder", ""),
                "params": values,
            }
        )
    return config, rows


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if not isinstance(value, str) else value


def write_report(folder: str | Path) -> str:
    """Write ``trials.csv``, ``results.md``, ``tune.png`` and ``best_schedule.json``; return the Markdown."""
    folder = Path(folder)
    data = read_tune_folder(folder)
    config, rows = trial_rows(folder)
    keys = list(config.space)
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["trial", "state", config.objective.metric, "last_reported_val_acc", "epochs_run", "test_acc_at_best", "wall_time_s", *keys, "folder"])
    for row in rows:
        writer.writerow(
            [row["trial"], row["state"], "" if row["value"] is None else row["value"], "" if row["last_reported"] is None else row["last_reported"],
             row["epochs_run"] or "", "" if row["test_acc_at_best"] is None else row["test_acc_at_best"], row["wall_time_s"] or "",
             *[json.dumps(row["params"][key]) if key in row["params"] else "" for key in keys], row["folder"]]
        )
    (folder / TRIALS_CSV).write_text(stream.getvalue())
    complete = [row for row in rows if row["state"] == "complete"]
    best = max(complete, key=lambda row: row["value"]) if complete else None
    lines = [f"# Study `{config.name}`", ""]
    if config.description:
        lines += [config.description, ""]
    lines += [
        f"| trial | state | {config.objective.metric} % | epochs | test % at best | time | " + " | ".join(f"`{key}`" for key in keys) + " |",
        "|---:|---|---:|---:|---:|---:|" + "---|" * len(keys),
    ]
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.2f}"
        if row["state"] == "pruned" and row["last_reported"] is not None:
            value = f"({row['last_reported']:.2f})"
        test = "-" if row["test_acc_at_best"] is None else f"{row['test_acc_at_best']:.2f}"
        wall = "-" if row["wall_time_s"] is None else f"{row['wall_time_s']:.0f} s"
        mark = " **best**" if best is not None and row["trial"] == best["trial"] else ""
        params = " | ".join(_show(row["params"].get(key, "-")) for key in keys)
        lines.append(f"| {row['trial']}{mark} | {row['state']} | {value} | {row['epochs_run'] or '-'} | {test} | {wall} | {params} |")
    lines += [
        "",
        f"The objective is the scored stage's {config.objective.metric} on the validation split; *test % at best* is only "
        "reported, never used to choose. Pruned trials show their last reported validation accuracy in brackets.",
        "",
    ]
    if best is not None:
        schedule = trial_schedule(config, _base_with_checkpoints(folder, data), best["params"], None)
        folders.write_text_atomic(folder / BEST_SCHEDULE, json.dumps(schedule, indent=2) + "\n")
        lines.append(f"Best: trial {best['trial']}, {best['value']:.2f} %: " + ", ".join(f"`{k}` = {_show(v)}" for k, v in best["params"].items())
                     + f". Its schedule: {BEST_SCHEDULE} (kdframe run accepts it).")
    text = "\n".join(lines) + "\n"
    (folder / RESULTS_MD).write_text(text)
    write_png(config, rows, folder / TUNE_PNG)
    return text


def _base_with_checkpoints(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    config: TuneConfig = data["config"]
    assignments = []
    for model in config.train_once:
        paths = sorted((folder / TRAIN_ONCE_FOLDER / model / "stages").glob(f"*-{model}/student.pt"))
        if paths:
            assignments.append(f"models.{model}.checkpoint={json.dumps(str(paths[-1].resolve()))}")
    return apply_overrides(data["base"], assignments)


def write_png(config: TuneConfig, rows: list[dict[str, Any]], path: Path) -> None:
    """The objective by trial (best so far as a line; pruned trials hollow) and against each searched key."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(config.space)
    figure = Figure(figsize=(4.2 * (1 + len(keys)), 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 1 + len(keys), squeeze=False)[0]
    scored = [(row, row["value"] if row["value"] is not None else row["last_reported"]) for row in rows]
    scored = [(row, value) for row, value in scored if value is not None]
    complete = [(row, value) for row, value in scored if row["state"] == "complete"]
    pruned = [(row, value) for row, value in scored if row["state"] != "complete"]
    ax = axes[0]
    ax.scatter([row["trial"] for row, _ in complete], [value for _, value in complete], color="#4C72B0", label="complete", zorder=3)
    ax.scatter([row["trial"] for row, _ in pruned], [value for _, value in pruned], facecolors="none", edgecolors="#DD8452", label="pruned (last value)", zorder=3)
    best, xs, ys = -math.inf, [], []
    for row, value in sorted(complete, key=lambda item: item[0]["trial"]):
        best = max(best, value)
        xs.append(row["trial"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{config.objective.metric} %")
    ax.set_title(f"{config.name}: {config.objective.metric} by trial", fontsize=9)
    if scored:
        ax.legend(fontsize=7)
    for ax, key in zip(axes[1:], keys):
        space = config.space[key]
        if isinstance(space, Choice):
            labels = [_show(value) for value in space.values]
            position = {json.dumps(value, sort_keys=True): index for index, value in enumerate(space.values)}
            def where(row: dict[str, Any], key: str = key) -> float:
                return float(position[json.dumps(row["params"][key], sort_keys=True)])
            ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels)) > 6 else 0, fontsize=7)
        else:
            def where(row: dict[str, Any], key: str = key) -> float:
                return float(row["params"][key])
            if space.log:
                ax.set_xscale("log")
        for subset, style in ((complete, {"color": "#4C72B0"}), (pruned, {"facecolors": "none", "edgecolors": "#DD8452"})):
            points = [(where(row), value) for row, value in subset if key in row["params"]]
            if points:
                ax.scatter([x for x, _ in points], [y for _, y in points], zorder=3, **style)
        ax.set_xlabel(key, fontsize=8)
        ax.set_title(f"{config.objective.metric} against {key.rsplit('.', 1)[-1]}", fontsize=9)
    try:
        figure.savefig(path, dpi=110)
    except OSError as error:
        raise TuneError(f"Cannot write '{path}': {error.strerror}.") from None


__all__ = [
    "Choice",
    "FloatRange",
    "IntRange",
    "TuneConfig",
    "join_tune",
    "load_tune",
    "start_tune",
    "trial_rows",
    "tune_worker",
    "validate_tune",
    "write_report",
]
