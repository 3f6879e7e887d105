"""The small, serialisable objects that trainer-event hooks receive.

Hooks never get the trainer, the models or the optimizer: they get a :class:`RunInfo`, a
:class:`StageInfo`, a :class:`TrainState` (plain numbers) and a :class:`Control` they may set flags on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class StageInfo:
    """One stage of a run: which model is trained, by whom, and how.

    Attributes:
        index: Position of the stage in the run (0-based).
        name: Stage name, unique in the run (the name of the model it trains).
        student: Schedule key of the model trained in this stage.
        arch: Architecture name of that model.
        teachers: Schedule keys of the teachers (empty when the model learns from labels alone).
        epochs: Number of epochs the stage trains for.
        losses: The stage's loss terms as ``{"name", "weight", "params"}`` dicts.
        hparams: Flat hyper-parameters of the stage, for loggers (str, int, float or bool values).
        folder: The stage's folder inside the run folder (checkpoints live there).
    """

    index: int
    name: str
    student: str
    arch: str
    teachers: tuple[str, ...]
    epochs: int
    losses: tuple[dict[str, Any], ...]
    hparams: dict[str, Any]
    folder: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunInfo:
    """The run as a whole.

    Attributes:
        name: The schedule's name.
        folder: The run folder.
        schedule: The resolved schedule (defaults filled in) as JSON-compatible data.
        stages: Every stage, in order.
        device: The device training runs on (``cpu``, ``cuda``, ``cuda:1``...).
    """

    name: str
    folder: str
    schedule: dict[str, Any]
    stages: tuple[StageInfo, ...]
    device: str


@dataclass
class TrainState:
    """Progress of the current stage. Counters are 0-based; ``metrics`` holds the latest values.

    Attributes:
        epoch: The current epoch (0-based).
        step: Optimizer steps taken in this stage so far.
        batch: Index of the current batch within the epoch.
        batches_per_epoch: Number of batches in one training epoch.
        samples: Number of samples in the current batch (batch events).
        metrics: At ``batch_end``: ``loss`` and ``loss/<term>`` of the batch and ``lr``. At
            ``eval_end``: ``test/acc``, ``test/loss``. At ``epoch_end``: the epoch's means
            ``train/loss``, ``train/loss/<term>``, ``train/acc``, the test metrics, ``lr``,
            ``time/epoch_s`` and ``time/samples_per_s``. With a validation split, ``val/acc`` and
            ``val/loss`` beside the test metrics.
        best_test_acc: Test accuracy at the best epoch so far: the epoch of the highest validation
            accuracy when there is a validation split, else of the highest test accuracy.
        best_val_acc: The highest validation accuracy so far (``None``: no validation split).
    """

    epoch: int = 0
    step: int = 0
    batch: int = 0
    batches_per_epoch: int = 0
    samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    best_test_acc: float = 0.0
    best_val_acc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Control:
    """Flags a hook may set to steer training; the trainer reads them after every event.

    Attributes:
        stop_stage: End the current stage after the current batch (the stage still counts as done).
        stop_run: End the run after the current stage.
        save_checkpoint: Save a snapshot of the student at the end of the current epoch
            (``epoch-<N>.pt`` in the stage folder); reset after each save.
    """

    stop_stage: bool = False
    stop_run: bool = False
    save_checkpoint: bool = False


@dataclass(frozen=True)
class StageResult:
    """What a finished stage reports (one row of ``results.json``).

    Attributes:
        stage: The stage's name.
        model: Schedule key of the model the stage trained.
        arch: Its architecture (for an ``evaluate`` stage, what the curriculum says it evaluates, e.g. ``ensemble``).
        teachers: Schedule keys of its teachers (empty when it learnt from labels alone).
        epochs: Epochs the stage was set to train.
        epochs_run: Epochs it trained (fewer when a hook stopped it).
        final_test_acc: Test accuracy (percent) after the last epoch.
        best_test_acc: Test accuracy (percent) at the selected epoch ``best_epoch``.
        best_epoch: The 1-based selected epoch: the one of the highest validation accuracy when
            there is a validation split, else of the highest test accuracy (``selected_by``).
        params: Number of parameters of the trained model.
        wall_time_s: Seconds the stage took (of the last process, for a resumed stage).
        checkpoint: ``student.pt`` of the stage (the weights after its last epoch), relative to the
            run folder ("" for an ``evaluate`` stage).
        collapsed: Whether test accuracy stayed at chance level after the warm-up.
        skipped_batches: Batches skipped for a non-finite loss (``training.on_nonfinite: "skip"``).
        compression: The model's measured size and speed and its ratios to the run's teacher
            (:mod:`kdframe.compression_report`); ``None`` when ``compression.enabled`` is false or
            the stage ran under an earlier kdframe.
        selected_by: The split that chose ``best_epoch``: ``val`` or ``test``.
        final_val_acc: Validation accuracy (percent) after the last epoch (``None``: no validation split).
        best_val_acc: Validation accuracy at ``best_epoch`` (``None``: no validation split).
        best_checkpoint: ``best.pt`` of the stage: the weights after ``best_epoch``, relative to the
            run folder ("" for an ``evaluate`` stage, or a stage that ran under an earlier kdframe).
        arch_label: The architecture as tables show it (e.g. ``torchvision resnet18``); "" shows ``arch``.
    """

    stage: str
    model: str
    arch: str
    teachers: tuple[str, ...]
    epochs: int
    epochs_run: int
    final_test_acc: float
    best_test_acc: float
    best_epoch: int
    params: int
    wall_time_s: float
    checkpoint: str
    collapsed: bool
    skipped_batches: int = 0
    compression: dict[str, Any] | None = None
    selected_by: Literal["val", "test"] = "test"
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    best_checkpoint: str = ""
    arch_label: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["teachers"] = list(self.teachers)
        return data
