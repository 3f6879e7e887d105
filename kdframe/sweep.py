"""Experiment sweeps: one base schedule, several variants, several seeds, shared training.

A sweep file (JSON) names a base schedule (a file, or an inline object), a list of seeds and a set of
named variants, each a set of overrides merged into the base. :func:`load_sweep` validates every
(variant, seed) schedule in full (structure, component params, the curriculum's stage plan, data,
models, checkpoints and layers) and decides, before anything trains, which trained models are shared;
:func:`run_sweep` then runs every (variant, seed) pair as an ordinary run, into
``<out>/<variant>/seed-<seed>/``, and writes the report (:mod:`kdframe.report`).

**Sharing.** Every stage of every variant's plan gets a fingerprint: the SHA-256 of canonical JSON
holding what determines the model it trains: that model's architecture and resolved params, the
fingerprints of its teachers (recursively; a teacher loaded from a user checkpoint contributes the
file's size and SHA-256), the stage's loss terms, its resolved training settings (and those of its
pre-training phase), its teacher policy (``TeacherPolicy.describe()``), the model it starts from
(``init_from``), the data config, the
device and the seed (left out for the models named in ``share_across_seeds``). Runs go seed-major
(every variant of the first seed, then every variant of the next seed...). A model whose stage
fingerprint was trained by an earlier run is given that run's ``student.pt`` as its ``checkpoint``,
so the curriculum uses it instead of training it again. Exceptions: a variant's report model is
always trained by that variant's own run, a model whose snapshots (``model@N``) a later stage uses
is not reused, and models that the curriculum adds itself are not reused.

The fingerprint describes the experiment, not the random-number stream: a reused model is the one
the first run that needed it trained, which a stand-alone run of the variant's schedule reproduces
up to initialisation and shuffling order (the trainer derives those from the seed and the stage's
position in its run).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdframe import folders, snapshots
from kdframe.curriculum import StagePlan, make_curriculum, plan_stages, split_snapshot
from kdframe.registry import Registry
from kdframe.stage_kinds import TRAIN, planned_name, pretrain_name
from kdframe.errors import KdframeError, ScheduleError, SweepError, printable
from kdframe.plugins import Plugins
from kdframe.report import COMPARISONS_CSV, RESULTS_CSV, RESULTS_MD, RESULTS_PNG, SWEEP_FILE, SweepReport, write_report
from kdframe.schedule import (
    MAX_SEED,
    NAME_PATTERN,
    Schedule,
    apply_overrides,
    component_params,
    format_validation_error,
    load_json,
    parse_schedule,
    plugin_selection,
    resolved,
    validate_components,
)

SWEEP_FORMAT = "kdframe-sweep/1"
FINGERPRINT_VERSION = 2
#: Keys of an override object that name a component: restating one gives that component's params whole.
COMPONENT_KEYS = ("name", "arch", "dataset")
#: Names a variant cannot take, because the sweep folder holds files of these names.
RESERVED_NAMES = {SWEEP_FILE, RESULTS_CSV, RESULTS_MD, RESULTS_PNG, COMPARISONS_CSV}

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------
# The sweep file
# ---------------------------------------------------------------------------------------------------


class ComparisonConfig(BaseModel):
    """A comparison the report makes: ``variant`` minus ``baseline``, with the tests of kdframe.stats."""

    model_config = ConfigDict(extra="forbid")

    variant: str = Field(description="The variant compared (a key of 'variants').")
    baseline: str = Field(description="The variant it is compared with.")


class SweepConfig(BaseModel):
    """A sweep: a base schedule, its variants and the seeds every variant runs with."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    schema_url: str | None = Field(None, alias="$schema", description="JSON Schema location for editors; ignored.")
    name: str = Field(pattern=NAME_PATTERN, max_length=80, description="Sweep name (used in the folder's name).")
    description: str = Field("", description="Free text.")
    base: str | dict[str, Any] = Field(
        description="The base schedule: a file path (relative to the sweep file's folder) or an inline schedule object."
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0], min_length=1, description="Seeds; every variant runs once per seed."
    )
    variants: dict[str, dict[str, Any]] = Field(
        min_length=1,
        description="Variants by name: overrides merged into the base (objects merge, lists and "
        "values replace; restating a component gives its params whole).",
    )
    report_model: str | None = Field(
        None, description="The model whose stage is each variant's result; default: each run's last stage."
    )
    share: bool = Field(True, description="Train a model that several runs would train identically only once.")
    share_across_seeds: list[str] = Field(
        default_factory=list,
        description="Models trained once, with the first seed, and reused for every seed (e.g. [\"teacher\"]).",
    )
    comparisons: list[ComparisonConfig] = Field(
        default_factory=list,
        description="Pairs of variants the report compares (difference, Welch's and the paired "
        "t-test), e.g. [{\"variant\": \"BLKD\", \"baseline\": \"NOKD\"}]; default: each variant "
        "against the first.",
    )

    @model_validator(mode="after")
    def _comparisons_name_variants(self) -> SweepConfig:
        for index, comparison in enumerate(self.comparisons):
            for key in ("variant", "baseline"):
                name = getattr(comparison, key)
                if name not in self.variants:
                    raise ValueError(
                        f"comparisons[{index}].{key}: '{name}' is not a variant (variants: {', '.join(self.variants)})"
                    )
            if comparison.variant == comparison.baseline:
                raise ValueError(f"comparisons[{index}] compares '{comparison.variant}' with itself")
        return self

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: list[int]) -> list[int]:
        for seed in value:
            if not 0 <= seed <= 2**32 - 1:
                raise ValueError(f"seed {seed} must be between 0 and 2**32 - 1")
        duplicates = sorted({seed for seed in value if value.count(seed) > 1})
        if duplicates:
            raise ValueError(f"seed(s) {duplicates} appear more than once")
        return value

    @field_validator("variants")
    @classmethod
    def _check_variants(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in value.items():
            if not re.fullmatch(NAME_PATTERN, name) or name in RESERVED_NAMES:
                raise ValueError(
                    f"variant name '{name}' must use letters, digits, '_', '-' or '.' (it names a folder), "
                    f"and not be one of {', '.join(sorted(RESERVED_NAMES))}"
                )
            for key in ("seed", "name"):
                if key in overrides:
                    where = "the sweep's 'seeds' list" if key == "seed" else "the sweep (<sweep name>-<variant>)"
                    raise ValueError(f"variant '{name}' sets '{key}', which is set by {where}; remove it")
        return value

    @field_validator("share_across_seeds")
    @classmethod
    def _check_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a model is named more than once")
        return value


def merge_variant(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge a variant's overrides into a schedule (neither argument is changed).

    Objects merge key by key; lists and other values replace. Two exceptions keep the result
    meaningful: an override object that restates a component (it has ``name``, ``arch`` or
    ``dataset``) gives that component's ``params`` whole (the base's params are dropped; none given
    means the defaults), and an override object whose ``name`` differs from the base object's (e.g.
    an optimizer ``sgd`` -> ``adam``, a curriculum ``ta_chain`` -> ``direct``) replaces it entirely.
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            if "name" in value and "name" in current and value["name"] != current["name"]:
                merged[key] = copy.deepcopy(value)
                continue
            restates = any(part in value for part in COMPONENT_KEYS)
            inner = {k: v for k, v in value.items() if not (restates and k == "params")}
            result = merge_variant(current, inner)
            if restates:
                result["params"] = copy.deepcopy(value.get("params", {}))
            merged[key] = result
        else:
            merged[key] = copy.deepcopy(value)
    return merged


#: Schedule keys ``kdframe sweep --set`` may not change, and why.
RESERVED_OVERRIDES = {
    "seed": "the sweep sets each run's seed; give the seeds with --seeds 0,1,2",
    "name": "the sweep names each run <sweep name>-<variant>",
    "plugins": "the plugins are chosen once for the whole sweep; change the base schedule's plugins section",
}


def override_key(assignment: str) -> str:
    """The dotted key of a ``KEY=VALUE`` assignment."""
    return assignment.partition("=")[0].strip()


def check_sweep_overrides(assignments: list[str]) -> list[str]:
    """``assignments`` when none of them changes a key the sweep owns (:data:`RESERVED_OVERRIDES`)."""
    for assignment in assignments:
        top = override_key(assignment).split(".")[0]
        if top in RESERVED_OVERRIDES:
            raise SweepError(f"--set {printable(override_key(assignment), limit=80)}: {RESERVED_OVERRIDES[top]}.")
    return list(assignments)


def sets_key(overrides: dict[str, Any], dotted: str) -> bool:
    """Whether a variant's overrides give ``dotted`` themselves, or a whole value (a list, say) that
    holds it."""
    node: Any = overrides
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def _check_overrides_on_base(base: dict[str, Any], assignments: list[str], file: Path) -> None:
    """A ``--set`` that breaks a base schedule which is valid on its own is reported once, as the
    ``--set``'s mistake, rather than once per variant."""
    try:
        parse_schedule(base, "base")
    except KdframeError:
        return  # a partial base: the variants complete it, and their checks report any problem
    source = f"Sweep file '{file}': the base schedule with --set {' --set '.join(assignments)}"
    try:
        parse_schedule(apply_overrides(base, assignments), source)
    except ScheduleError as error:
        raise SweepError(str(error)) from None


def _read_sweep_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SweepError(f"Sweep file '{path}' does not exist. Check the path.") from None
    except OSError as error:
        raise SweepError(f"Cannot read sweep file '{path}': {error.strerror}.") from None
    except UnicodeDecodeError as error:
        raise SweepError(f"Sweep file '{path}' is not UTF-8 text (bad byte at offset {error.start}).") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SweepError(
            f"Sweep file '{path}' is not valid JSON: {error.msg} at line {error.lineno}, column "
            f"{error.colno}. Fix the JSON syntax there (a missing comma or quote, or a trailing comma)."
        ) from None
    if not isinstance(data, dict):
        raise SweepError(f"Sweep file '{path}' must hold a JSON object ({{...}}), not {type(data).__name__}.")
    return data


def _problems(source: str, lines: list[str]) -> str:
    listing = "\n".join(f"  - {line}" for line in lines)
    plural = "s" if len(lines) > 1 else ""
    return f"{source} is invalid ({len(lines)} problem{plural}):\n{listing}"


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (the ``--seeds`` option)."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    # ASCII digits only (str.isdigit admits '²'), and no more than a schedule's seed can hold.
    if not parts or not all(re.fullmatch(r"[0-9]{1,10}", part) for part in parts):
        raise SweepError(
            f"--seeds '{printable(text, limit=80)}' must be a comma-separated list of non-negative integers "
            f"(each at most {MAX_SEED}), e.g. --seeds 0,1,2."
        )
    seeds = [int(part) for part in parts]
    if max(seeds) > MAX_SEED:
        raise SweepError(f"--seeds '{text}' holds a seed above {MAX_SEED}, the largest a schedule's seed can be.")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds '{text}' names a seed more than once.")
    return seeds


# ---------------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------------


def canonical_hash(payload: Any) -> str:
    """SHA-256 of canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_identity(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of a user checkpoint (hashes are cached by path, size and mtime)."""
    file = Path(path)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return {"size": stat.st_size, "sha256": _FILE_HASHES[key]}


def policy_description(registry: Registry, curriculum: str, stage: StagePlan) -> Any:
    """The stage's teacher policy as JSON (``TeacherPolicy.describe()``), or ``None`` without one."""
    if stage.teacher_policy is None:
        return None
    with registry.component_code("curriculum", curriculum, "its teacher policy's describe()"):
        description = stage.teacher_policy.describe()
        json.dumps(description, sort_keys=True, allow_nan=False)  # a TypeError/ValueError names the plugin
    return description


def stage_fingerprints(
    schedule: Schedule,
    stages: list[StagePlan],
    plugins: Plugins,
    *,
    seed_free: frozenset[str] | set[str] = frozenset(),
    provided: dict[str, str] | None = None,
) -> dict[str, str]:
    """Fingerprint of every training stage of a plan, by stage name (see the module docstring).

    ``provided`` gives the fingerprint of models that a sweep loads from another run's checkpoint, so
    that the stages learning from them get the same fingerprints as in the run that trained them.
    """
    registry = plugins.registry
    provided = provided or {}
    trained: dict[str, str] = {}
    data = schedule.data.model_dump(mode="json")
    data["params"] = component_params(registry, "dataset", schedule.data.dataset, schedule.data.params, "data").model_dump(mode="json")

    def model_config(key: str) -> dict[str, Any]:
        config = schedule.models[key]
        params = component_params(registry, "model", config.arch, config.params, f"models.{key}")
        identity: dict[str, Any] = {"arch": config.arch, "params": params.model_dump(mode="json")}
        if config.weights is not None:  # only then, so that sweeps started before weights existed still join
            identity["weights"] = file_identity(config.weights)
        return identity

    def teacher_identity(key: str) -> Any:
        model, epoch = split_snapshot(key)
        if model in provided:
            identity: Any = provided[model]
        elif model in trained:
            identity = trained[model]
        else:
            checkpoint = schedule.models[model].checkpoint
            identity = {**model_config(model), "checkpoint": file_identity(checkpoint) if checkpoint else None}
        return identity if epoch is None else {"snapshot_of": identity, "epoch": epoch}

    fingerprints: dict[str, str] = {}
    for stage in stages:
        if stage.kind != TRAIN:
            continue
        losses = []
        for loss in stage.losses:
            params = component_params(registry, "loss", loss.name, loss.params, f"loss '{loss.name}'")
            losses.append({"name": loss.name, "weight": loss.model_dump(mode="json")["weight"], "params": params.model_dump(mode="json")})
        # Snapshots (``stage.snapshots``) are left out: keeping copies of a model does not change it.
        payload = {
            "version": FINGERPRINT_VERSION,
            "model": model_config(stage.student),
            "teachers": [teacher_identity(key) for key in stage.teachers],
            "losses": losses,
            "training": schedule.training.for_stage(stage.stage_name).model_dump(mode="json"),
            "pretrain_training": schedule.training.for_stage(pretrain_name(stage.stage_name)).model_dump(mode="json"),
            "teacher_policy": policy_description(registry, schedule.curriculum.name, stage),
            "init_from": teacher_identity(stage.init_from) if stage.init_from else None,
            "data": data,
            "device": schedule.device,
            "seed": None if stage.student in seed_free else schedule.seed,
        }
        fingerprint = canonical_hash(payload)
        fingerprints[stage.stage_name] = fingerprint
        trained[stage.student] = fingerprint
    return fingerprints


# ---------------------------------------------------------------------------------------------------
# Planning: validate everything, decide the sharing
# ---------------------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """One (variant, seed) run of a sweep and its sharing decisions."""

    variant: str
    seed: int
    raw: dict[str, Any]
    report_stage: str
    report_model: str
    trains: list[dict[str, Any]] = field(default_factory=list)
    reuses: list[dict[str, Any]] = field(default_factory=list)
    dropped_overrides: list[str] = field(default_factory=list)
    unused_overrides: list[str] = field(default_factory=list)
    status: str = "pending"

    @property
    def folder(self) -> str:
        """The run folder, relative to the sweep folder."""
        return f"{self.variant}/seed-{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "seed": self.seed,
            "folder": self.folder,
            "status": self.status,
            "report_stage": self.report_stage,
            "report_model": self.report_model,
            "trains": self.trains,
            "reuses": self.reuses,
            "dropped_overrides": self.dropped_overrides,
            "unused_base_overrides": self.unused_overrides,
            "schedule": self.raw,
        }


@dataclass
class SweepPlan:
    """A validated sweep, ready to run."""

    source: Path
    config: SweepConfig
    base: dict[str, Any]
    base_file: str | None
    seeds: list[int]
    runs: list[RunPlan]
    plugins: Plugins
    threads: int | None = None
    #: ``--set`` assignments applied to every run's schedule (already in each run's ``schedule``).
    overrides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        trained = sum(len(run.trains) for run in self.runs)
        reused = sum(len(run.reuses) for run in self.runs)
        return {
            "format": SWEEP_FORMAT,
            "name": self.config.name,
            "description": self.config.description,
            "source": str(self.source),
            "base_file": self.base_file,
            "base": self.base,
            "variants": self.config.variants,
            "overrides": self.overrides,
            "seeds": self.seeds,
            "order": "seed-major",
            "report_model": self.config.report_model,
            "share": self.config.share,
            "share_across_seeds": self.config.share_across_seeds,
            "comparisons": [comparison.model_dump() for comparison in self.config.comparisons],
            "threads": self.threads,
            "stages_trained": trained,
            "stages_reused": reused,
            "finished": all(run.status == "finished" for run in self.runs),
            "runs": [run.to_dict() for run in self.runs],
        }


def _source(path: Path, variant: str, seed: int | None = None) -> str:
    seed_text = f" (seed {seed})" if seed is not None else ""
    return f"Sweep '{path}', variant '{variant}'{seed_text}"


def _with_context(prefix: str, error: KdframeError) -> SweepError:
    return SweepError(f"{prefix}: {error}")


def _plan(raw: dict[str, Any], plugins: Plugins, source: str, *, check: bool = True) -> tuple[Schedule, list[StagePlan]]:
    """Parse, validate components and plan: (the schedule with the curriculum's models, its stages)."""
    schedule = parse_schedule(raw, source)
    validate_components(schedule, plugins.registry, source)
    curriculum = make_curriculum(schedule, plugins.registry)
    return plan_stages(schedule, curriculum, plugins.registry, schedule.curriculum.name, check=check)


def _stage_overrides(raw: dict[str, Any]) -> list[str]:
    """The stage names of ``training.stages`` in a raw schedule or overrides."""
    training = raw.get("training")
    stages = training.get("stages") if isinstance(training, dict) else None
    return list(stages) if isinstance(stages, dict) else []


def load_sweep(
    path: str | Path,
    *,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    plugins: Plugins | None = None,
    log: Log | None = None,
) -> SweepPlan:
    """Read and validate a sweep file and every (variant, seed) schedule, then plan the sharing.

    ``overrides`` are ``--set KEY=VALUE`` assignments applied to every run's schedule after its
    variant's own overrides (so they win, as ``--set`` wins over the file in ``kdframe run``).
    Nothing is trained and nothing is written. Raises :class:`SweepError` (or another
    :class:`KdframeError`) naming the variant and the path of every problem.
    """
    from kdframe.runner import plugins_for, prepare

    file = Path(path)
    data = _read_sweep_file(file)
    try:
        config = SweepConfig.model_validate(data)
    except ValidationError as error:
        raise SweepError(_problems(f"Sweep file '{file}'", format_validation_error(error))) from None
    if seeds is not None:
        try:
            config = SweepConfig.model_validate({**data, "seeds": list(seeds)})
        except ValidationError as error:
            raise SweepError(_problems(f"--seeds {','.join(map(str, seeds))}", format_validation_error(error))) from None
    if config.share_across_seeds and not config.share:
        raise SweepError(f"Sweep file '{file}': share_across_seeds needs \"share\": true; remove one of them.")

    base_file: str | None = None
    if isinstance(config.base, str):
        base_path = Path(config.base)
        if not base_path.is_absolute():
            base_path = file.parent / base_path
        base_file = str(base_path)
        try:
            base = load_json(base_path)
        except ScheduleError as error:
            raise SweepError(f"Sweep file '{file}': base: {error}") from None
    else:
        base = copy.deepcopy(config.base)
    if plugins is None:
        try:
            selection = plugin_selection(base, f"Sweep file '{file}': base")
        except ScheduleError as error:
            raise SweepError(str(error)) from None
        plugins = plugins_for(selection)
    registry = plugins.registry

    # 1. Structure, component params and the stage plan of every variant (they do not depend on the seed).
    raws: dict[str, dict[str, Any]] = {}
    plans: dict[str, tuple[Schedule, list[StagePlan]]] = {}
    unused: dict[str, list[str]] = {}
    problems: list[str] = []

    def problem(variant: str, error: KdframeError) -> None:
        message = str(error)
        if not message.startswith(_source(file, variant)):
            message = f"{_source(file, variant)}: {message}"
        problems.append(message)

    assignments = check_sweep_overrides(overrides or [])
    if assignments:
        _check_overrides_on_base(base, assignments, file)
    for variant, variant_overrides in config.variants.items():
        raw = merge_variant(base, variant_overrides)
        if assignments:
            try:
                raw = apply_overrides(raw, assignments)
            except ScheduleError as error:
                raise SweepError(f"Sweep file '{file}': {error}") from None
            replaced = [key for key in map(override_key, assignments) if sets_key(variant_overrides, key)]
            if replaced and log:
                log(f"Note: --set {', '.join(replaced)} replaces what variant '{variant}' sets itself.")
        raw["name"] = f"{config.name}-{variant}"
        raw["seed"] = config.seeds[0]
        raws[variant] = raw
        try:
            plans[variant] = _plan(raw, plugins, f"{_source(file, variant)}: the merged schedule", check=False)
        except KdframeError as error:
            problem(variant, error)
    if problems:
        raise SweepError("\n".join(problems))
    # The base's per-stage training overrides may name stages that only some variants have (the
    # teacher's, for a NOKD variant): they are dropped where their stage does not run. One that names
    # no stage of any variant stays, and is reported as the typo it is.
    stage_names = {variant: {stage.stage_name for stage in stages} for variant, (_, stages) in plans.items()}
    everywhere = set().union(*stage_names.values()) if stage_names else set()
    base_overrides = _stage_overrides(base)
    for variant, (planned, stages) in list(plans.items()):
        own = _stage_overrides(config.variants[variant])
        unused[variant] = [
            name
            for name in _stage_overrides(raws[variant])
            if name in base_overrides
            and name not in own
            and planned_name(name) not in stage_names[variant]
            and planned_name(name) in everywhere
        ]
        if unused[variant]:
            raws[variant] = _reuse_raw(raws[variant], {}, unused[variant])
        try:
            plans[variant] = _plan(raws[variant], plugins, f"{_source(file, variant)}: the merged schedule")
        except KdframeError as error:
            problem(variant, error)
            del plans[variant]
    if problems:
        raise SweepError("\n".join(problems))

    # 2. The report model and the models shared across seeds.
    report: dict[str, StagePlan] = {}
    for variant, (planned, stages) in plans.items():
        if config.report_model is None:
            report[variant] = stages[-1]
            continue
        matches = [stage for stage in stages if stage.student == config.report_model]
        if not matches:
            trained = ", ".join(stage.student for stage in stages)
            problems.append(
                f"report_model: variant '{variant}' does not train '{config.report_model}' (its stages "
                f"train: {trained}); name a model every variant trains, or leave report_model out to "
                "report each run's last stage"
            )
        else:
            report[variant] = matches[-1]
    known = {key for planned, _ in plans.values() for key in planned.models}
    for index, key in enumerate(config.share_across_seeds):
        if key not in known:
            problems.append(f"share_across_seeds[{index}]: no variant has a model '{key}' (models: {', '.join(sorted(known))})")
    seed_free = set(config.share_across_seeds)
    for variant, (planned, stages) in plans.items():
        trained_here = {stage.student for stage in stages if stage.kind == TRAIN}
        if variant in report and report[variant].student in seed_free:
            problems.append(
                f"share_across_seeds: '{report[variant].student}' is variant '{variant}''s report model; "
                "it must be trained with every seed"
            )
        for stage in stages:
            if stage.student not in seed_free:
                continue
            for teacher in stage.teachers:
                model = split_snapshot(teacher)[0]
                if model in trained_here and model not in seed_free:
                    problems.append(
                        f"share_across_seeds: '{stage.student}' learns from '{model}' in variant '{variant}', "
                        f"which is trained once per seed; add '{model}' to share_across_seeds too, or remove "
                        f"'{stage.student}'"
                    )
    if problems:
        raise SweepError(_problems(f"Sweep file '{file}'", sorted(set(problems), key=problems.index)))

    # 3. Full validation of every (variant, seed): data, models, checkpoints, layers.
    if log:
        log(f"Validating {len(config.variants) * len(config.seeds)} runs (data, models, checkpoints, layers) ...")
    for seed in config.seeds:
        for variant in config.variants:
            raw = {**raws[variant], "seed": seed}
            source = _source(file, variant, seed)
            try:
                schedule = parse_schedule(raw, source)
                prepare(schedule, plugins, resolved(schedule, registry))
            except KdframeError as error:
                raise _with_context(source, error) from error

    # 4. Sharing, run by run in seed-major order.
    cache: dict[str, dict[str, Any]] = {}  # fingerprint -> the run and stage that train it
    runs: list[RunPlan] = []
    for seed in config.seeds:
        for variant in config.variants:
            raw = {**raws[variant], "seed": seed}
            runs.append(_plan_run(file, config, variant, seed, raw, report[variant], cache, seed_free, plugins, unused[variant]))
    return SweepPlan(file, config, base, base_file, list(config.seeds), runs, plugins, overrides=assignments)


def _reuse_raw(raw: dict[str, Any], checkpoints: dict[str, str], dropped: list[str]) -> dict[str, Any]:
    """``raw`` with checkpoints set for reused models and the dropped training overrides removed."""
    result = copy.deepcopy(raw)
    for key, checkpoint in checkpoints.items():
        result["models"][key]["checkpoint"] = checkpoint
    overrides = result.get("training", {}).get("stages")
    if isinstance(overrides, dict):
        for name in dropped:
            overrides.pop(name, None)
    return result


def _plan_run(
    file: Path,
    config: SweepConfig,
    variant: str,
    seed: int,
    raw: dict[str, Any],
    report_stage: StagePlan,
    cache: dict[str, dict[str, Any]],
    seed_free: set[str],
    plugins: Plugins,
    unused: list[str],
) -> RunPlan:
    source = _source(file, variant, seed)
    planned, stages = _plan(raw, plugins, source)
    run = RunPlan(variant, seed, raw, report_stage.stage_name, report_stage.student, unused_overrides=unused)
    fingerprints = stage_fingerprints(planned, stages, plugins, seed_free=seed_free)
    snapshot_sources = {split_snapshot(key)[0] for key in snapshots.referenced(stages)}
    reuse: dict[str, str] = {}
    if config.share:
        for stage in stages:
            fingerprint = fingerprints.get(stage.stage_name)
            if (
                fingerprint in cache
                and stage.student != report_stage.student
                and stage.student in raw.get("models", {})
                and stage.student not in snapshot_sources
            ):
                reuse[stage.student] = fingerprint
                origin = cache[fingerprint]
                run.reuses.append(
                    {"model": stage.student, "stage": stage.stage_name, "fingerprint": fingerprint, "from": origin["run"], "from_stage": origin["stage"]}
                )
    final_stages, final_fingerprints = stages, fingerprints
    if reuse:
        placeholders = {key: f"<shared:{fingerprint[:12]}>" for key, fingerprint in reuse.items()}
        try:
            first = parse_schedule(_reuse_raw(raw, placeholders, []), source)
            curriculum = make_curriculum(first, plugins.registry)
            _, first_stages = plan_stages(first, curriculum, plugins.registry, first.curriculum.name, check=False)
            names = {stage.stage_name for stage in first_stages}
            run.dropped_overrides = [name for name in first.training.stages if planned_name(name) not in names]
            schedule = parse_schedule(_reuse_raw(raw, placeholders, run.dropped_overrides), source)
            final, final_stages = plan_stages(schedule, curriculum, plugins.registry, schedule.curriculum.name)
        except KdframeError as error:
            shared = ", ".join(f"'{entry['model']}' (from {entry['from']})" for entry in run.reuses)
            raise SweepError(
                f"{source}: the sweep shares {shared} with this run by giving it a checkpoint, but "
                f"curriculum '{planned.curriculum.name}' cannot run the schedule that way:\n{error}\n"
                "A curriculum must skip models that have a checkpoint. Set \"share\": false in the "
                "sweep file to train every model in every run."
            ) from error
        final_fingerprints = stage_fingerprints(final, final_stages, plugins, seed_free=seed_free, provided=reuse)
    for stage in final_stages:
        fingerprint = final_fingerprints.get(stage.stage_name)
        run.trains.append({"stage": stage.stage_name, "model": stage.student, "fingerprint": fingerprint})
        if fingerprint is not None and fingerprint not in cache:
            cache[fingerprint] = {"run": run.folder, "stage": stage.stage_name}
    return run


# ---------------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------------


def write_sweep_json(folder: Path, plan: SweepPlan) -> Path:
    """Write ``sweep.json`` atomically."""
    return folders.write_text_atomic(folder / SWEEP_FILE, json.dumps(plan.to_dict(), indent=2) + "\n")


def describe_plan(plan: SweepPlan) -> list[str]:
    """Lines that say, run by run, what trains and what is reused."""
    lines = [
        f"Sweep '{plan.config.name}': {len(plan.config.variants)} variant(s) x {len(plan.seeds)} seed(s) = "
        f"{len(plan.runs)} runs, seed-major."
    ]
    width = max(len(run.variant) for run in plan.runs)
    for run in plan.runs:
        trains = ", ".join(entry["stage"] for entry in run.trains) or "nothing"
        line = f"  seed {run.seed}  {run.variant:<{width}}  trains {trains}"
        if run.reuses:
            line += "; reuses " + ", ".join(f"{entry['model']} from {entry['from']}" for entry in run.reuses)
        lines.append(line)
    reused = sum(len(run.reuses) for run in plan.runs)
    trained = sum(len(run.trains) for run in plan.runs)
    if reused:
        lines.append(f"Sharing: {trained} stage trainings instead of {trained + reused} ({reused} reused).")
    else:
        lines.append(f"Sharing: nothing shared; {trained} stage trainings.")
    return lines


def run_sweep(
    path: str | Path,
    *,
    out: str | Path | None = None,
    quiet: bool = False,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    plugins: Plugins | None = None,
    log: Log | None = print,
    jobs: int = 1,
    threads: int | None = None,
    plan_only: bool = False,
) -> tuple[Path, SweepReport | None]:
    """Validate a sweep in full, write its plan (``sweep.json``), then run every (variant, seed) and
    write the report.

    With ``jobs`` 1 the runs go one after another in this process; with more, in that many worker
    processes (:mod:`kdframe.sweep_workers`). Every run uses ``threads`` PyTorch threads (default:
    the cores divided by ``jobs``), recorded in ``sweep.json`` for the workers that join later.
    PyTorch's CPU kernels round differently with different thread counts, so runs are bit-identical
    whatever the number of workers for the same ``threads``. With ``plan_only`` nothing runs (the
    report is ``None``): workers started with :func:`join_sweep` run it. ``overrides`` (``--set``)
    change every run's schedule, see :func:`load_sweep`.
    Returns the sweep folder and its report. ``log`` receives the plan and one line per run.
    """
    from kdframe.sweep_workers import default_threads, run_local_workers, work

    say = log or (lambda line: None)
    if out is not None:
        folders.check_unused(Path(out), "sweep")  # fail before the (possibly long) validation
    plan = load_sweep(path, seeds=seeds, overrides=overrides, plugins=plugins, log=say)
    plugins = plan.plugins
    folder = folders.claim(Path(out) if out is not None else folders.default_folder(plan.config.name), "sweep")
    for line in describe_plan(plan):
        say(line)
    say(f"Sweep folder: {folder}")
    plan.threads = threads or default_threads(jobs)
    write_sweep_json(folder, plan)
    if plan_only:
        return folder, None
    if jobs > 1:
        if not run_local_workers(folder, jobs, threads=plan.threads, log=say):
            raise SweepError(unfinished_message(folder))
    else:
        work(folder, plugins=plugins, quiet=quiet, threads=plan.threads, log=say)
    return folder, write_report(folder)


def unfinished_message(folder: Path) -> str:
    """Why a sweep run by local workers did not finish, and how to continue it."""
    from kdframe.sweep_workers import read_plan

    runs = read_plan(folder)["runs"]
    failed = [f"{run['folder']} ({str(run.get('error') or '').splitlines()[0] if run.get('error') else 'no message'})" for run in runs if run.get("status") == "failed"]
    text = f"The sweep in '{folder}' did not finish"
    text += f": run(s) failed: {'; '.join(failed)}." if failed else " (a worker stopped; see its log in logs/)."
    return (
        f"{text} Finished runs are kept and 'kdframe report {folder}' reports them. Continue with: "
        f"kdframe sweep --join {folder}{' --retry-failed' if failed else ''}"
    )


def join_sweep(
    folder: str | Path,
    *,
    jobs: int = 1,
    threads: int | None = None,
    quiet: bool = False,
    retry_failed: bool = False,
    log: Log | None = print,
) -> tuple[Path, SweepReport]:
    """Work on the sweep in ``folder`` (resume it, or help other workers, on this machine or another
    that mounts the folder at the same path) until every run has finished; return its report."""
    from kdframe.sweep_workers import read_plan, run_local_workers, work

    folder = Path(folder)
    planned = read_plan(folder).get("threads")  # also a clear error for a folder that is not a sweep's
    threads = threads or (planned if isinstance(planned, int) and planned >= 1 else None)
    if jobs > 1:
        if not run_local_workers(folder, jobs, threads=threads, log=log, retry_failed=retry_failed):
            raise SweepError(unfinished_message(folder))
    else:
        work(folder, quiet=quiet, threads=threads, log=log, retry_failed=retry_failed)
    return folder, write_report(folder)


__all__ = [
    "SWEEP_FILE",
    "SweepConfig",
    "SweepPlan",
    "RunPlan",
    "describe_plan",
    "join_sweep",
    "load_sweep",
    "merge_variant",
    "parse_seeds",
    "run_sweep",
    "stage_fingerprints",
]
