"""kdframe: knowledge distillation for PyTorch, built from plugins.

Two public APIs are re-exported here. For users: :func:`run` (a schedule given as a dict, a
:class:`Schedule` or a file), :func:`validate`, :func:`load_model` and :func:`load_run` (a run folder),
:func:`register` (a model or loss defined in a notebook) and :class:`RunResult`; see
docs/python-api.md. For plugin authors: the hook markers, the component specs and ``Params`` base
class, the plugin API version, the loss, data and curriculum interfaces, the schedule models a
curriculum reads, and the errors. First-party plugins import only these names (and the
``kdframe.testing`` kit in their tests); ``tests/test_public_api.py`` checks it.

Names are imported when first used (PEP 562), so ``import kdframe`` and ``kdframe --help`` do not load
PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdframe.api import load_model, load_run, register, run, RunResult, unregister, validate
    from kdframe.curriculum import Curriculum, distill_stage, scratch_stage, snapshot_key, split_snapshot, StagePlan, teacher_stages
    from kdframe.data import BatchAugment, DataInfo, InMemoryDataset, SampleTransform, StreamingDataset
    from kdframe.errors import CheckpointError, ComponentError, DataError, ExportError, KdframeError, LayerError, PluginError, ScheduleError, StorageError, suggest, TrainingError
    from kdframe.export import Exporter
    from kdframe.features import LOGITS
    from kdframe.hookspecs import hookimpl, PLUGIN_API_VERSION
    from kdframe.losses import BuildContext, LayerPair, LossTerm, ModelOutputs, StepOutputs
    from kdframe.optim import LRSchedule
    from kdframe.registry import CurriculumSpec, DatasetSpec, ExporterSpec, LoggerSpec, LossSpec, LRScheduleSpec, ModelSpec, NoParams, OptimizerSpec, Params
    from kdframe.schedule import LossConfig, ModelConfig, Schedule
    from kdframe.state import Control, RunInfo, StageInfo, StageResult, TrainState
    from kdframe.teacher_policy import TeacherBatch, TeacherPolicy, TeacherSelection
    from kdframe.value_schedule import describe_value, ScheduledFloat, value_at, value_range, ValueSchedule

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_EXPORTS: dict[str, str] = {
    "BatchAugment": "kdframe.data",
    "BuildContext": "kdframe.losses",
    "CheckpointError": "kdframe.errors",
    "ComponentError": "kdframe.errors",
    "Control": "kdframe.state",
    "Curriculum": "kdframe.curriculum",
    "CurriculumSpec": "kdframe.registry",
    "DataError": "kdframe.errors",
    "DataInfo": "kdframe.data",
    "DatasetSpec": "kdframe.registry",
    "describe_value": "kdframe.value_schedule",
    "distill_stage": "kdframe.curriculum",
    "Exporter": "kdframe.export",
    "ExportError": "kdframe.errors",
    "ExporterSpec": "kdframe.registry",
    "hookimpl": "kdframe.hookspecs",
    "InMemoryDataset": "kdframe.data",
    "KdframeError": "kdframe.errors",
    "LayerError": "kdframe.errors",
    "LayerPair": "kdframe.losses",
    "load_model": "kdframe.api",
    "load_run": "kdframe.api",
    "LoggerSpec": "kdframe.registry",
    "LOGITS": "kdframe.features",
    "LossConfig": "kdframe.schedule",
    "LossSpec": "kdframe.registry",
    "LossTerm": "kdframe.losses",
    "LRSchedule": "kdframe.optim",
    "LRScheduleSpec": "kdframe.registry",
    "ModelConfig": "kdframe.schedule",
    "ModelOutputs": "kdframe.losses",
    "ModelSpec": "kdframe.registry",
    "NoParams": "kdframe.registry",
    "OptimizerSpec": "kdframe.registry",
    "Params": "kdframe.registry",
    "PLUGIN_API_VERSION": "kdframe.hookspecs",
    "PluginError": "kdframe.errors",
    "register": "kdframe.api",
    "run": "kdframe.api",
    "RunInfo": "kdframe.state",
    "RunResult": "kdframe.api",
    "SampleTransform": "kdframe.data",
    "Schedule": "kdframe.schedule",
    "ScheduledFloat": "kdframe.value_schedule",
    "ScheduleError": "kdframe.errors",
    "scratch_stage": "kdframe.curriculum",
    "snapshot_key": "kdframe.curriculum",
    "split_snapshot": "kdframe.curriculum",
    "StageInfo": "kdframe.state",
    "StagePlan": "kdframe.curriculum",
    "StageResult": "kdframe.state",
    "StepOutputs": "kdframe.losses",
    "StorageError": "kdframe.errors",
    "StreamingDataset": "kdframe.data",
    "suggest": "kdframe.errors",
    "teacher_stages": "kdframe.curriculum",
    "TeacherBatch": "kdframe.teacher_policy",
    "TeacherPolicy": "kdframe.teacher_policy",
    "TeacherSelection": "kdframe.teacher_policy",
    "TrainingError": "kdframe.errors",
    "TrainState": "kdframe.state",
    "unregister": "kdframe.api",
    "validate": "kdframe.api",
    "value_at": "kdframe.value_schedule",
    "value_range": "kdframe.value_schedule",
    "ValueSchedule": "kdframe.value_schedule",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdframe' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "__version__",
    "BatchAugment",
    "BuildContext",
    "CheckpointError",
    "ComponentError",
    "Control",
    "Curriculum",
    "CurriculumSpec",
    "DataError",
    "DataInfo",
    "DatasetSpec",
    "describe_value",
    "distill_stage",
    "Exporter",
    "ExportError",
    "ExporterSpec",
    "hookimpl",
    "InMemoryDataset",
    "KdframeError",
    "LayerError",
    "LayerPair",
    "load_model",
    "load_run",
    "LoggerSpec",
    "LOGITS",
    "LossConfig",
    "LossSpec",
    "LossTerm",
    "LRSchedule",
    "LRScheduleSpec",
    "ModelConfig",
    "ModelOutputs",
    "ModelSpec",
    "NoParams",
    "OptimizerSpec",
    "Params",
    "PLUGIN_API_VERSION",
    "PluginError",
    "register",
    "run",
    "RunInfo",
    "RunResult",
    "SampleTransform",
    "Schedule",
    "ScheduledFloat",
    "ScheduleError",
    "scratch_stage",
    "snapshot_key",
    "split_snapshot",
    "StageInfo",
    "StagePlan",
    "StageResult",
    "StepOutputs",
    "StorageError",
    "StreamingDataset",
    "suggest",
    "teacher_stages",
    "TeacherBatch",
    "TeacherPolicy",
    "TeacherSelection",
    "TrainingError",
    "TrainState",
    "unregister",
    "validate",
    "value_at",
    "value_range",
    "ValueSchedule",
]
