"""kdframe: knowledge distillation for PyTorch, built from plugins.

The public API for plugin authors is re-exported here: the hook markers, the component specs and
``Params`` base class, the plugin API version, the loss, data and curriculum interfaces, the schedule
models a curriculum reads, and the errors. First-party plugins import only these names (and the
``kdframe.testing`` kit in their tests); ``tests/test_public_api.py`` checks it.
"""

from kdframe.curriculum import (
    Curriculum,
    StagePlan,
    distill_stage,
    scratch_stage,
    snapshot_key,
    split_snapshot,
    teacher_stages,
)
from kdframe.data import BatchAugment, DataInfo, InMemoryDataset, SampleTransform, StreamingDataset
from kdframe.errors import (
    CheckpointError,
    ComponentError,
    DataError,
    ExportError,
    KdframeError,
    LayerError,
    PluginError,
    ScheduleError,
    StorageError,
    TrainingError,
    suggest,
)
from kdframe.features import LOGITS
from kdframe.hookspecs import PLUGIN_API_VERSION, hookimpl
from kdframe.losses import BuildContext, LayerPair, LossTerm, ModelOutputs, StepOutputs
from kdframe.registry import (
    CurriculumSpec,
    DatasetSpec,
    ExporterSpec,
    LoggerSpec,
    LossSpec,
    LRScheduleSpec,
    ModelSpec,
    NoParams,
    OptimizerSpec,
    Params,
)
from kdframe.export import Exporter
from kdframe.optim import LRSchedule
from kdframe.teacher_policy import TeacherBatch, TeacherPolicy, TeacherSelection
from kdframe.state import Control, RunInfo, StageInfo, StageResult, TrainState
from kdframe.schedule import LossConfig, ModelConfig, Schedule
from kdframe.value_schedule import ScheduledFloat, ValueSchedule, describe_value, value_at, value_range

__version__ = "0.1.0"

__all__ = [
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
    "ExporterSpec",
    "ExportError",
    "hookimpl",
    "InMemoryDataset",
    "KdframeError",
    "LayerError",
    "LayerPair",
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
    "RunInfo",
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
    "TeacherBatch",
    "TeacherPolicy",
    "TeacherSelection",
    "teacher_stages",
    "TrainingError",
    "TrainState",
    "value_at",
    "value_range",
    "ValueSchedule",
    "__version__",
]
