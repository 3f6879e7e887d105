"""kdframe: knowledge distillation for PyTorch, built from plugins.

The public API for plugin authors is re-exported here: the hook markers, the component specs and
``Params`` base class, the plugin API version, the loss, data and curriculum interfaces, and the errors.
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
from kdframe.data import DataInfo, InMemoryDataset, SampleTransform, StreamingDataset
from kdframe.errors import (
    CheckpointError,
    ComponentError,
    DataError,
    KdframeError,
    LayerError,
    PluginError,
    ScheduleError,
    StorageError,
    TrainingError,
)
from kdframe.hookspecs import PLUGIN_API_VERSION, hookimpl
from kdframe.losses import BuildContext, LayerPair, LossTerm, ModelOutputs, StepOutputs
from kdframe.registry import (
    CurriculumSpec,
    DatasetSpec,
    LoggerSpec,
    LossSpec,
    ModelSpec,
    NoParams,
    Params,
)
from kdframe.state import Control, RunInfo, StageInfo, StageResult, TrainState
from kdframe.value_schedule import ScheduledFloat, ValueSchedule, value_at, value_range

__version__ = "0.1.0"

__all__ = [
    "BuildContext",
    "LayerPair",
    "CheckpointError",
    "ComponentError",
    "Control",
    "Curriculum",
    "CurriculumSpec",
    "DataError",
    "DataInfo",
    "DatasetSpec",
    "InMemoryDataset",
    "KdframeError",
    "LayerError",
    "LoggerSpec",
    "LossSpec",
    "LossTerm",
    "ModelOutputs",
    "ModelSpec",
    "NoParams",
    "Params",
    "PLUGIN_API_VERSION",
    "PluginError",
    "RunInfo",
    "SampleTransform",
    "ScheduledFloat",
    "ScheduleError",
    "StageInfo",
    "StagePlan",
    "StageResult",
    "StepOutputs",
    "StorageError",
    "StreamingDataset",
    "TrainState",
    "TrainingError",
    "ValueSchedule",
    "distill_stage",
    "hookimpl",
    "scratch_stage",
    "snapshot_key",
    "split_snapshot",
    "teacher_stages",
    "value_at",
    "value_range",
    "__version__",
]
