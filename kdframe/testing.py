"""Test helpers for kdframe and for plugin authors; pytest loads this module as the plugin ``kdframe``.

kdframe registers this module under the ``pytest11`` entry-point group, so in any environment where
kdframe is installed a test can use these fixtures without importing anything:

* ``kdframe_plugins``: a factory ``make(*plugins, load_entry_points=True, blocked=())`` returning a fresh
  :class:`~kdframe.plugins.Plugins` with the given plugin modules or objects (or ``(name, plugin)``
  pairs) registered for this test only;
* ``kdframe_run``: a factory ``run(schedule=None, *plugins, load_entry_points=True)`` that runs a
  schedule (by default :func:`tiny_schedule`) end to end in the test's ``tmp_path`` and returns the run
  folder and the stage results;
* ``kdframe_recorder``: a :class:`HookRecorder`, a plugin that records every trainer event.

The helpers are plain functions, usable without pytest too: :func:`tiny_schedule`,
:func:`write_schedule`, :func:`make_plugins`, :func:`run_tiny` and the component contract checks
:func:`check_loss_contract`, :func:`check_model_contract` and :func:`check_curriculum_contract`, which
raise ``AssertionError`` with a message naming the problem.

Importing this module has no side effects (pytest imports it at every start): nothing is built until a
fixture or helper is called.
"""

from __future__ import annotations

import itertools
import json
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from kdframe.curriculum import Curriculum, StagePlan, check_plan, plan_stages
from kdframe.data import DataInfo
from kdframe.errors import KdframeError, LayerError
from kdframe.hookspecs import hookimpl
from kdframe.losses import BuildContext, LossTerm, ModelOutputs, StepOutputs
from kdframe.registry import ComponentSpec, CurriculumSpec, LossSpec, ModelSpec, Registry
from kdframe.schedule import LossConfig, Schedule, apply_overrides, parse_schedule

if TYPE_CHECKING:
    from kdframe.plugins import Plugins
    from kdframe.state import StageResult

#: A plugin module or object, or a ``(name, plugin)`` pair.
PluginArg = object | tuple[str, object]

#: Shapes (without the batch dimension) of the student and teacher features that
#: :func:`check_loss_contract` offers a feature or relation term; a term must accept at least one.
LOSS_SHAPE_CASES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "maps": ((8, 8, 8), (16, 8, 8)),
    "maps of other sizes": ((8, 8, 8), (16, 4, 4)),
    "vectors": ((24,), (32,)),
}


def _require(condition: object, message: str) -> None:
    """Raise ``AssertionError(message)`` unless ``condition`` holds (works under ``python -O`` too)."""
    if not condition:
        raise AssertionError(message)


# ---------------------------------------------------------------------------------------------------
# Schedules and runs
# ---------------------------------------------------------------------------------------------------


def tiny_schedule(**changes: Any) -> dict[str, Any]:
    """A schedule that trains in a few seconds on the CPU, as a dict.

    A teacher-assistant chain (``plain_cnn`` depth 4 -> half-width depth 4 -> depth 2) on 128
    ``synthetic`` 16x16 images of 4 classes, 2 epochs per stage, with the TensorBoard logger and a
    compression report timed with 3 forward passes per model and batch size. It uses
    first-party components only, so it works in any environment where kdframe is installed.

    Args:
        changes: Dotted overrides in the style of ``kdframe run --set``; pass keys with dots through
            ``**{...}``, e.g. ``tiny_schedule(**{"training.epochs": 1, "models.student.arch": "mlp"})``.
            Values are Python values (dicts and lists included).
    """
    schedule: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "data": {
            "dataset": "synthetic",
            "params": {"num_classes": 4, "image_size": 16, "train_size": 128, "test_size": 64},
            "batch_size": 32,
            "eval_batch_size": 64,
        },
        "models": {
            "teacher": {"arch": "plain_cnn", "params": {"depth": 4}},
            "assistant": {"arch": "plain_cnn", "params": {"depth": 4, "width_multiplier": 0.5}},
            "student": {"arch": "plain_cnn", "params": {"depth": 2}},
        },
        "training": {"epochs": 2, "lr_schedule": {"warmup_epochs": 0.5}},
        "curriculum": {
            "name": "ta_chain",
            "params": {"teacher": "teacher", "assistants": ["assistant"], "student": "student"},
        },
        "logging": {"loggers": [{"name": "tensorboard"}]},
        # The compression report, measured in milliseconds rather than seconds.
        "compression": {"latency_repeats": 3, "latency_budget_s": 0.01, "throughput_batch": 8},
    }
    return apply_overrides(schedule, [f"{key}={json.dumps(value)}" for key, value in changes.items()])


def write_schedule(folder: Path, schedule: Mapping[str, Any], name: str = "schedule.json") -> Path:
    """Write a schedule dict as a JSON file in ``folder`` and return its path."""
    path = Path(folder) / name
    path.write_text(json.dumps(schedule, indent=2))
    return path


def _named(plugins: Sequence[PluginArg]) -> list[tuple[str, object]]:
    """``(name, plugin)`` pairs; a bare plugin is named after its module, or its class and position."""
    pairs: list[tuple[str, object]] = []
    for index, plugin in enumerate(plugins):
        if isinstance(plugin, tuple):
            name, value = plugin
            pairs.append((str(name), value))
        elif isinstance(plugin, types.ModuleType):
            pairs.append((plugin.__name__, plugin))
        else:
            pairs.append((f"{type(plugin).__qualname__}-{index}", plugin))
    return pairs


def make_plugins(
    *plugins: PluginArg, load_entry_points: bool = True, blocked: Sequence[str] = ()
) -> Plugins:
    """A fresh plugin manager with ``plugins`` registered after the installed ones.

    Args:
        plugins: Plugin modules or objects (a module is named after itself, an object after its class),
            or ``(name, plugin)`` pairs.
        load_entry_points: Also load the ``kdframe`` entry points of installed distributions (the
            first-party plugins among them). ``False`` registers ``plugins`` alone, which is how a
            plugin's own components are tested in isolation.
        blocked: Entry-point names not to load (e.g. your installed plugin, to register a test copy).
    """
    from kdframe.plugins import create_plugins

    return create_plugins(load_entry_points=load_entry_points, plugins=_named(plugins), blocked=blocked)


def run_tiny(
    folder: Path,
    schedule: Mapping[str, Any] | None = None,
    *plugins: PluginArg,
    load_entry_points: bool = True,
) -> tuple[Path, list[StageResult]]:
    """Run a schedule end to end with :func:`kdframe.runner.run_schedule`, without progress output.

    Args:
        folder: An empty or missing folder; the schedule is written to ``folder/schedule.json`` and the
            run goes into ``folder/run``.
        schedule: The schedule as a dict (default: :func:`tiny_schedule`).
        plugins: Extra plugins for this run, as for :func:`make_plugins`.
        load_entry_points: Also load the installed plugins (needed for first-party components).

    Returns:
        The run folder and one :class:`~kdframe.state.StageResult` per stage.
    """
    from kdframe.runner import run_schedule

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = write_schedule(folder, tiny_schedule() if schedule is None else schedule)
    manager = make_plugins(*plugins, load_entry_points=load_entry_points)
    return run_schedule(path, out=folder / "run", quiet=True, plugins=manager)


# ---------------------------------------------------------------------------------------------------
# Hook recorder
# ---------------------------------------------------------------------------------------------------


class HookRecorder:
    """A plugin that records every trainer event it receives, in order.

    ``calls`` holds ``(event, details)`` pairs, where ``event`` is the hook name without its
    ``kdframe_on_`` prefix (``"run_start"``, ``"batch_end"``...) and ``details`` the stage name, the
    epoch, the batch and copies of the metrics, as the event provides them.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **details: Any) -> None:
        self.calls.append((event, details))

    @hookimpl
    def kdframe_on_run_start(self, run, control) -> None:
        self._record("run_start", stages=len(run.stages))

    @hookimpl
    def kdframe_on_stage_start(self, run, stage, control) -> None:
        self._record("stage_start", stage=stage.name)

    @hookimpl
    def kdframe_on_epoch_start(self, run, stage, state, control) -> None:
        self._record("epoch_start", stage=stage.name, epoch=state.epoch)

    @hookimpl
    def kdframe_on_batch_start(self, run, stage, state, control) -> None:
        self._record("batch_start", stage=stage.name, epoch=state.epoch, batch=state.batch)

    @hookimpl
    def kdframe_on_batch_end(self, run, stage, state, control) -> None:
        self._record("batch_end", stage=stage.name, epoch=state.epoch, batch=state.batch, metrics=dict(state.metrics))

    @hookimpl
    def kdframe_on_progress(self, run, stage, task, done, total) -> None:
        self._record("progress", stage=stage.name, task=task, done=done, total=total)

    @hookimpl
    def kdframe_on_eval_end(self, run, stage, state, control) -> None:
        self._record("eval_end", stage=stage.name, epoch=state.epoch, metrics=dict(state.metrics))

    @hookimpl
    def kdframe_on_epoch_end(self, run, stage, state, control) -> None:
        self._record("epoch_end", stage=stage.name, epoch=state.epoch, metrics=dict(state.metrics))

    @hookimpl
    def kdframe_on_stage_end(self, run, stage, result, control) -> None:
        self._record("stage_end", stage=stage.name, acc=result.final_test_acc)

    @hookimpl
    def kdframe_on_run_end(self, run, results) -> None:
        self._record("run_end", stages=len(results))

    @hookimpl
    def kdframe_on_exception(self, run, stage, error) -> None:
        self._record("exception", stage=stage.name if stage else None, error=type(error).__name__)

    def events(self, *, batches: bool = True, progress: bool = False) -> list[str]:
        """The event names in order, optionally without the batch events; the ``progress`` events
        only when asked for (see :meth:`details` for their tasks and counts)."""
        return [
            name
            for name, _ in self.calls
            if (batches or not name.startswith("batch")) and (progress or name != "progress")
        ]

    def details(self, event: str) -> list[dict[str, Any]]:
        """The details of every call of one event, in order."""
        return [details for name, details in self.calls if name == event]


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def kdframe_plugins() -> Callable[..., Plugins]:
    """A factory ``make(*plugins, load_entry_points=True, blocked=())`` of fresh plugin managers.

    Each call builds a new :class:`~kdframe.plugins.Plugins` (see :func:`make_plugins`); nothing is
    registered globally, so the plugins exist for the test that asked for them only.
    """
    return make_plugins


@pytest.fixture
def kdframe_run(tmp_path: Path) -> Callable[..., tuple[Path, list[StageResult]]]:
    """A factory ``run(schedule=None, *plugins, load_entry_points=True)`` that runs a schedule in
    ``tmp_path`` (see :func:`run_tiny`) and returns ``(run folder, stage results)``.

    Each call uses its own subfolder (``run-1``, ``run-2``...), so a test may run several schedules.
    """
    counter = itertools.count(1)

    def run(
        schedule: Mapping[str, Any] | None = None, *plugins: PluginArg, load_entry_points: bool = True
    ) -> tuple[Path, list[StageResult]]:
        return run_tiny(tmp_path / f"run-{next(counter)}", schedule, *plugins, load_entry_points=load_entry_points)

    return run


@pytest.fixture
def kdframe_recorder() -> HookRecorder:
    """A fresh :class:`HookRecorder`; pass it to ``kdframe_plugins`` or ``kdframe_run`` as a plugin."""
    return HookRecorder()


# ---------------------------------------------------------------------------------------------------
# Contract checks
# ---------------------------------------------------------------------------------------------------


def check_spec_documented(spec: ComponentSpec) -> None:
    """Check what every component spec must say: a one-line summary under 160 characters, a params
    model that forbids unknown fields, and a description of every param."""
    _require(spec.summary and "\n" not in spec.summary, f"{spec.kind} '{spec.name}' has no one-line summary")
    _require(len(spec.summary) < 160, f"{spec.kind} '{spec.name}': the summary is over 160 characters")
    _require(
        spec.params.model_config.get("extra") == "forbid",
        f"{spec.kind} '{spec.name}': params model {spec.params.__name__} must forbid unknown fields "
        "(subclass kdframe.Params)",
    )
    for name, field in spec.params.model_fields.items():
        _require(field.description, f"{spec.kind} '{spec.name}': param '{name}' has no description")


def _validated(spec: ComponentSpec, params: BaseModel | Mapping[str, Any]) -> BaseModel:
    if isinstance(params, BaseModel):
        return params
    try:
        return spec.params.model_validate(dict(params))
    except ValidationError as error:
        raise AssertionError(f"{spec.kind} '{spec.name}': params {dict(params)} do not validate: {error}") from error


def check_loss_documented(spec: LossSpec) -> None:
    """Check :func:`check_spec_documented` plus a loss's reference, layers line and factory docstring."""
    check_spec_documented(spec)
    _require(spec.reference, f"loss '{spec.name}' names no reference (LossSpec.reference)")
    _require(spec.layers, f"loss '{spec.name}' does not say which layers it needs (LossSpec.layers)")
    _require(
        spec.factory.__doc__ or type(spec.factory).__doc__,
        f"loss '{spec.name}': its factory has no docstring",
    )


def check_loss_params(spec: LossSpec) -> None:
    """Check that the spec's ``example`` validates, an unknown param is refused, and params round-trip
    through JSON, alone and inside a schedule's :class:`~kdframe.schedule.LossConfig`."""
    params = _validated(spec, spec.example)
    try:
        spec.params.model_validate({**spec.example, "no_such_param": 1})
    except ValidationError:
        pass
    else:
        raise AssertionError(f"loss '{spec.name}' accepted an unknown param")
    dumped = params.model_dump(mode="json")
    _require(spec.params.model_validate(dumped) == params, f"loss '{spec.name}': params do not round-trip through JSON")
    config = LossConfig(name=spec.name, weight=0.5, params=spec.example)
    _require(
        LossConfig.model_validate(json.loads(config.model_dump_json())) == config,
        f"loss '{spec.name}': a LossConfig with its example does not round-trip through JSON",
    )


def _features(
    paths: Sequence[str], shape: tuple[int, ...], batch: int, classes: int, generator: torch.Generator, grad: bool
) -> dict[str, torch.Tensor]:
    size_of = {path: (batch, classes) if path == "logits" else (batch, *shape) for path in paths}
    return {path: torch.randn(size, generator=generator, requires_grad=grad) for path, size in size_of.items()}


def _modules(paths: Sequence[str], shape: tuple[int, ...]) -> dict[str, nn.Module]:
    """Stand-ins for the tapped modules: a BatchNorm with random statistics for maps (OFD and AB read
    them), identities otherwise."""
    modules: dict[str, nn.Module] = {}
    for path in paths:
        if path != "logits" and len(shape) == 3:
            norm = nn.BatchNorm2d(shape[0])
            nn.init.uniform_(norm.weight, 0.5, 1.5)
            nn.init.uniform_(norm.bias, -0.5, 0.5)
            modules[path] = norm
        else:
            modules[path] = nn.Identity()
    return modules


def _loss_attempt(
    spec: LossSpec, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], batch: int, classes: int
) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """Build the example term for one shape case and compute it; ``None`` when it refuses the shapes."""
    term = spec.factory(_validated(spec, spec.example))
    _require(
        isinstance(term, LossTerm), f"loss '{spec.name}': the factory returned {type(term).__name__}, not a LossTerm"
    )
    generator = torch.Generator().manual_seed(0)
    student = _features(term.student_layers, student_shape, batch, classes, generator, True)
    teacher = _features(term.teacher_layers, teacher_shape, batch, classes, generator, False)
    try:
        term.build(
            BuildContext(
                student_shapes={path: value.shape for path, value in student.items()},
                teacher_shapes={path: value.shape for path, value in teacher.items()},
                student_modules=_modules(term.student_layers, student_shape),
                teacher_modules=_modules(term.teacher_layers, teacher_shape),
                num_train_samples=64,
                num_classes=classes,
                epochs=3,
            )
        )
    except LayerError as error:
        _require("(" in str(error), f"loss '{spec.name}': a shape error should show the shapes: {error}")
        return None
    student_logits = student.get("logits", torch.randn(batch, classes, generator=generator, requires_grad=True))
    teacher_logits = teacher.get("logits", torch.randn(batch, classes, generator=generator))
    outputs = StepOutputs(
        ModelOutputs(student_logits, student),
        [ModelOutputs(teacher_logits, teacher)],
        torch.randint(0, classes, (batch,), generator=generator),
        epoch=1,
        epochs=3,
        indices=torch.arange(batch),
    )
    if term.pretrain_epochs > 0:
        pretrain = term.pretrain_loss(outputs)
        _require(pretrain.dim() == 0 and torch.isfinite(pretrain), f"loss '{spec.name}': pre-training loss {pretrain}")
    return term(outputs), [*student.values(), student_logits]


def check_loss_computes(
    spec: LossSpec,
    *,
    shape_cases: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
    batch: int = 8,
    num_classes: int = 10,
) -> None:
    """Check that the spec's ``example`` builds and gives a finite scalar whose gradient reaches the
    student, for at least one of ``shape_cases`` (default :data:`LOSS_SHAPE_CASES`).

    A term may refuse a shape case by raising :class:`~kdframe.errors.LayerError` from ``build``,
    with the shapes in its message. The inputs are seeded random tensors; teacher layers and the
    labels come from the same generator.
    """
    successes = 0
    for student_shape, teacher_shape in (shape_cases or LOSS_SHAPE_CASES).values():
        attempt = _loss_attempt(spec, student_shape, teacher_shape, batch, num_classes)
        if attempt is None:
            continue
        value, inputs = attempt
        _require(value.dim() == 0 and torch.isfinite(value), f"loss '{spec.name}' gave {value}, not a finite scalar")
        value.backward()
        grads = [tensor.grad for tensor in inputs if tensor.grad is not None]
        _require(
            grads and any(grad.abs().sum() > 0 for grad in grads),
            f"loss '{spec.name}': no gradient reaches the student",
        )
        successes += 1
    _require(successes, f"loss '{spec.name}' accepted none of the shape cases")


def check_loss_contract(
    spec: LossSpec,
    *,
    shape_cases: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
    batch: int = 8,
    num_classes: int = 10,
) -> None:
    """The contract of every loss strategy: :func:`check_loss_documented`, :func:`check_loss_params`
    and :func:`check_loss_computes` (the same checks kdframe runs on its own losses)."""
    check_loss_documented(spec)
    check_loss_params(spec)
    check_loss_computes(spec, shape_cases=shape_cases, batch=batch, num_classes=num_classes)


def check_model_contract(
    spec: ModelSpec,
    params: BaseModel | Mapping[str, Any],
    data_info: DataInfo,
    *,
    layers: Sequence[str] = (),
    batch: int = 2,
) -> dict[str, torch.Size]:
    """The contract of a model architecture.

    The spec is documented (:func:`check_spec_documented`); ``factory(params, data_info)`` returns an
    ``nn.Module`` that maps a ``(batch, C, H, W)`` batch of ``data_info``'s shape to finite
    ``(batch, num_classes)`` logits in eval and train mode, with gradients reaching its parameters; and
    every path in ``layers`` can be tapped by feature losses (a name of ``model.named_modules()``
    whose output is a tensor with the batch dimension first).

    Returns:
        The output shape of each of ``layers`` and of ``"logits"``.
    """
    from kdframe.features import FeatureTap

    check_spec_documented(spec)
    model = spec.factory(_validated(spec, params), data_info)
    _require(
        isinstance(model, nn.Module),
        f"model '{spec.name}': the factory returned {type(model).__name__}, not an nn.Module",
    )
    height, width = data_info.image_size
    images = torch.randn(batch, data_info.in_channels, height, width, generator=torch.Generator().manual_seed(0))
    expected = (batch, data_info.num_classes)
    try:
        tap = FeatureTap(model, layers, f"model '{spec.name}'")
    except LayerError as error:
        raise AssertionError(str(error)) from error
    try:
        model.eval()
        with torch.no_grad():
            logits = model(images)
        _require(isinstance(logits, torch.Tensor), f"model '{spec.name}' returned {type(logits).__name__}")
        _require(
            tuple(logits.shape) == expected,
            f"model '{spec.name}' gave logits of shape {tuple(logits.shape)}, expected {expected}",
        )
        _require(torch.isfinite(logits).all(), f"model '{spec.name}' gave non-finite logits")
        shapes = {path: output.shape for path, output in tap.take().items()}
        for path in layers:
            _require(path in shapes, f"model '{spec.name}': layer '{path}' did not run in the forward pass")
            _require(
                shapes[path][0] == batch,
                f"model '{spec.name}': layer '{path}' has shape {tuple(shapes[path])}, not batch-first",
            )
        model.train()
        model(images).sum().backward()
        tap.take()
        _require(
            any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()),
            f"model '{spec.name}': no gradient reaches its parameters",
        )
    finally:
        tap.remove()
    return {**shapes, "logits": logits.shape}


def check_curriculum_contract(
    spec: CurriculumSpec,
    params: BaseModel | Mapping[str, Any],
    schedule: Schedule | Mapping[str, Any],
    *,
    registry: Registry | None = None,
) -> list[StagePlan]:
    """The contract of a curriculum.

    The spec is documented (:func:`check_spec_documented`); ``factory(params)`` returns a
    :class:`~kdframe.curriculum.Curriculum` whose plan for ``schedule`` (its extra models added) is a
    non-empty list of :class:`~kdframe.curriculum.StagePlan`, the same on a second call, that passes
    :func:`kdframe.curriculum.check_plan` (the check ``kdframe run`` makes before training).

    Args:
        spec: The curriculum's spec.
        params: Its params (a dict is validated with ``spec.params``).
        schedule: A schedule (dict or :class:`~kdframe.schedule.Schedule`) whose models the curriculum
            names; its own ``curriculum`` entry is not used.
        registry: The registry the stages' losses are looked up in (default: every installed plugin).

    Returns:
        The stages, for the test to compare with what it expects.
    """
    check_spec_documented(spec)
    curriculum = spec.factory(_validated(spec, params))
    _require(
        isinstance(curriculum, Curriculum),
        f"curriculum '{spec.name}': the factory returned {type(curriculum).__name__}, not a Curriculum",
    )
    parsed = schedule if isinstance(schedule, Schedule) else parse_schedule(dict(schedule), "the test schedule")
    if registry is None:
        registry = make_plugins().registry
    try:
        parsed, stages = plan_stages(parsed, curriculum, registry, spec.name, check=False)
        _require(
            isinstance(stages, list) and all(isinstance(stage, StagePlan) for stage in stages),
            f"curriculum '{spec.name}': plan() must return a list of StagePlan",
        )
        _require(
            curriculum.plan(parsed) == stages,
            f"curriculum '{spec.name}': plan() gives different stages on a second call",
        )
        check_plan(parsed, stages, registry, spec.name)
    except KdframeError as error:
        raise AssertionError(f"curriculum '{spec.name}': {error}") from error
    return stages
