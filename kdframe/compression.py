"""How much smaller and faster a model is: parameters, MACs, serialized size and measured latency.

Every figure is measured, none is estimated from the architecture's name:

* **parameters**: ``sum(p.numel() for p in model.parameters())``;
* **MACs** (multiply-accumulates) per image: PyTorch's own
  :class:`torch.utils.flop_counter.FlopCounterMode` on one forward pass of one image, halved (it
  counts a multiply-accumulate as two FLOPs). It counts matrix products and convolutions
  (``mm``, ``addmm``, ``bmm``, ``convolution``, attention), which are nearly all of a CNN's work;
  element-wise operations (ReLU, batch norm, pooling, additions) are not counted;
* **size**: the bytes of ``torch.save(model.state_dict())`` (what ``student.pt`` holds, without
  kdframe's metadata), in MB (10^6 bytes);
* **latency**: the median and interquartile range of repeated, synchronised forward passes in
  ``torch.inference_mode`` after a warm-up, at batch 1 and at a throughput batch, on the given
  device with the current thread count (recorded). Timing is bounded: the warm-up stops after half
  of ``budget_s`` (at least one call) and the timing after ``repeats`` timings or ``budget_s``
  seconds, whichever comes first (at least 3 timings), so a huge teacher costs a few forward
  passes, not minutes.

:func:`measure_model` returns the figures as a :class:`ModelFigures`; :func:`ratios` compares a model
with a reference (the run's teacher). The runner puts both in ``results.json``; ``kdframe export``
uses :func:`time_calls` to time exported artefacts in their own runtimes the same way.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "LatencySettings",
    "ModelFigures",
    "Timing",
    "count_macs",
    "count_parameters",
    "measure_model",
    "ratios",
    "serialized_bytes",
    "time_calls",
]


@dataclass(frozen=True)
class LatencySettings:
    """How latency is timed.

    Attributes:
        warmup: The most untimed calls before timing (allocations, lazy initialisation, caches);
            at least one is made, then they stop after half of ``budget_s``.
        repeats: The most timed calls per batch size.
        budget_s: The most seconds of timed calls per batch size (at least 3 are made whatever the
            budget, so a huge model still gets a median).
        throughput_batch: The batch size of the throughput timing (capped by the images given).
    """

    warmup: int = 3
    repeats: int = 30
    budget_s: float = 1.0
    throughput_batch: int = 64


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one call: median and interquartile range (milliseconds), how many calls
    were timed and the batch size."""

    batch: int
    median_ms: float
    iqr_ms: float
    repeats: int

    @property
    def images_per_s(self) -> float:
        """Throughput implied by the median."""
        return self.batch / (self.median_ms / 1000.0) if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "median_ms": round(self.median_ms, 4),
            "iqr_ms": round(self.iqr_ms, 4),
            "repeats": self.repeats,
            "images_per_s": round(self.images_per_s, 1),
        }


@dataclass(frozen=True)
class ModelFigures:
    """The measured size and speed of one model.

    Attributes:
        params: Number of parameters.
        macs: Multiply-accumulates of one forward pass of one image (see the module docstring).
        size_mb: Serialized state dict, MB (10^6 bytes).
        latency: Timing at batch 1.
        throughput: Timing at the throughput batch.
        device: Where it was timed (``cpu``, ``cuda:0``...).
        threads: ``torch.get_num_threads()`` while timing.
    """

    params: int
    macs: int
    size_mb: float
    latency: Timing
    throughput: Timing
    device: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["size_mb"] = round(self.size_mb, 4)
        data["latency"] = self.latency.to_dict()
        data["throughput"] = self.throughput.to_dict()
        return data


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(parameter.numel() for parameter in model.parameters())


def count_macs(model: nn.Module, image: Tensor) -> int:
    """Multiply-accumulates of ``model`` on one image ``(1, C, H, W)`` (or ``(C, H, W)``), counted
    by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions)."""
    batch = image if image.dim() == 4 else image.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(batch[:1])
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def time_calls(call: Callable[[], Any], batch: int, settings: LatencySettings, sync: Callable[[], None] = lambda: None) -> Timing:
    """Time ``call`` (one forward pass of ``batch`` images) after ``settings.warmup`` untimed calls,
    within ``settings``' bounds; ``sync`` waits for queued device work (``torch.cuda.synchronize``)."""
    warmed = 0.0
    for _ in range(settings.warmup):  # at least one call, then at most half the budget
        started = time.perf_counter()
        call()
        sync()
        warmed += time.perf_counter() - started
        if warmed >= settings.budget_s / 2:
            break
    times: list[float] = []
    spent = 0.0
    while len(times) < max(settings.repeats, 1) and (len(times) < 3 or spent < settings.budget_s):
        started = time.perf_counter()
        call()
        sync()
        elapsed = time.perf_counter() - started
        times.append(elapsed)
        spent += elapsed
    quartiles = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return Timing(batch, 1000.0 * statistics.median(times), 1000.0 * (quartiles[2] - quartiles[0]), len(times))


def measure_model(model: nn.Module, images: Tensor, settings: LatencySettings, device: torch.device) -> ModelFigures:
    """Measure ``model`` (left on its device and in its train/eval mode) with real ``images``
    ``(N, C, H, W)``: parameters, MACs, size and latency at batch 1 and at the throughput batch."""
    was_training = model.training
    model.eval()
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    batch = images[: max(1, min(settings.throughput_batch, images.shape[0]))].to(device)
    single = batch[:1]
    try:
        with torch.inference_mode():
            latency = time_calls(lambda: model(single), 1, settings, sync)
            throughput = time_calls(lambda: model(batch), int(batch.shape[0]), settings, sync)
        macs = count_macs(model, single)
    finally:
        model.train(was_training)
    return ModelFigures(
        params=count_parameters(model),
        macs=macs,
        size_mb=serialized_bytes(model) / 1e6,
        latency=latency,
        throughput=throughput,
        device=str(device),
        threads=torch.get_num_threads(),
    )


def ratios(figures: dict[str, Any], reference: dict[str, Any], accuracy: float | None, reference_accuracy: float | None) -> dict[str, float | None]:
    """How ``figures`` compare with ``reference`` (both :meth:`ModelFigures.to_dict` forms):
    ``params_x`` and ``macs_x`` (reference / model: how many times smaller), ``speedup_x``
    (reference latency at batch 1 / the model's), ``size_x`` and ``acc_delta`` (accuracy minus the
    reference's, points; ``None`` when either is unknown)."""

    def times(key: str, inner: str | None = None) -> float | None:
        mine = figures[key][inner] if inner else figures[key]
        theirs = reference[key][inner] if inner else reference[key]
        return round(theirs / mine, 3) if mine else None

    delta = None if accuracy is None or reference_accuracy is None else round(accuracy - reference_accuracy, 4)
    return {
        "params_x": times("params"),
        "macs_x": times("macs"),
        "size_x": times("size_mb"),
        "speedup_x": times("latency", "median_ms"),
        "acc_delta": delta,
    }
