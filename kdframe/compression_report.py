"""The compression report of a run: every stage's model measured and compared with the run's teacher.

The **reference** ("the teacher") is the largest model, by parameters, that any stage trains or
learns from (the first in the schedule's ``models`` on a tie): in knowledge distillation that is the
teacher, whether a stage trains it or it is loaded from a checkpoint. Its accuracy is its stage's
final test accuracy; a teacher that no stage trains is evaluated once on the test split.

Each stage's row of ``results.json`` gets a ``compression`` entry, measured after the stage (its
wall time does not include the measuring)::

    {"params", "macs", "size_mb", "latency": {"batch": 1, "median_ms", "iqr_ms", "repeats",
     "images_per_s"}, "throughput": {...}, "device", "threads", "reference": "teacher",
     "reference_figures": {"params", "macs", "size_mb", "latency", "throughput", "test_acc"},
     "vs_reference": {"params_x", "macs_x", "size_x", "speedup_x", "acc_delta"}}

``reference_figures`` repeats the teacher's own figures, so that a teacher no stage trains (one
loaded from a checkpoint) still has its row in the printed table.

Measuring uses no random numbers and leaves the model's weights, buffers and mode as they were,
so a run trains the same with the report on or off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kdframe.compression import LatencySettings, count_parameters, measure_model, ratios
from kdframe.data import AnyDataset, InMemoryDataset, eval_batches
from kdframe.evaluation import evaluate_batches
from kdframe.schedule import CompressionConfig
from kdframe.state import StageResult

if TYPE_CHECKING:
    from kdframe.stage_setup import StageSetup


def reference_model(models: dict[str, nn.Module], setups: list[StageSetup]) -> str | None:
    """The key of the run's teacher: the largest model any stage trains or learns from."""
    used = {setup.info.student for setup in setups} | {key for setup in setups for key in setup.info.teachers}
    candidates = [key for key in models if key in used]
    if not candidates:
        return None
    return max(candidates, key=lambda key: (count_parameters(models[key]), -candidates.index(key)))


def example_images(data: AnyDataset, count: int) -> Tensor:
    """The first ``count`` test images, ``(N, C, H, W)``."""
    count = max(1, min(count, data.test_count))
    if isinstance(data, InMemoryDataset):
        return data.test_images[:count]
    return torch.stack([data.test[index][0] for index in range(count)])


class RunCompression:
    """Measures each finished stage's model and compares it with the run's teacher.

    Args:
        config: The schedule's ``compression`` section.
        models: The run's models by key.
        setups: Every stage of the run.
        data: The run's data (on ``device``).
        device: Where models are timed.
        eval_batch_size: Batch size for evaluating a teacher that no stage trains.
    """

    def __init__(
        self,
        config: CompressionConfig,
        models: dict[str, nn.Module],
        setups: list[StageSetup],
        data: AnyDataset,
        device: torch.device,
        eval_batch_size: int,
    ) -> None:
        self.enabled = config.enabled
        self.settings = LatencySettings(
            repeats=config.latency_repeats, budget_s=config.latency_budget_s, throughput_batch=config.throughput_batch
        )
        self.models = models
        self.data = data
        self.device = device
        self.eval_batch_size = eval_batch_size
        self.reference = reference_model(models, setups) if self.enabled else None
        self._trained_by_stage = {setup.info.student for setup in setups}
        self._figures: dict[str, dict[str, Any]] = {}
        self._accuracy: dict[str, float] = {}
        self._images: Tensor | None = None

    def record(self, result: StageResult) -> None:
        """Note a finished stage's final accuracy (also for stages restored on resume)."""
        self._accuracy[result.model] = result.final_test_acc

    def _measure(self, key: str, model: nn.Module) -> dict[str, Any]:
        if key not in self._figures:
            if self._images is None:
                self._images = example_images(self.data, self.settings.throughput_batch)
            self._figures[key] = measure_model(model, self._images, self.settings, self.device).to_dict()
        return self._figures[key]

    def _reference_accuracy(self) -> float | None:
        key = self.reference
        if key is None:
            return None
        if key not in self._accuracy and key not in self._trained_by_stage:
            # A teacher loaded from a checkpoint: evaluate it once.
            model = self.models[key]
            batches = eval_batches(self.data, self.eval_batch_size, device=self.device)
            correct, _ = evaluate_batches(model, batches, channels_last=False)
            self._accuracy[key] = round(100.0 * correct / max(self.data.test_count, 1), 4)
        return self._accuracy.get(key)

    def stage_report(self, result: StageResult, model: nn.Module) -> dict[str, Any] | None:
        """The ``compression`` entry of a finished stage's result (``None`` when disabled)."""
        if not self.enabled or self.reference is None:
            return None
        self.record(result)
        figures = self._measure(result.model, model)
        reference = self._measure(self.reference, self.models[self.reference])
        reference_accuracy = self._reference_accuracy()
        comparison = ratios(figures, reference, result.final_test_acc, reference_accuracy)
        teacher = {key: reference[key] for key in ("params", "macs", "size_mb", "latency", "throughput")}
        return {
            **figures,
            "reference": self.reference,
            "reference_figures": {**teacher, "test_acc": reference_accuracy},
            "vs_reference": comparison,
        }
