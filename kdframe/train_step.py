"""One optimization step of a stage: the student's forward pass, the weighted loss, the non-finite
policy, and the backward pass with gradient averaging, clipping and the optimizer step.

:meth:`TrainStep.prepare` sets up what the step needs for the stage's precision and scale: a
gradient scaler for fp16, DistributedDataParallel under torchrun, ``torch.compile``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdframe import distributed, precision
from kdframe.errors import TrainingError
from kdframe.losses import StepOutputs
from kdframe.registry import is_plugin_bug, plugin_bug
from kdframe.stage_kinds import TRAIN
from kdframe.stage_setup import StageSetup, WeightedTerm, trained_modules


def term_value(weighted: WeightedTerm, weight: float, outputs: StepOutputs, pretraining: bool) -> Tensor:
    """One term's value for a batch: its pre-training loss in a pre-training phase, else its
    forward (skipped, as a zero, while its weight is 0: a warm-up's start, AB after its phase).
    An exception from the term's own code is reported as its plugin's bug."""
    try:
        if pretraining:
            return weighted.term.pretrain_loss(outputs)
        if weight == 0:
            return outputs.student.logits.new_zeros(())
        return weighted.term(outputs)
    except Exception as error:
        if not is_plugin_bug(error):
            raise
        action = "pretrain_loss()" if pretraining else "forward()"
        raise plugin_bug("loss term", weighted.name, weighted.provider, action, error) from error


@dataclass
class StepLoss:
    """A batch's loss: the weighted total (with gradients) and each term's value, detached, as
    float64 on the CPU and averaged over the processes (the same on every rank)."""

    total: Tensor
    values: Tensor


class TrainStep:
    """The optimization step of one stage (see the module's docs)."""

    def __init__(self, setup: StageSetup, device: torch.device, batch_size: int) -> None:
        self.setup = setup
        self.device = device
        self.batch_size = batch_size
        self.dist = distributed.current()
        self.scaler: torch.amp.GradScaler | None = None
        self.student_forward: nn.Module = setup.student
        self.parameters: list[nn.Parameter] = []
        self.averaged_by_hand: list[nn.Parameter] = []
        self.skipped = 0
        self.restorable: list[Tensor] = []
        self.buffers_before: list[Tensor] = []

    def prepare(self, parameters: list[nn.Parameter]) -> None:
        """Set up the stage's precision, data parallelism and compilation for ``parameters``."""
        setup, config = self.setup, self.setup.training
        self.parameters = parameters
        precision.check_precision(config.precision, self.device)
        self.scaler = precision.make_scaler(config.precision, self.device)
        if self.dist.active and self.batch_size % self.dist.world_size:
            raise TrainingError(
                f"data.batch_size {self.batch_size} is the global batch and must be a multiple of the "
                f"{self.dist.world_size} processes."
            )
        student_ids = {id(parameter) for parameter in setup.student.parameters()}
        forward: nn.Module = setup.student
        # DDP needs a gradient for every student parameter in every batch; a pre-training phase
        # trains only part of the student, so there the gradients are averaged by hand.
        if self.dist.active and setup.kind == TRAIN and any(id(p) in student_ids for p in parameters):
            forward = distributed.wrap_ddp(setup.student, self.dist)
        wrapped = forward is not setup.student
        self.averaged_by_hand = [p for p in parameters if not (wrapped and id(p) in student_ids)]
        if config.compile:
            forward = torch.compile(forward)
        self.student_forward = forward

    def start_epoch(self) -> None:
        """Reset the epoch's count of skipped batches; with ``on_nonfinite: "skip"``, note which
        buffers a skipped batch must put back (its forward pass already moved BatchNorm
        statistics and memory banks)."""
        self.skipped = 0
        skip = self.setup.training.on_nonfinite == "skip"
        self.restorable = [b for _, module in trained_modules(self.setup) for b in module.buffers()] if skip else []

    def keep_buffers(self) -> None:
        """Before a batch's forward passes: copy the buffers a skipped batch puts back."""
        self.buffers_before = [buffer.clone() for buffer in self.restorable]

    def forward_student(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The student's logits and tapped features (float32) for a training batch."""
        with precision.autocast(self.setup.training.precision, self.device):
            logits = self.student_forward(images)
        features = self.setup.student_tap.take() if self.setup.student_tap else {}
        return precision.to_float32(logits), {path: precision.to_float32(value) for path, value in features.items()}

    def loss(self, outputs: StepOutputs, weights: list[float], pretraining: bool) -> StepLoss:
        """The weighted total of the terms and their values for one batch."""
        values = [term_value(weighted, weight, outputs, pretraining) for weighted, weight in zip(self.setup.terms, weights)]
        logits = outputs.student.logits
        total = sum((weight * value for weight, value in zip(weights, values)), torch.zeros((), device=logits.device))
        detached = torch.stack([value.detach().float() for value in values]).cpu().double()
        return StepLoss(total, self.dist.mean(detached))  # the global batch's values, the same on every rank

    def skips(self, loss: StepLoss, epoch: int, batch: int, step: int) -> bool:
        """Whether the batch (0-based ``epoch``, ``batch`` and optimizer ``step``, for the message) is
        skipped because a term is non-finite (``on_nonfinite: "skip"``; its
        buffers are then put back). Raises :class:`TrainingError` under ``"stop"`` or when too many
        batches of the epoch were skipped. Every rank decides alike: the values are averaged."""
        if bool(torch.isfinite(loss.values).all()):
            return False
        setup, config = self.setup, self.setup.training
        bad = [w.name for w, v in zip(setup.terms, loss.values.tolist()) if not math.isfinite(v)]
        where = f"epoch {epoch + 1}, batch {batch + 1} (step {step + 1})"
        if config.on_nonfinite == "stop" or self.skipped >= config.max_skipped_batches:
            reason = (
                f"became non-finite at {where}"
                if config.on_nonfinite == "stop"
                else f"was non-finite in more than training.max_skipped_batches={config.max_skipped_batches} batches of one epoch, the last at {where}"
            )
            raise TrainingError(
                f"Stage '{setup.info.name}': loss term(s) {', '.join(bad)} {reason}. The last "
                "completed epoch's checkpoint is kept. Lower the learning rate, add "
                "training.grad_clip_norm, or check the term's params; "
                "training.on_nonfinite: \"skip\" skips such batches instead."
            )
        self.skipped += 1
        with torch.no_grad():
            for buffer, before in zip(self.restorable, self.buffers_before):
                buffer.copy_(before)
        return True

    def backward_and_step(self, total: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass (scaled for fp16), gradient averaging across ranks, clipping, optimizer step."""
        clip = self.setup.training.grad_clip_norm
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        distributed.average_gradients(self.averaged_by_hand, self.dist)
        if clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.parameters, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
