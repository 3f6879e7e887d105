"""The training loop of one stage: epochs, events, evaluation and the collapse check.

The trainer is made of small parts, each in its own module:

* :mod:`kdframe.stage_setup`: what the stage trains, built and checked before training;
* :mod:`kdframe.stage_teachers`: the teachers, frozen, their outputs cached or computed, chosen
  per batch by the stage's teacher policy;
* :mod:`kdframe.train_step`: one optimization step (the student's forward pass, the weighted loss,
  the non-finite policy, backward and the optimizer step);
* :mod:`kdframe.stage_state`: the stage's outcome and its state after an epoch, for resume.

This module runs the epochs: it fires the trainer-event hooks in the documented order (see
:mod:`kdframe.hookspecs`), evaluates the student after every epoch on the test split and, when there
is one, the validation split, refuses weights that became non-finite, detects a collapse to chance
level, and saves snapshots and the stage state.

**Selection.** With a validation split, everything that selects reads it alone: the best epoch is the
one of the highest validation accuracy and the collapse check looks at validation accuracy; the test
split is only reported (at the last epoch and at the selected one). Without one, the test split
selects as well, and results say so (``selected_by``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdframe import distributed, fake_quant, precision, stage_state, teacher_cache
from kdframe.data import AnyDataset, EvalSplit, batches_per_epoch, eval_batches, train_batches
from kdframe.errors import KdframeError, TrainingError
from kdframe.evaluation import evaluate_batches
from kdframe.losses import ModelOutputs, StepOutputs
from kdframe.seeding import derived_seed
from kdframe.stage_kinds import EVALUATE, PRETRAIN, TRAIN
from kdframe.stage_setup import StageSetup, WeightedTerm, trained_modules, trained_parameters
from kdframe.stage_state import StageOutcome
from kdframe.stage_teachers import StageTeachers, freeze_teacher
from kdframe.state import Control, RunInfo, TrainState
from kdframe.teacher_policy import run_reweigh
from kdframe.train_step import TrainStep, term_value
from kdframe.value_schedule import value_at

__all__ = [
    "COLLAPSE_FACTOR",
    "LoopSettings",
    "RunInterrupted",
    "StageCallbacks",
    "StageOutcome",
    "StageSetup",
    "Trainer",
    "WeightedTerm",
    "freeze_teacher",
    "term_value",
    "trained_parameters",
]

#: Test accuracy (percent) at or below ``COLLAPSE_FACTOR * 100 / num_classes`` after warm-up is a collapse.
COLLAPSE_FACTOR = 1.5


class RunInterrupted(KdframeError):
    """A signal (SIGTERM, SIGINT) asked the run to stop; it stopped between two batches."""

    exit_code = 130


@dataclass(frozen=True)
class LoopSettings:
    """How a stage's batches are made and where they run.

    Attributes:
        device: The training device.
        batch_size: The global training batch (split across processes under torchrun).
        eval_batch_size: The batch of evaluation and of the teacher-output cache.
        seed: The schedule's seed; shuffling derives from it and the stage's name.
        num_workers: DataLoader workers of a :class:`~kdframe.data.StreamingDataset`.
    """

    device: torch.device
    batch_size: int
    eval_batch_size: int
    seed: int
    num_workers: int = 0


@dataclass
class StageCallbacks:
    """What the trainer hands back to the runner, and what it continues from.

    Attributes:
        save_snapshot: Saves the student after an epoch (1-based); returns the file.
        save_best: Saves the student after an epoch (1-based) that is the best so far by the
            selecting split (``None``: not kept).
        save_state: Saves the stage's full state after an epoch (``None``: not saved).
        resume_state: A state saved by ``save_state`` to continue from (``None``: start afresh).
        stop_requested: The name of a signal that asked the run to stop, or ``None``.
    """

    save_snapshot: Callable[[nn.Module, int], Path]
    save_best: Callable[[nn.Module, int], None] | None = None
    save_state: Callable[[dict[str, Any]], None] | None = None
    resume_state: dict[str, Any] | None = None
    stop_requested: Callable[[], str | None] = lambda: None


class Trainer:
    """Trains one stage; ``hook`` is the plugin manager's hook relay."""

    def __init__(
        self, setup: StageSetup, data: AnyDataset, run: RunInfo, hook: Any, settings: LoopSettings, callbacks: StageCallbacks
    ) -> None:
        self.setup = setup
        self.data = data
        self.run = run
        self.hook = hook
        self.settings = settings
        self.callbacks = callbacks
        self.control = Control()
        self.state = TrainState()
        self.dist = distributed.current()
        self.teachers = StageTeachers(setup, settings.device, teacher_cache.default_store())
        self.step = TrainStep(setup, settings.device, settings.batch_size)

    def _fire(self, name: str, **kwargs: Any) -> None:
        getattr(self.hook, name)(run=self.run, stage=self.setup.info, control=self.control, **kwargs)

    def _progress(self, task: str, total: int) -> Callable[[int], None]:
        """A callback that reports ``task``'s images done to ``kdframe_on_progress``."""

        def report(done: int) -> None:
            self.hook.kdframe_on_progress(run=self.run, stage=self.setup.info, task=task, done=done, total=total)

        return report

    def train(self) -> StageOutcome:
        """Run the stage to the end (or until a hook stops it) and report the outcome; with
        ``training.quantization_aware`` the student trains fake-quantized (:mod:`kdframe.fake_quant`)."""
        quantized = self.setup.training.quantization_aware and self.setup.kind == TRAIN
        remove = fake_quant.install(self.setup.student) if quantized else (lambda: None)
        try:
            return self._train()
        finally:
            remove()

    def _train(self) -> StageOutcome:
        setup, config = self.setup, self.setup.training
        self.teachers.freeze()
        if setup.kind == EVALUATE:
            return self._evaluate_only()
        named = trained_parameters(setup)
        parameters = [parameter for _, parameter in named]
        if not parameters:
            raise TrainingError(f"Stage '{setup.info.name}' has nothing to train (no parameter requires a gradient).")
        assert setup.optimizer is not None  # every stage that trains has one
        optimizer = setup.optimizer.make(named)
        self.step.prepare(parameters)
        batch_size = self.settings.batch_size
        steps_per_epoch = batches_per_epoch(self.data.train_count, batch_size, self.data.train_count > batch_size)
        stage_optimizer = setup.optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: stage_optimizer.factor(step, steps_per_epoch, config.epochs)
        )
        self.state = TrainState(batches_per_epoch=steps_per_epoch)
        outcome = StageOutcome(0, 0.0, 0.0, -1, False, False)
        start_epoch = 0
        if self.callbacks.resume_state is not None:
            start_epoch, self.state.step = stage_state.restore(setup, self.callbacks.resume_state, optimizer, scheduler, outcome)
            self.state.best_test_acc, self.state.best_val_acc = outcome.best_test_acc, outcome.best_val_acc

        self._fire("kdframe_on_stage_start")
        if self.control.stop_stage or self.control.stop_run:
            outcome.stop_run = self.control.stop_run
            return outcome
        self.teachers.prepare_cache(
            self.data, self.settings.eval_batch_size, progress=lambda label, total: self._progress(f"teacher cache: {label}", total)
        )
        for epoch in range(start_epoch, config.epochs):
            self.state.epoch = epoch
            self.state.metrics = {}
            self._fire("kdframe_on_epoch_start", state=self.state)
            if self.control.stop_stage or self.control.stop_run:
                break
            started = time.perf_counter()
            train_metrics = self._train_epoch(epoch, optimizer, scheduler)
            self._check_finite_weights(epoch)  # before anything of this epoch is evaluated or saved
            outcome.skipped_batches += int(train_metrics.get("train/skipped_batches", 0))
            seconds = time.perf_counter() - started
            eval_metrics = self._evaluate_splits(setup.student)
            outcome.epochs_run = epoch + 1
            selecting = self._record(outcome, eval_metrics, epoch + 1)
            self.state.metrics = dict(eval_metrics)
            self._fire("kdframe_on_eval_end", state=self.state)
            samples = train_metrics.pop("_samples")
            self.state.metrics = {
                **train_metrics,
                **eval_metrics,
                "lr": optimizer.param_groups[0]["lr"],
                "time/epoch_s": seconds,
                "time/samples_per_s": samples / max(seconds, 1e-9),
                **self._scheduled_values(epoch),
            }
            self._fire("kdframe_on_epoch_end", state=self.state)
            outcome.history.append(dict(self.state.metrics))
            if self.callbacks.save_best is not None and outcome.best_epoch == epoch + 1:
                self.callbacks.save_best(setup.student, epoch + 1)
            if self.control.save_checkpoint or epoch + 1 in setup.snapshots:
                self.callbacks.save_snapshot(setup.student, epoch + 1)
                self.control.save_checkpoint = False
            self._check_collapse(epoch, selecting, outcome)
            if self.callbacks.save_state is not None:
                self.callbacks.save_state(stage_state.checkpoint(setup, epoch + 1, self.state.step, optimizer, scheduler, outcome))
            if self.control.stop_stage or self.control.stop_run:
                break
        if setup.kind == PRETRAIN:
            for weighted in setup.terms:
                weighted.term.end_pretraining()
        outcome.stop_run = self.control.stop_run
        return outcome

    def _train_epoch(
        self, epoch: int, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
    ) -> dict[str, float]:
        """Train one epoch, firing the batch events; return the epoch's training metrics."""
        setup, config, step = self.setup, self.setup.training, self.step
        # A phase that does not train the student leaves its BatchNorm statistics alone.
        setup.student.train(setup.trains_student)
        for weighted in setup.terms:
            weighted.term.train()
        # Shuffling depends on the seed, the stage's name and the epoch only (not on other stages).
        stage_seed = derived_seed(self.settings.seed, setup.info.name)
        generator = torch.Generator().manual_seed((stage_seed * 10_007 + epoch) % 2**64)  # any schedule seed
        term_sums = torch.zeros(len(setup.terms), dtype=torch.float64)
        loss_sum = 0.0
        correct = 0
        samples = 0
        weights = self._weights(epoch)
        weight_tensor = torch.tensor(weights, dtype=torch.float64)
        pretraining = setup.kind == PRETRAIN
        step.start_epoch()
        batches = train_batches(
            self.data,
            self.settings.batch_size,
            generator=generator,
            drop_last=self.data.train_count > self.settings.batch_size,
            device=self.settings.device,
            dist=self.dist,  # several processes: each gets its share of every global batch
            num_workers=self.settings.num_workers,
        )
        for batch, (images, labels, indices) in enumerate(batches):
            images = precision.layout(images, config.channels_last)
            self.state.batch, self.state.samples = batch, int(labels.shape[0])
            self._fire("kdframe_on_batch_start", state=self.state)

            step.keep_buffers()
            selection = self.teachers.select(epoch, batch, self.state.step, generator)
            teacher_outputs = self.teachers.outputs(images, indices, selection.indices)
            logits, student_features = step.forward_student(images)
            outputs = StepOutputs(
                ModelOutputs(logits, student_features), teacher_outputs, labels, epoch, config.epochs, indices, selection.weights
            )
            if setup.teacher_policy is not None:
                outputs.teacher_weights = run_reweigh(setup.teacher_policy, selection, outputs, setup.policy_provider)
            loss = step.loss(outputs, weights, pretraining)
            if step.skips(loss, epoch, batch, self.state.step):
                self.state.metrics = {"skipped_batches": float(step.skipped), "lr": optimizer.param_groups[0]["lr"]}
                self._fire("kdframe_on_batch_end", state=self.state)
                self._check_stop()
                continue
            step.backward_and_step(loss.total, optimizer)
            scheduler.step()
            self.state.step += 1

            batch_size = int(labels.shape[0])
            total_value = float((loss.values * weight_tensor).sum())
            term_sums += loss.values * batch_size
            loss_sum += total_value * batch_size
            correct += int((logits.detach().argmax(dim=1) == labels).sum())
            samples += batch_size
            self.state.metrics = {"loss": total_value, "lr": optimizer.param_groups[0]["lr"]}
            for weighted, value in zip(setup.terms, loss.values.tolist()):
                self.state.metrics[f"loss/{weighted.name}"] = value
            self._fire("kdframe_on_batch_end", state=self.state)
            self._check_stop()
            if self.control.stop_stage or self.control.stop_run:
                break
        if self.dist.active:
            totals = self.dist.sum(torch.tensor([loss_sum, correct, samples, *term_sums.tolist()], dtype=torch.float64))
            loss_sum, correct, samples, term_sums = float(totals[0]), int(totals[1]), int(totals[2]), totals[3:]
        metrics = {
            "train/loss": loss_sum / max(samples, 1),
            "train/acc": 100.0 * correct / max(samples, 1),
            "_samples": float(samples),
        }
        if config.on_nonfinite == "skip":
            metrics["train/skipped_batches"] = float(step.skipped)
        for weighted, value in zip(setup.terms, (term_sums / max(samples, 1)).tolist()):
            metrics[f"train/loss/{weighted.name}"] = value
        return metrics

    def _record(self, outcome: StageOutcome, metrics: dict[str, float], epoch: int) -> float:
        """Record an epoch's accuracies in ``outcome`` (the 1-based ``epoch`` becomes the best when its
        selecting accuracy is the highest so far); return the selecting accuracy (validation's when
        there is a validation split, else test's)."""
        test_acc, val_acc = metrics["test/acc"], metrics.get("val/acc")
        outcome.final_test_acc = test_acc
        outcome.final_val_acc = val_acc
        selecting = test_acc if val_acc is None else val_acc
        best_so_far = outcome.best_test_acc if val_acc is None else (outcome.best_val_acc or 0.0)
        if selecting > best_so_far or outcome.best_epoch < 0:
            outcome.best_test_acc, outcome.best_val_acc, outcome.best_epoch = test_acc, val_acc, epoch
        self.state.best_test_acc = outcome.best_test_acc
        self.state.best_val_acc = outcome.best_val_acc
        return selecting

    def _check_collapse(self, epoch: int, accuracy: float, outcome: StageOutcome) -> None:
        """Mark (or, with ``on_collapse: "stop"``, stop) a stage whose selecting accuracy (validation
        when there is a validation split, else test) after the warm-up is at chance level. A
        pre-training phase does not train for accuracy: no check."""
        setup, config = self.setup, self.setup.training
        chance = 100.0 / max(len(self.data.classes), 1)
        warmed_up = epoch + 1 > config.lr_schedule.warmup_epochs
        at_chance = accuracy <= COLLAPSE_FACTOR * chance and setup.kind == TRAIN
        if not (warmed_up and at_chance) or outcome.collapsed:
            return
        outcome.collapsed = True
        split = "validation" if self.data.val_count else "test"
        message = (
            f"Stage '{setup.info.name}' collapsed: {split} accuracy {accuracy:.1f}% at epoch "
            f"{epoch + 1} is at chance level ({chance:.1f}%). Lower training.optimizer.lr, "
            "lengthen training.lr_schedule.warmup_epochs, or lower the distillation "
            "temperature/weight."
        )
        if config.on_collapse == "stop":
            raise TrainingError(message + " (training.on_collapse is 'stop'.)")
        warnings.warn(message, RuntimeWarning, stacklevel=1)

    def _weights(self, epoch: int) -> list[float]:
        if self.setup.kind == PRETRAIN:
            return [1.0] * len(self.setup.terms)
        return [value_at(w.weight, epoch, self.setup.training.epochs) for w in self.setup.terms]

    def _scheduled_values(self, epoch: int) -> dict[str, float]:
        """Each term's weight and scheduled params at ``epoch``, for the loggers."""
        values: dict[str, float] = {}
        for weighted, weight in zip(self.setup.terms, self._weights(epoch)):
            values[f"weight/{weighted.name}"] = weight
            for key, value in weighted.term.current_values(epoch, self.setup.training.epochs).items():
                values[f"param/{weighted.name}/{key}"] = float(value)
        return values

    def _evaluate_only(self) -> StageOutcome:
        """An evaluate stage: evaluate once, train nothing."""
        self._fire("kdframe_on_stage_start")
        metrics = self._evaluate_splits(self.setup.student)
        outcome = StageOutcome(0, 0.0, 0.0, -1, False, False)
        self._record(outcome, metrics, 0)
        self.state.metrics = dict(metrics)
        self._fire("kdframe_on_eval_end", state=self.state)
        outcome.stop_run = self.control.stop_run
        return outcome

    def _evaluate_splits(self, model: nn.Module) -> dict[str, float]:
        """``test/acc`` and ``test/loss``, and ``val/acc`` and ``val/loss`` when there is a
        validation split."""
        test_acc, test_loss = self._evaluate(model, "test")
        metrics = {"test/acc": test_acc, "test/loss": test_loss}
        if self.data.val_count:
            val_acc, val_loss = self._evaluate(model, "val")
            metrics.update({"val/acc": val_acc, "val/loss": val_loss})
        return metrics

    def _evaluate(self, model: nn.Module, split: EvalSplit = "test") -> tuple[float, float]:
        """Accuracy (percent) and mean loss on ``split``; with several processes each evaluates a share."""
        config = self.setup.training
        settings = self.settings
        batches = eval_batches(
            self.data, settings.eval_batch_size, device=settings.device, dist=self.dist, num_workers=settings.num_workers, split=split
        )
        count = self.data.val_count if split == "val" else self.data.test_count
        progress = self._progress(f"evaluate {split}", self.dist.shard_size(count))
        progress(0)
        correct, loss_sum = evaluate_batches(model, batches, config.channels_last, config.precision, on_batch=progress)
        totals = self.dist.sum(torch.tensor([float(correct), loss_sum], dtype=torch.float64))
        count = max(count, 1)
        return 100.0 * float(totals[0]) / count, float(totals[1]) / count

    def _check_stop(self) -> None:
        """Stop between two batches when a signal asked for it."""
        signal_name = self.callbacks.stop_requested()
        if signal_name:
            done = self.state.epoch
            saved = (
                f"The stage's state after epoch {done} is saved"
                if done
                else "No epoch of this stage had finished, so it will restart from its beginning"
            )
            raise RunInterrupted(
                f"Stopped by {signal_name} in stage '{self.setup.info.name}' during epoch {self.state.epoch + 1}, "
                f"batch {self.state.batch + 1}. {saved}; finished stages and results.json are kept. "
                f"Continue with: kdframe resume {self.run.folder}"
            )

    def _check_finite_weights(self, epoch: int) -> None:
        """Raise :class:`TrainingError` when a weight or buffer became NaN or infinite during
        ``epoch``, whatever ``on_nonfinite`` says (skipping batches cannot repair weights): such a
        model is never evaluated as a result or saved; the previous epoch's checkpoint stays."""
        named: list[tuple[str, Tensor]] = []
        for owner, module in trained_modules(self.setup):
            for kind, tensors in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
                named += [(f"{owner} {kind} '{name}'", t) for name, t in tensors if t.is_floating_point()]
        if not named:
            return
        finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in named]).cpu()  # one sync
        if bool(finite.all()):
            return
        bad = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        kept = (
            f"the checkpoint of epoch {epoch} (state.pt) is kept and 'kdframe resume' continues from it"
            if epoch
            else "no epoch of this stage had finished, so nothing of it is saved"
        )
        raise TrainingError(
            f"Stage '{self.setup.info.name}': the weights became non-finite (NaN or infinite) in epoch "
            f"{epoch + 1}: {', '.join(bad[:3])}{more}. Nothing of this epoch is saved; {kept}. Lower "
            "training.optimizer.lr, add training.grad_clip_norm, or lower the loss weights "
            "(training.on_nonfinite does not help here: skipping batches cannot repair weights)."
        )
