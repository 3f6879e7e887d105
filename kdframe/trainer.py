"""The hook-based training loop for one stage.

The trainer trains one student with the stage's weighted loss terms, optionally taught by teachers
that stay in eval mode without gradients (their BatchNorm statistics never change), evaluates the
student on the test split after every epoch, and fires the trainer-event hooks in the documented order
(see :mod:`kdframe.hookspecs`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdframe import distributed, precision, teacher_cache
from kdframe.data import AnyDataset, InMemoryDataset, batches_per_epoch, eval_batches, iterate_batches, train_batches
from kdframe.errors import KdframeError, TrainingError
from kdframe.features import FeatureTap
from kdframe.losses import LossTerm, ModelOutputs, StepOutputs
from kdframe.registry import is_plugin_bug, plugin_bug
from kdframe.optim import StageOptimizer, trainable_parameters
from kdframe.schedule import TrainingConfig
from kdframe.seeding import derived_seed
from kdframe.stage_kinds import EVALUATE, PRETRAIN, TRAIN, StageKind
from kdframe.state import Control, RunInfo, StageInfo, TrainState
from kdframe.teacher_policy import TeacherBatch, TeacherPolicy, TeacherSelection, all_teachers, run_reweigh, run_select
from kdframe.value_schedule import ScheduledFloat, value_at

#: Test accuracy (percent) at or below ``COLLAPSE_FACTOR * 100 / num_classes`` after warm-up is a collapse.
COLLAPSE_FACTOR = 1.5


@dataclass
class WeightedTerm:
    """A built loss term with its label (its name, numbered when a stage uses it twice), its weight
    and the plugin that provides it (``Provider.describe()``, for error messages)."""

    name: str
    weight: ScheduledFloat
    term: LossTerm
    provider: str = "its plugin"


@dataclass
class StageSetup:
    """Everything one stage needs, built and checked before any training starts.

    Attributes:
        info: The stage as hooks see it.
        student: The model to train.
        teachers: Models that teach it (frozen, eval mode).
        terms: The weighted loss terms, already built from a dry run.
        student_tap: Records the student layers the terms asked for (or ``None``).
        teacher_tap: Records the first teacher's layers the terms asked for (or ``None``).
        training: The stage's training settings.
        kind: The stage's kind (:mod:`kdframe.stage_kinds`): ``train``; ``pretrain``, a term's
            pre-training phase, which optimises the terms' ``pretrain_loss`` (with weight 1) and the
            student only when a term asks for it; or ``evaluate``, which only evaluates ``student``.
        snapshots: 1-based epochs after which the student is saved as a snapshot.
        teacher_policy: Picks the teachers of each batch and their weights; ``None``: all, equally.
        policy_provider: Who provides the policy (for error messages).
        init_from: The model (key) whose weights the student starts from, or ``None``.
        optimizer: The stage's optimizer and LR schedule (``None`` for an ``evaluate`` stage).
    """

    info: StageInfo
    student: nn.Module
    teachers: list[nn.Module]
    terms: list[WeightedTerm]
    student_tap: FeatureTap | None
    teacher_tap: FeatureTap | None
    training: TrainingConfig
    kind: StageKind = TRAIN
    snapshots: tuple[int, ...] = ()
    teacher_policy: TeacherPolicy | None = None
    policy_provider: str = "its curriculum"
    init_from: str | None = None
    optimizer: StageOptimizer | None = None


@dataclass
class StageOutcome:
    """What the trainer reports about a finished stage."""

    epochs_run: int
    final_test_acc: float
    best_test_acc: float
    best_epoch: int
    collapsed: bool
    stop_run: bool
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_batches: int = 0


class RunInterrupted(KdframeError):
    """A signal (SIGTERM, SIGINT) asked the run to stop; it stopped between two batches."""

    exit_code = 130


def trained_parameters(setup: StageSetup) -> list[tuple[str, nn.Parameter]]:
    """What a stage's optimizer trains, named for ``param_groups``: the student (unless the stage is
    a pre-training phase that leaves it alone) and the loss terms' own parameters."""
    trains_student = setup.kind == TRAIN or any(w.term.pretrain_trains_student for w in setup.terms)
    return trainable_parameters(setup.student, [(w.name, w.term) for w in setup.terms], trains_student)


def freeze_teacher(teacher: nn.Module) -> None:
    """Eval mode and no gradients: a teacher's weights and BatchNorm statistics never change."""
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)


def _layout(images: Tensor, channels_last: bool) -> Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def evaluate_sums(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, channels_last: bool, precision_name: str = "fp32"
) -> tuple[int, float]:
    """Number of correct predictions and summed cross-entropy of ``model`` on a split (or a shard)."""
    return evaluate_batches(model, iterate_batches(images, labels, batch_size), channels_last, precision_name)


@torch.no_grad()
def evaluate_batches(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor, Tensor]], channels_last: bool, precision_name: str = "fp32"
) -> tuple[int, float]:
    """Number of correct predictions and summed cross-entropy of ``model`` over ``(images, labels,
    indices)`` batches (e.g. :func:`kdframe.data.eval_batches`)."""
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    for batch_images, batch_labels, _ in batches:
        with precision.autocast(precision_name, batch_images.device):  # type: ignore[arg-type]
            logits = model(_layout(batch_images, channels_last))
        logits = precision.to_float32(logits)
        loss_sum += float(nn.functional.cross_entropy(logits, batch_labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == batch_labels).sum())
    model.train(was_training)
    return correct, loss_sum


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int, channels_last: bool) -> tuple[float, float]:
    """Accuracy (percent) and mean cross-entropy of ``model`` on a split."""
    correct, loss_sum = evaluate_sums(model, images, labels, batch_size, channels_last)
    count = max(int(labels.shape[0]), 1)
    return 100.0 * correct / count, loss_sum / count


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


class Trainer:
    """Trains one stage; ``hook`` is the plugin manager's hook relay."""

    def __init__(
        self,
        setup: StageSetup,
        data: AnyDataset,
        *,
        run: RunInfo,
        hook: Any,
        device: torch.device,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        save_snapshot: Callable[[nn.Module, int], Path],
        save_state: Callable[[dict[str, Any]], None] | None = None,
        resume_state: dict[str, Any] | None = None,
        stop_requested: Callable[[], str | None] = lambda: None,
        num_workers: int = 0,
    ) -> None:
        self.setup = setup
        self.data = data
        self.run = run
        self.hook = hook
        self.device = device
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.save_snapshot = save_snapshot
        self.save_state = save_state
        self.resume_state = resume_state
        self.stop_requested = stop_requested
        self.num_workers = num_workers  # DataLoader workers of a StreamingDataset
        self.control = Control()
        self.state = TrainState()
        # Speed and scale (set per stage by _prepare_speed): see precision, distributed, teacher_cache.
        self.dist = distributed.current()
        self.teacher_store = teacher_cache.default_store()
        self.scaler: torch.amp.GradScaler | None = None
        self.student_forward: nn.Module = setup.student
        self.averaged_by_hand: list[nn.Parameter] = []
        self.cached_teachers: list[teacher_cache.CachedOutputs] | None = None
        self.every_teacher = all_teachers(len(setup.teachers))

    def _fire(self, name: str, **kwargs: Any) -> None:
        getattr(self.hook, name)(run=self.run, stage=self.setup.info, control=self.control, **kwargs)

    def train(self) -> StageOutcome:
        """Run the stage to the end (or until a hook stops it) and report the outcome."""
        setup, config = self.setup, self.setup.training
        student, teachers = setup.student, setup.teachers
        for teacher in teachers:
            freeze_teacher(teacher)
        if setup.kind == EVALUATE:
            return self._evaluate_only()
        named = trained_parameters(setup)
        parameters = [parameter for _, parameter in named]
        if not parameters:
            raise TrainingError(f"Stage '{setup.info.name}' has nothing to train (no parameter requires a gradient).")
        assert setup.optimizer is not None  # every stage that trains has one
        optimizer = setup.optimizer.make(named)
        self._prepare_speed(parameters)
        train_count = self.data.train_count
        drop_last = train_count > self.batch_size
        steps_per_epoch = batches_per_epoch(train_count, self.batch_size, drop_last)
        stage_optimizer = setup.optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: stage_optimizer.factor(step, steps_per_epoch, config.epochs)
        )
        self.state = TrainState(batches_per_epoch=steps_per_epoch)
        chance = 100.0 / max(len(self.data.classes), 1)
        outcome = StageOutcome(0, 0.0, 0.0, -1, False, False)
        start_epoch = 0
        if self.resume_state is not None:
            start_epoch = self._restore(self.resume_state, optimizer, scheduler, outcome)

        self._fire("kdframe_on_stage_start")
        if self.control.stop_stage or self.control.stop_run:
            outcome.stop_run = self.control.stop_run
            return outcome
        for epoch in range(start_epoch, config.epochs):
            self.state.epoch = epoch
            self.state.metrics = {}
            self._fire("kdframe_on_epoch_start", state=self.state)
            if self.control.stop_stage or self.control.stop_run:
                break
            started = time.perf_counter()
            train_metrics = self._train_epoch(epoch, optimizer, scheduler, parameters)
            self._check_finite_weights(epoch)  # before anything of this epoch is evaluated or saved
            outcome.skipped_batches += int(train_metrics.get("train/skipped_batches", 0))
            seconds = time.perf_counter() - started
            test_acc, test_loss = self._evaluate(student)
            outcome.epochs_run = epoch + 1
            outcome.final_test_acc = test_acc
            if test_acc > outcome.best_test_acc or outcome.best_epoch < 0:
                outcome.best_test_acc, outcome.best_epoch = test_acc, epoch + 1
            self.state.best_test_acc = outcome.best_test_acc
            self.state.metrics = {"test/acc": test_acc, "test/loss": test_loss}
            self._fire("kdframe_on_eval_end", state=self.state)
            samples = train_metrics.pop("_samples")
            self.state.metrics = {
                **train_metrics,
                "test/acc": test_acc,
                "test/loss": test_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "time/epoch_s": seconds,
                "time/samples_per_s": samples / max(seconds, 1e-9),
                **self._scheduled_values(epoch),
            }
            self._fire("kdframe_on_epoch_end", state=self.state)
            outcome.history.append(dict(self.state.metrics))
            if self.control.save_checkpoint or epoch + 1 in setup.snapshots:
                self.save_snapshot(student, epoch + 1)
                self.control.save_checkpoint = False
            warmed_up = epoch + 1 > config.lr_schedule.warmup_epochs
            # A pre-training phase does not train the classifier for accuracy: no collapse check.
            at_chance = test_acc <= COLLAPSE_FACTOR * chance and setup.kind == TRAIN
            if warmed_up and at_chance and not outcome.collapsed:
                outcome.collapsed = True
                message = (
                    f"Stage '{setup.info.name}' collapsed: test accuracy {test_acc:.1f}% at epoch "
                    f"{epoch + 1} is at chance level ({chance:.1f}%). Lower training.optimizer.lr, "
                    "lengthen training.lr_schedule.warmup_epochs, or lower the distillation "
                    "temperature/weight."
                )
                if config.on_collapse == "stop":
                    raise TrainingError(message + " (training.on_collapse is 'stop'.)")
                warnings.warn(message, RuntimeWarning, stacklevel=1)
            if self.save_state is not None:
                self.save_state(self._checkpoint(epoch + 1, optimizer, scheduler, outcome))
            if self.control.stop_stage or self.control.stop_run:
                break
        if setup.kind == PRETRAIN:
            for weighted in setup.terms:
                weighted.term.end_pretraining()
        outcome.stop_run = self.control.stop_run
        return outcome

    def _checkpoint(
        self,
        epochs_done: int,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        outcome: StageOutcome,
    ) -> dict[str, Any]:
        """The stage's full state after ``epochs_done`` epochs: enough to continue bit for bit."""
        return {
            "epochs_done": epochs_done,
            "step": self.state.step,
            "student": self.setup.student.state_dict(),
            "terms": {weighted.name: weighted.term.state_dict() for weighted in self.setup.terms},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "outcome": {
                "final_test_acc": outcome.final_test_acc,
                "best_test_acc": outcome.best_test_acc,
                "best_epoch": outcome.best_epoch,
                "collapsed": outcome.collapsed,
                "skipped_batches": outcome.skipped_batches,
                "history": outcome.history,
            },
        }

    def _restore(
        self,
        saved: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        outcome: StageOutcome,
    ) -> int:
        """Load a state written by :meth:`_checkpoint`; return the epoch to continue from."""
        self.setup.student.load_state_dict(saved["student"])
        for weighted in self.setup.terms:
            weighted.term.load_state_dict(saved["terms"][weighted.name])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        self.state.step = int(saved["step"])
        kept = saved["outcome"]
        outcome.final_test_acc = float(kept["final_test_acc"])
        outcome.best_test_acc = float(kept["best_test_acc"])
        outcome.best_epoch = int(kept["best_epoch"])
        outcome.collapsed = bool(kept["collapsed"])
        outcome.skipped_batches = int(kept["skipped_batches"])
        outcome.history = [dict(row) for row in kept["history"]]
        outcome.epochs_run = int(saved["epochs_done"])
        self.state.best_test_acc = outcome.best_test_acc
        return int(saved["epochs_done"])

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
        test_acc, test_loss = self._evaluate(self.setup.student)
        self.state.metrics = {"test/acc": test_acc, "test/loss": test_loss}
        self.state.best_test_acc = test_acc
        self._fire("kdframe_on_eval_end", state=self.state)
        return StageOutcome(0, test_acc, test_acc, 0, False, self.control.stop_run)

    def _check_stop(self) -> None:
        """Stop between two batches when a signal asked for it."""
        signal_name = self.stop_requested()
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

    def _trained_modules(self) -> list[tuple[str, nn.Module]]:
        """What training changes, named for messages: the student and the loss terms (adapters,
        memory banks)."""
        return [("student", self.setup.student), *((f"loss term '{w.name}'", w.term) for w in self.setup.terms)]

    def _trained_tensors(self) -> list[tuple[str, Tensor]]:
        """The floating-point parameters and buffers of :meth:`_trained_modules`, with names."""
        named: list[tuple[str, Tensor]] = []
        for owner, module in self._trained_modules():
            for kind, tensors in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
                named += [(f"{owner} {kind} '{name}'", t) for name, t in tensors if t.is_floating_point()]
        return named

    def _check_finite_weights(self, epoch: int) -> None:
        """Raise :class:`TrainingError` when a weight or buffer became NaN or infinite during
        ``epoch``, whatever ``on_nonfinite`` says (skipping batches cannot repair weights): such a
        model is never evaluated as a result or saved; the previous epoch's checkpoint stays."""
        named = self._trained_tensors()
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

    def _select_teachers(self, epoch: int, batch: int, generator: torch.Generator) -> TeacherSelection:
        """The teachers of a batch: all of them, or those the stage's teacher policy picks."""
        policy = self.setup.teacher_policy
        if policy is None:
            return self.every_teacher
        context = TeacherBatch(epoch, self.setup.training.epochs, batch, self.state.step, self.setup.info.teachers, generator)
        return run_select(policy, context, self.setup.policy_provider)

    def _prepare_speed(self, parameters: list[nn.Parameter]) -> None:
        """Set up the stage's precision, data parallelism, compilation and teacher-output cache."""
        setup, config = self.setup, self.setup.training
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
        self.cached_teachers = self._prepare_teacher_cache()

    def _prepare_teacher_cache(self) -> list[teacher_cache.CachedOutputs] | None:
        """Every teacher's cached outputs, or ``None`` when the teachers run every batch."""
        setup, config = self.setup, self.setup.training
        mode = config.teacher_cache
        if mode == "off" or not setup.teachers:
            return None
        reason = teacher_cache.invalid_reason(self.data)
        if reason is not None:
            if mode != "auto":
                raise TrainingError(f"training.teacher_cache is '{mode}', but {reason}. Set it to \"auto\" or \"off\".")
            self.teacher_store.say_once(
                f"training.teacher_cache is 'auto', but {reason}: the teachers run every batch (set "
                "training.teacher_cache to \"off\" to silence this)."
            )
            return None
        assert isinstance(self.data, InMemoryDataset)  # invalid_reason() refuses a StreamingDataset
        entries = []
        for index, teacher in enumerate(setup.teachers):
            entry = self.teacher_store.outputs(
                teacher,
                setup.teacher_tap if index == 0 else None,
                self.data.train_images,
                mode=mode,
                batch_size=self.eval_batch_size,
                channels_last=config.channels_last,
                precision_name=config.precision,
                device=self.device,
                label=f"teacher '{setup.info.teachers[index]}'",
            )
            if entry is None:
                return None
            entries.append(entry)
        return entries

    def _teacher_outputs(self, images: Tensor, indices: Tensor, kept: tuple[int, ...]) -> list[ModelOutputs]:
        """The kept teachers' outputs for a batch: gathered from the cache, or computed."""
        if self.cached_teachers is not None:
            return [self.cached_teachers[index].gather(indices, images.device) for index in kept]
        return self._forward_teachers(images, kept)

    def _forward_teachers(self, images: Tensor, kept: tuple[int, ...]) -> list[ModelOutputs]:
        outputs = []
        with torch.no_grad(), precision.autocast(self.setup.training.precision, self.device):
            for index in kept:
                logits = self.setup.teachers[index](images)
                tap = self.setup.teacher_tap if index == 0 else None
                features = tap.take() if tap else {}
                as_float = {path: precision.to_float32(value) for path, value in features.items()}
                outputs.append(ModelOutputs(precision.to_float32(logits), as_float))
        return outputs

    def _forward_student(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The student's logits and tapped features (float32) for a training batch."""
        with precision.autocast(self.setup.training.precision, self.device):
            logits = self.student_forward(images)
        features = self.setup.student_tap.take() if self.setup.student_tap else {}
        return precision.to_float32(logits), {path: precision.to_float32(value) for path, value in features.items()}

    def _backward_and_step(self, total: Tensor, optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter]) -> None:
        """Backward pass (scaled for fp16), gradient averaging across ranks, clipping, optimizer step."""
        clip = self.setup.training.grad_clip_norm
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        distributed.average_gradients(self.averaged_by_hand, self.dist)
        if clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(parameters, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def _evaluate(self, model: nn.Module) -> tuple[float, float]:
        """Test accuracy (percent) and mean loss; with several processes each evaluates a share."""
        config = self.setup.training
        batches = eval_batches(self.data, self.eval_batch_size, device=self.device, dist=self.dist, num_workers=self.num_workers)
        correct, loss_sum = evaluate_batches(model, batches, config.channels_last, config.precision)
        totals = self.dist.sum(torch.tensor([float(correct), loss_sum], dtype=torch.float64))
        count = max(self.data.test_count, 1)
        return 100.0 * float(totals[0]) / count, float(totals[1]) / count

    def _train_epoch(
        self,
        epoch: int,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        parameters: list[nn.Parameter],
    ) -> dict[str, float]:
        setup, config = self.setup, self.setup.training
        student = setup.student
        # A phase that does not train the student leaves its BatchNorm statistics alone.
        student.train(setup.kind == TRAIN or any(w.term.pretrain_trains_student for w in setup.terms))
        for weighted in setup.terms:
            weighted.term.train()
        # Shuffling depends on the seed, the stage's name and the epoch only (not on other stages).
        stage_seed = derived_seed(self.seed, setup.info.name)
        generator = torch.Generator().manual_seed((stage_seed * 10_007 + epoch) % 2**64)  # any schedule seed
        train_count = self.data.train_count
        term_sums = torch.zeros(len(setup.terms), dtype=torch.float64)
        loss_sum = 0.0
        correct = 0
        samples = 0
        weights = self._weights(epoch)
        weight_tensor = torch.tensor(weights, dtype=torch.float64)
        pretraining = setup.kind == PRETRAIN
        skipped = 0
        # With on_nonfinite "skip", a skipped batch must leave the model exactly as before it: its
        # forward pass already moved BatchNorm statistics (and memory banks), so they are put back.
        restorable = [b for _, module in self._trained_modules() for b in module.buffers()] if config.on_nonfinite == "skip" else []
        batches = train_batches(
            self.data,
            self.batch_size,
            generator=generator,
            drop_last=train_count > self.batch_size,
            device=self.device,
            dist=self.dist,  # several processes: each gets its share of every global batch
            num_workers=self.num_workers,
        )
        for batch, (images, labels, indices) in enumerate(batches):
            images = _layout(images, config.channels_last)
            self.state.batch, self.state.samples = batch, int(labels.shape[0])
            self._fire("kdframe_on_batch_start", state=self.state)

            buffers_before = [buffer.clone() for buffer in restorable]
            selection = self._select_teachers(epoch, batch, generator)
            teacher_outputs = self._teacher_outputs(images, indices, selection.indices)
            logits, student_features = self._forward_student(images)
            outputs = StepOutputs(
                ModelOutputs(logits, student_features),
                teacher_outputs,
                labels,
                epoch,
                config.epochs,
                indices,
                selection.weights,
            )
            if setup.teacher_policy is not None:
                outputs.teacher_weights = run_reweigh(setup.teacher_policy, selection, outputs, setup.policy_provider)
            values = [term_value(weighted, weight, outputs, pretraining) for weighted, weight in zip(setup.terms, weights)]
            total = sum((weight * value for weight, value in zip(weights, values)), torch.zeros((), device=logits.device))
            detached = torch.stack([value.detach().float() for value in values]).cpu().double()
            detached = self.dist.mean(detached)  # the global batch's values, the same on every rank
            if not torch.isfinite(detached).all():
                bad = [w.name for w, v in zip(setup.terms, detached.tolist()) if not math.isfinite(v)]
                where = f"epoch {epoch + 1}, batch {batch + 1} (step {self.state.step + 1})"
                if config.on_nonfinite == "stop" or skipped >= config.max_skipped_batches:
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
                skipped += 1
                with torch.no_grad():
                    for buffer, before in zip(restorable, buffers_before):
                        buffer.copy_(before)
                # Every rank takes this branch: the values are averaged across ranks above.
                self.state.metrics = {"skipped_batches": float(skipped), "lr": optimizer.param_groups[0]["lr"]}
                self._fire("kdframe_on_batch_end", state=self.state)
                self._check_stop()
                continue
            optimizer.zero_grad(set_to_none=True)
            self._backward_and_step(total, optimizer, parameters)
            scheduler.step()
            self.state.step += 1

            batch_size = int(labels.shape[0])
            total_value = float((detached * weight_tensor).sum())
            term_sums += detached * batch_size
            loss_sum += total_value * batch_size
            correct += int((logits.detach().argmax(dim=1) == labels).sum())
            samples += batch_size
            self.state.metrics = {"loss": total_value, "lr": optimizer.param_groups[0]["lr"]}
            for weighted, value in zip(setup.terms, detached.tolist()):
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
            metrics["train/skipped_batches"] = float(skipped)
        for weighted, value in zip(setup.terms, (term_sums / max(samples, 1)).tolist()):
            metrics[f"train/loss/{weighted.name}"] = value
        return metrics
