"""Pydantic models of a JSON schedule, loading with clear errors, ``--set`` overrides.

A schedule is validated in two passes, both before any training starts:

1. :func:`parse_schedule` checks the structure (unknown keys are errors, numbers in range).
2. :func:`validate_schedule` checks every component reference against the registry: the name exists
   and its ``params`` validate against the component's own Pydantic model; then the curriculum's stage
   plan is checked (see :mod:`kdframe.curriculum`).

Errors carry the path of the offending value, e.g. ``distill.losses[1].params.temperature``.
"""

from __future__ import annotations

import copy
import json
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdframe.errors import ComponentError, ScheduleError, printable, suggest
from kdframe.strict_numbers import BOOL_NOT_NUMBER, NoBoolNumbers
from kdframe.value_schedule import ScheduledFloat, value_range

if TYPE_CHECKING:
    from kdframe.registry import Registry

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
#: How deeply a schedule's JSON may nest (a real schedule needs under ten levels).
MAX_DEPTH = 64
#: The largest seed a schedule may hold (NumPy's generators take 32-bit seeds).
MAX_SEED = 2**32 - 1


class StrictModel(NoBoolNumbers):
    """Schedule sections: unknown keys are errors; numbers must be finite and never ``true``/``false``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class ComponentRef(StrictModel):
    """A reference to a registered component: its name and its params (validated by the component)."""

    name: str = Field(description="Registered component name (see 'kdframe plugins').")
    params: dict[str, Any] = Field(
        default_factory=dict, description="The component's params; 'kdframe plugins --params' lists them."
    )


class LossConfig(ComponentRef):
    """One weighted term of a stage's loss: ``total = sum(weight * term)``."""

    weight: ScheduledFloat = Field(
        1.0,
        description="Multiplier of this term in the total loss: a number, or a schedule over epochs "
        "such as {\"schedule\": \"linear\", \"start\": 0, \"end\": 1, \"epochs\": 20}.",
    )

    @field_validator("weight")
    @classmethod
    def _non_negative(cls, value: ScheduledFloat) -> ScheduledFloat:
        lowest, _ = value_range(value)  # over every epoch: a step schedule with gamma < 0 flips sign
        if lowest < 0:
            raise ValueError(f"a loss weight must not be negative (this one reaches {lowest:g})")
        return value


class DataConfig(StrictModel):
    """Which dataset to train and evaluate on, and how to batch it."""

    dataset: str = Field(description="Registered dataset name, e.g. 'fashion_mnist'.")
    params: dict[str, Any] = Field(default_factory=dict, description="The dataset's params.")
    batch_size: int = Field(128, ge=1, le=1_000_000, description="Training batch size.")
    eval_batch_size: int = Field(1024, ge=1, le=1_000_000, description="Evaluation batch size.")
    train_samples: int | None = Field(
        None, ge=1, description="Use only this many training samples (a seeded random subset)."
    )
    test_samples: int | None = Field(
        None, ge=1, description="Evaluate on only this many test samples (a seeded random subset)."
    )
    num_workers: int = Field(
        0,
        ge=0,
        le=256,
        description="DataLoader worker processes that read a streaming dataset (e.g. image_folder); "
        "0 reads in the training process. In-memory datasets ignore it.",
    )
    validation_samples: int | None = Field(
        None,
        ge=1,
        description="Hold out this many training samples as a validation split, which selects the "
        "best epoch and runs the collapse check (the test split is then only reported). For a "
        "dataset that ships its own validation split (image_folder with val/): use only this many "
        "of it. Default: no validation split, unless the dataset ships one.",
    )
    validation_fraction: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Hold out this fraction of the training samples as the validation split "
        "(instead of validation_samples).",
    )
    validation_seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="Seed of the validation split's samples; independent of the run's seed, so "
        "every run of a sweep holds out the same samples.",
    )

    @model_validator(mode="after")
    def _one_validation_size(self) -> DataConfig:
        if self.validation_samples is not None and self.validation_fraction is not None:
            raise ValueError("give validation_samples or validation_fraction, not both")
        return self

    @property
    def validation_requested(self) -> bool:
        """Whether the schedule asks for a validation split."""
        return self.validation_samples is not None or self.validation_fraction is not None


class ModelConfig(StrictModel):
    """A named model: its architecture and, optionally, a checkpoint to use as it is or a weights
    file to start training from."""

    arch: str = Field(description="Registered model architecture, e.g. 'plain_cnn'.")
    params: dict[str, Any] = Field(default_factory=dict, description="The architecture's params.")
    checkpoint: str | None = Field(
        None,
        description="Path of a saved state (a kdframe student.pt or a plain state_dict). A model "
        "with a checkpoint is used as it is; one without is trained in its own stage.",
    )
    weights: str | None = Field(
        None,
        description="Path of a local weights file (a plain state_dict, e.g. a torchvision .pth, or "
        "a kdframe student.pt) to start from before the model trains in its own stage: every "
        "tensor whose name and shape fit is loaded, the rest (e.g. a classifier head for another "
        "number of classes) keeps its fresh initialisation; the run prints what was loaded, "
        "re-initialised and ignored. Read with weights_only=True.",
    )

    @model_validator(mode="after")
    def _checkpoint_or_weights(self) -> ModelConfig:
        if self.checkpoint is not None and self.weights is not None:
            raise ValueError(
                "give checkpoint (use the model as it is) or weights (start training from them), not both"
            )
        return self


class FlatComponentRef(StrictModel):
    """A component reference whose params sit beside its name (``{"name": "sgd", "lr": 0.1}``), as
    the optimizer's and the LR schedule's always have: every key the reference itself does not
    define is one of the component's params, validated by the component. ``params`` nested as for
    other components (``{"name": "sgd", "params": {"lr": 0.1}}``) is accepted and moved beside."""

    model_config = ConfigDict(extra="allow")

    name: str

    #: Keys that a schedule written before these were components listed whatever the name; dropped
    #: when they hold their old default, so that such a schedule still validates.
    legacy_defaults: typing.ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _params_beside_the_name(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        nested = value.pop("params", None)
        if isinstance(nested, dict):
            value = {**value, **{k: v for k, v in nested.items() if k not in value}}
        elif nested is not None:
            value["params"] = nested  # reported as an unknown parameter 'params' of the component
        return {k: v for k, v in value.items() if not (k in cls.legacy_defaults and v == cls.legacy_defaults[k])}

    @property
    def params(self) -> dict[str, Any]:
        """The component's params: every key but the reference's own."""
        return dict(self.model_extra or {})


class ParamGroupConfig(StrictModel):
    """A parameter group of the optimizer: the parameters whose names match ``params`` get the
    other keys' values instead of the optimizer's params (e.g. ``{"params": "loss.*", "lr": 0.5}``)."""

    model_config = ConfigDict(extra="allow")

    params: str = Field(
        min_length=1,
        description="Wildcard over parameter names: 'student.<module path>.<name>' or "
        "'loss.<term>.<name>' (e.g. 'loss.*' for every loss term's adapters). A parameter belongs "
        "to the first group that matches; the others keep the optimizer's params.",
    )

    @property
    def overrides(self) -> dict[str, Any]:
        """The group's optimizer params (every key but ``params``)."""
        return dict(self.model_extra or {})


class OptimizerConfig(FlatComponentRef):
    """The optimizer, a component ('kdframe plugins --kind optimizer --params'): its name, its params
    beside the name (e.g. ``{"name": "sgd", "lr": 0.1}``) and parameter groups."""

    name: str = Field("sgd", description="Registered optimizer, e.g. 'sgd', 'adam', 'adamw'; its params sit beside the name.")
    param_groups: list[ParamGroupConfig] = Field(
        default_factory=list,
        description="Groups of parameters with their own optimizer params, e.g. "
        "[{\"params\": \"loss.*\", \"lr\": 0.5}] for a different LR for the loss terms' adapters.",
    )


class LRScheduleConfig(FlatComponentRef):
    """Learning-rate schedule, applied per step: linear warm-up, then the named decay, a component
    ('kdframe plugins --kind lr_schedule --params') whose params sit beside the name
    (e.g. ``{"name": "step", "milestones": [30]}``)."""

    legacy_defaults: typing.ClassVar[dict[str, Any]] = {"milestones": [], "gamma": 0.1, "min_lr_factor": 0.0}

    name: str = Field("cosine", description="Decay after warm-up: a registered LR schedule, e.g. 'cosine', 'step', 'constant'; its params sit beside the name.")
    warmup_epochs: float = Field(
        1.0,
        ge=0.0,
        le=100_000,
        description="Epochs of linear warm-up from warmup_start_factor * lr to lr. One epoch keeps "
        "KD with a high temperature from collapsing at lr 0.05.",
    )
    warmup_start_factor: float = Field(0.1, gt=0.0, le=1.0, description="LR factor at step 0.")


class TrainingConfig(StrictModel):
    """How one stage trains."""

    epochs: int = Field(10, ge=1, le=100_000, description="Epochs per stage.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Optimizer.")
    lr_schedule: LRScheduleConfig = Field(default_factory=LRScheduleConfig, description="LR schedule.")
    channels_last: bool = Field(
        True, description="Use the channels_last memory layout for 4-D inputs (faster convnets on CPU)."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Model forward passes under autocast in this dtype ('fp32': no autocast). 'fp16' "
        "adds a gradient scaler; loss terms always see float32 outputs.",
    )
    compile: bool = Field(False, description="Run the student's training forward pass through torch.compile.")
    teacher_cache: Literal["auto", "memory", "disk", "off"] = Field(
        "auto",
        description="Compute the teachers' outputs over the training split once and reuse them: 'auto' "
        "when valid (no augmentation, deterministic teacher), in memory or on disk by size; 'memory' "
        "or 'disk' insist (an error where caching is invalid); 'off' runs the teachers every batch.",
    )
    grad_clip_norm: float | None = Field(None, gt=0.0, description="Clip the gradient norm to this.")
    quantization_aware: bool = Field(
        False,
        description="Quantization-aware distillation: train the student with its convolutions and linear "
        "layers fake-quantized to int8 (weights per channel, inputs per tensor; straight-through "
        "gradients), so that it keeps its accuracy after 'kdframe export --int8'. Usually set for the "
        "final student only, in training.stages.",
    )

    on_collapse: Literal["warn", "stop"] = Field(
        "warn",
        description="What to do when test accuracy stays at chance level after the warm-up: "
        "'warn' marks the stage as collapsed in results; 'stop' ends the run with an error.",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="What to do when a loss term is NaN or infinite: 'stop' ends the stage with an error "
        "naming the term and step (the last epoch's checkpoint is kept); 'skip' drops the batch "
        "without an optimizer step and counts it.",
    )
    max_skipped_batches: int = Field(
        10,
        ge=0,
        le=1_000_000,
        description="With on_nonfinite 'skip': more non-finite batches than this in one epoch stop the stage.",
    )


class Training(TrainingConfig):
    """Training settings of every stage, with per-stage overrides."""

    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Overrides by stage name (the model the stage trains), e.g. "
        "{\"teacher\": {\"epochs\": 3}}; merged over the settings above.",
    )

    def for_stage(self, stage: str) -> TrainingConfig:
        """The settings of one stage: the common ones with that stage's overrides merged in."""
        base = self.model_dump(exclude={"stages"})
        override = self.stages.get(stage, {})
        for key in ("optimizer", "lr_schedule"):
            # Naming another optimizer (schedule) replaces the common one's params, which it may not have.
            named = override.get(key, {}).get("name") if isinstance(override.get(key), dict) else None
            if named is not None and named != base[key]["name"]:
                base[key] = {}
        merged = _deep_merge(base, override)
        return TrainingConfig.model_validate(merged)

    @model_validator(mode="after")
    def _check_overrides(self) -> Training:
        problems: list[str] = []
        for stage in self.stages:
            try:
                self.for_stage(stage)
            except ValidationError as error:
                problems += format_validation_error(error, prefix=f"stages.{stage}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _default_losses() -> list[LossConfig]:
    return [
        LossConfig(name="cross_entropy", weight=0.1),
        LossConfig(name="hinton_kd", weight=0.9, params={"temperature": 4.0}),
    ]


class DistillConfig(StrictModel):
    """The loss terms of stages that learn from teachers, and of stages that learn from labels."""

    losses: list[LossConfig] = Field(
        default_factory=_default_losses,
        min_length=1,
        description="Terms of every stage that has teachers. Default: Hinton KD with alpha = 0.9, "
        "i.e. 0.1 * cross_entropy + 0.9 * hinton_kd(T=4).",
    )
    scratch_losses: list[LossConfig] = Field(
        default_factory=lambda: [LossConfig(name="cross_entropy", weight=1.0)],
        min_length=1,
        description="Terms of stages without a teacher (teachers trained from scratch, NOKD).",
    )


class CurriculumConfig(ComponentRef):
    """Which curriculum turns the schedule into stages."""


def _default_loggers() -> list[ComponentRef]:
    return [ComponentRef(name="tensorboard"), ComponentRef(name="progress")]


class LoggingConfig(StrictModel):
    """Loggers attached to the run's events."""

    loggers: list[ComponentRef] = Field(
        default_factory=_default_loggers, description="Loggers by name; default tensorboard and progress."
    )


class CompressionConfig(StrictModel):
    """The compression report: each stage's model measured at the end of its stage (parameters,
    MACs, size, latency) and compared with the run's teacher (see docs/deployment.md)."""

    enabled: bool = Field(True, description="Measure every stage's model; false leaves 'compression' out of results.json.")
    latency_budget_s: float = Field(
        1.0, gt=0.0, le=600.0, description="The most seconds of timed forward passes per model and batch size (at least 3 are timed)."
    )
    latency_repeats: int = Field(30, ge=3, le=100_000, description="The most timed forward passes per model and batch size.")
    throughput_batch: int = Field(
        64, ge=1, le=100_000, description="Batch size of the throughput timing (test images; capped by the test split)."
    )


class PluginsConfig(StrictModel):
    """Which installed plugins a run loads (applied when kdframe builds the plugin manager)."""

    allow: list[str] | None = Field(
        None,
        description="Load only the entry-point plugins named here (wildcards allowed, e.g. 'kdframe_*'); "
        "null loads every installed plugin. First-party plugins must be listed too.",
    )
    block: list[str] = Field(
        default_factory=list, description="Entry-point plugins not to load (wildcards allowed)."
    )
    skip_broken: bool = Field(
        False,
        description="Leave out a plugin that fails to load or register, with a warning, instead of stopping.",
    )


class Schedule(StrictModel):
    """A complete experiment: data, models, training, distillation losses, curriculum, logging."""

    schema_url: str | None = Field(None, alias="$schema", description="JSON Schema for editors.")
    name: str = Field(pattern=NAME_PATTERN, max_length=100, description="Run name (used in folder names).")
    description: str = Field("", description="Free text.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of every random number generator.")
    deterministic: bool = Field(
        False,
        description="Use only deterministic algorithms (torch.use_deterministic_algorithms, no cuDNN "
        "benchmarking) so that reruns and resumed runs match bit for bit on the same machine; "
        "CPU runs are deterministic without it.",
    )
    device: str = Field("auto", description="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.")
    data: DataConfig
    models: dict[str, ModelConfig] = Field(min_length=1, description="Models by name.")
    training: Training = Field(default_factory=Training, description="Training settings.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Loss terms.")
    curriculum: CurriculumConfig
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Loggers.")
    compression: CompressionConfig = Field(default_factory=CompressionConfig, description="The compression report.")
    plugins: PluginsConfig = Field(default_factory=PluginsConfig, description="Plugin selection.")

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("models")
    @classmethod
    def _check_model_names(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        for key in value:
            if not re.fullmatch(NAME_PATTERN, key):
                raise ValueError(f"model name '{key}' must use letters, digits, '_', '-' or '.'")
        return value


# ---------------------------------------------------------------------------------------------------
# Loading and error formatting
# ---------------------------------------------------------------------------------------------------


def format_location(location: tuple[Any, ...]) -> str:
    """Turn a Pydantic error location into ``a.b[1].c``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            part = str(part) if str(part).isprintable() and part != "" else json.dumps(str(part))  # a key from the file
            text += f".{part}" if text else part
    return text or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The Pydantic models an annotation holds, looking through unions, ``Annotated``, lists and dicts."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in typing.get_args(annotation) for model in _models_in(argument)]


def _known_keys(model: type[BaseModel] | None, location: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the object at ``location`` below ``model`` (for "did you mean")."""
    models = [model] if model is not None else []
    for part in location:
        if isinstance(part, int) or not models:
            continue  # a list index keeps the item's models
        fields = [m.model_fields.get(str(part)) or next((f for f in m.model_fields.values() if f.alias == part), None) for m in models]
        models = [found for field in fields if field is not None for found in _models_in(field.annotation)]
    return sorted({field.alias or name for m in models for name, field in m.model_fields.items()})


def format_validation_error(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> list[str]:
    """One line per problem: ``path: message (got value)``. With ``model`` (the model validated), an
    unknown key gets a "did you mean" of the keys allowed there."""
    lines = []
    for item in error.errors(include_url=False):
        location = tuple(part for part in item["loc"] if part not in ("function-after",))
        # Discriminated unions add the tag to the location (optimizer.sgd.lr): drop it.
        location = tuple(part for part in location if part not in ("sgd", "adam", "adamw"))
        if item["type"] == BOOL_NOT_NUMBER:  # raised for the whole object; report each key's own path
            keys = str(item.get("ctx", {}).get("keys", "")).split(", ")
            lines += [f"{_join(prefix, format_location((*location, key)))}: must be a number, not true or false" for key in keys]
            continue
        path = _join(prefix, format_location(location))
        message = item["msg"]
        if item["type"] not in ("missing", "extra_forbidden") and "input" in item:
            shown = json.dumps(item["input"], default=str)
            if len(shown) <= 60:
                message += f" (got {shown})"
        if item["type"] == "extra_forbidden":
            close = suggest(str(location[-1]), _known_keys(model, location[:-1])) if location else ""
            message = f"unknown key.{close} (Check the spelling; 'kdframe schema' lists every key.)"
        lines.append(f"{path}: {message}")
    return lines


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def load_json(path: str | Path, *, max_bytes: int = 10 * 2**20, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """Read a schedule (or sweep) file: a JSON object in UTF-8 text.

    Every problem is a :class:`ScheduleError` that names the file: a missing path, a folder or device
    instead of a file, a file over ``max_bytes``, a byte-order mark, UTF-16 or binary content, bytes
    that are not UTF-8, malformed JSON (with its line and column), numbers Python cannot hold,
    nesting deeper than ``max_depth`` levels, or a top level that is not an object.
    """
    file = Path(path)
    try:
        if file.is_dir():
            raise ScheduleError(
                f"Schedule file '{file}' is a folder, not a file. Give the path of a .json schedule."
            )
        if file.exists() and not file.is_file():
            raise ScheduleError(
                f"Schedule file '{file}' is not a regular file (a device, pipe or socket). Give the "
                "path of a .json schedule."
            )
        with open(file, "rb") as stream:
            raw = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise ScheduleError(f"Schedule file '{file}' does not exist. Check the path.") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ScheduleError(f"Cannot read schedule file '{file}': {reason}. Check the path and its permissions.") from None
    if len(raw) > max_bytes:
        limit = f"{max_bytes / 2**20:.0f} MiB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
        raise ScheduleError(
            f"Schedule file '{file}' is larger than {limit}; a schedule is a small JSON file. Check "
            "that the path names the schedule."
        )
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ScheduleError(
            f"Schedule file '{file}' starts with a UTF-8 byte-order mark (BOM). Save it as UTF-8 "
            "without BOM (most editors offer this in their encoding menu)."
        )
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ScheduleError(f"Schedule file '{file}' is UTF-16 text, not UTF-8. Save it as UTF-8 JSON.")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ScheduleError(
            f"Schedule file '{file}' is not UTF-8 text: it holds binary data (a NUL byte at offset "
            f"{nul}). Check that the path names a JSON schedule."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ScheduleError(
            f"Schedule file '{file}' is not UTF-8 text (bad byte at offset {error.start}, line {line}). "
            "Save it as UTF-8 JSON."
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ScheduleError(
            f"Schedule file '{file}' is not valid JSON: {error.msg} at line {error.lineno}, "
            f"column {error.colno}. Fix the JSON syntax there (a missing comma or quote, or a "
            "trailing comma, is the usual cause)."
        ) from None
    except RecursionError:
        raise ScheduleError(
            f"Schedule file '{file}' is nested too deeply to be a schedule (over {max_depth} levels)."
        ) from None
    except ValueError as error:  # e.g. an integer literal of more digits than Python converts
        raise ScheduleError(f"Schedule file '{file}' holds a value Python cannot read: {str(error)[:200]}.") from None
    if not isinstance(data, dict):
        raise ScheduleError(
            f"Schedule file '{file}' must hold a JSON object ({{...}}), not {type(data).__name__}."
        )
    check_depth(data, f"Schedule file '{file}'", max_depth)
    return data


def check_depth(data: Any, source: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse JSON data nested more than ``max_depth`` levels: later steps (copies, validation)
    recurse into it. Checked iteratively, so absurd nesting cannot exhaust the stack here."""
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > max_depth:
            raise ScheduleError(
                f"{source} is nested more than {max_depth} levels deep; a schedule needs far fewer. "
                "Check the brackets."
            )
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def apply_overrides(data: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=JSON_VALUE`` assignments (``--set``) to a copy of the raw schedule.

    The value is parsed as JSON; if that fails it is taken as a string, so ``--set
    curriculum.name=direct`` works without quotes. List items are addressed by index
    (``distill.losses.1.weight=0.5``). Missing objects along the path are created.
    """
    result = copy.deepcopy(data)
    for assignment in assignments:
        key, sep, raw_value = assignment.partition("=")
        if not sep or not key.strip():
            raise ScheduleError(
                f"--set '{printable(assignment, limit=80)}' is not of the form dotted.key=VALUE, e.g. training.epochs=3."
            )
        try:
            value = json.loads(raw_value)
        except json.JSONDecodeError:
            value = raw_value
        except (RecursionError, ValueError) as error:  # absurd nesting; an integer of thousands of digits
            reason = "is nested far too deeply" if isinstance(error, RecursionError) else "holds a number Python cannot read"
            raise ScheduleError(
                f"--set {printable(key.strip(), limit=80)}: the value {reason} ({len(raw_value)} characters). "
                "Give a plain JSON value such as 3, 0.5, \"sgd\" or [10, 20]."
            ) from None
        check_depth(value, f"The value of --set {printable(key.strip(), limit=80)}", MAX_DEPTH - 1)
        parts = key.strip().split(".")
        node: Any = result
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not re.fullmatch(r"[0-9]{1,9}", part) or int(part) >= len(node):
                    raise ScheduleError(
                        f"--set {printable(key, limit=80)}: '{printable(where, limit=80)}' addresses a list of "
                        f"{len(node)} items; use an index from 0 to {len(node) - 1}."
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise ScheduleError(
                    f"--set {printable(key, limit=80)}: '{printable('.'.join(parts[:depth]), limit=80)}' is a "
                    f"{type(node).__name__}, not an object."
                )
    return result


def parse_schedule(data: dict[str, Any], source: str = "schedule") -> Schedule:
    """Validate a schedule's structure; errors list every problem with its path."""
    try:
        return Schedule.model_validate(data)
    except ValidationError as error:
        raise ScheduleError(_problems(source, format_validation_error(error, model=Schedule))) from None


def plugin_selection(data: Any, source: str = "schedule") -> PluginsConfig:
    """The ``plugins`` section of a raw schedule, validated on its own: it decides which plugins load,
    so it is read before the rest of the schedule can be checked against their components."""
    section = data.get("plugins", {}) if isinstance(data, dict) else {}
    try:
        return PluginsConfig.model_validate(section)
    except ValidationError as error:
        raise ScheduleError(_problems(source, format_validation_error(error, prefix="plugins"))) from None


def _problems(source: str, lines: list[str]) -> str:
    listing = "\n".join(f"  - {line}" for line in lines)
    plural = "s" if len(lines) > 1 else ""
    return f"{source} is invalid ({len(lines)} problem{plural}):\n{listing}"


#: Kinds whose params sit beside the name in a schedule (:class:`FlatComponentRef`).
FLAT_KINDS = ("optimizer", "lr_schedule")


def component_params(registry: Registry, kind: str, name: str, params: dict[str, Any], path: str) -> Any:
    """Validate ``params`` with the named component's own model; errors carry ``path`` (and
    ``.params``, except for the kinds whose params sit beside the name)."""
    spec = registry.spec(kind, name)
    try:
        return spec.params.model_validate(params)
    except ValidationError as error:
        prefix = path if kind in FLAT_KINDS else f"{path}.params"
        raise ScheduleError("\n".join(format_validation_error(error, prefix=prefix, model=spec.params))) from None


def component_refs(schedule: Schedule) -> list[tuple[str, str, ComponentRef | ModelConfig | DataConfig]]:
    """Every component reference in a schedule as ``(kind, path, ref)``."""
    refs: list[tuple[str, str, Any]] = [("dataset", "data", schedule.data)]
    refs += [("model", f"models.{key}", model) for key, model in schedule.models.items()]
    refs += [("loss", f"distill.losses[{i}]", loss) for i, loss in enumerate(schedule.distill.losses)]
    refs += [
        ("loss", f"distill.scratch_losses[{i}]", loss)
        for i, loss in enumerate(schedule.distill.scratch_losses)
    ]
    refs.append(("curriculum", "curriculum", schedule.curriculum))
    refs.append(("optimizer", "training.optimizer", schedule.training.optimizer))
    refs.append(("lr_schedule", "training.lr_schedule", schedule.training.lr_schedule))
    refs += [("logger", f"logging.loggers[{i}]", ref) for i, ref in enumerate(schedule.logging.loggers)]
    return refs


def _ref_name(kind: str, ref: Any) -> str:
    return ref.arch if kind == "model" else ref.dataset if kind == "dataset" else ref.name


def validate_components(schedule: Schedule, registry: Registry, source: str = "schedule") -> None:
    """Check every component name and params; collect all problems into one error."""
    problems: list[str] = []
    for kind, path, ref in component_refs(schedule):
        name = _ref_name(kind, ref)
        name_path = f"{path}.arch" if kind == "model" else f"{path}.dataset" if kind == "dataset" else f"{path}.name"
        try:
            component_params(registry, kind, name, ref.params, path)
        except ComponentError as error:
            problems.append(f"{name_path}: {error}")
        except ScheduleError as error:
            problems.extend(str(error).splitlines())
    problems += _training_problems(schedule, registry)
    if problems:
        raise ScheduleError(_problems(source, problems))


def _training_problems(schedule: Schedule, registry: Registry) -> list[str]:
    """The problems of each stage override's optimizer and LR schedule and of every parameter group
    (the common ones are component references, checked with the others)."""
    from kdframe.optim import group_overrides

    problems: list[str] = []
    settings = [("training", schedule.training)]
    settings += [(f"training.stages.{name}", schedule.training.for_stage(name)) for name in schedule.training.stages]
    for path, training in settings:
        checks = [("optimizer", training.optimizer), ("lr_schedule", training.lr_schedule)] if path != "training" else []
        for kind, ref in checks:
            try:
                component_params(registry, kind, ref.name, ref.params, f"{path}.{kind}")
            except ComponentError as error:
                problems.append(f"{path}.{kind}.name: {error}")
            except ScheduleError as error:
                problems.extend(str(error).splitlines())
        optimizer = training.optimizer
        if optimizer.name not in registry.components["optimizer"] or not optimizer.param_groups:
            continue
        spec = registry.spec("optimizer", optimizer.name)
        try:
            params = component_params(registry, "optimizer", optimizer.name, optimizer.params, f"{path}.optimizer")
        except ScheduleError:
            continue  # reported above
        for index, group in enumerate(optimizer.param_groups):
            group_path = f"{path}.optimizer.param_groups[{index}]"
            unknown = sorted(set(group.overrides) - set(spec.params.model_fields))
            if unknown:
                known = ", ".join(sorted(spec.params.model_fields))
                problems.append(f"{group_path}: {', '.join(unknown)} is not a param of optimizer '{optimizer.name}' (its params: {known})")
                continue
            if not group.overrides:
                problems.append(f"{group_path}: the group sets nothing; add the optimizer params it changes, e.g. \"lr\"")
                continue
            try:
                group_overrides(spec.params, params, group.overrides, group_path)
            except ScheduleError as error:
                problems.extend(str(error).splitlines())
    return problems


def resolved(schedule: Schedule, registry: Registry) -> dict[str, Any]:
    """The schedule as JSON data with every default filled in, component params included."""
    data = schedule.model_dump(mode="json", by_alias=True, exclude_none=False)
    data.pop("$schema", None)
    for kind, path, ref in component_refs(schedule):
        params = component_params(registry, kind, _ref_name(kind, ref), ref.params, path)
        node: Any = data
        # A model's key may hold digits and dots ("0", "t.v2"): it is one part, never an index.
        parts = ["models", path[len("models."):]] if kind == "model" else re.findall(r"[^.\[\]]+", path)
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if kind in FLAT_KINDS:
            node.update(params.model_dump(mode="json"))
        else:
            node["params"] = params.model_dump(mode="json")
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
