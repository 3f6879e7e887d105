"""``kdframe export``: write a trained model for deployment and verify it in its own runtime.

An exporter is a component (:class:`~kdframe.registry.ExporterSpec`, registered with
``kdframe_register_exporters``) whose factory returns an :class:`Exporter`. The core does the rest,
the same for every format:

1. rebuild the stage's model from its run folder (:func:`kdframe.saved_models.load_stage_model`);
   a model rebuilt from ``student.pt`` has none of training's feature taps or adapters;
2. export it with a dynamic batch dimension into a temporary folder;
3. load the artefact with the exporter's own runtime, run it at batch 1 and on the test split, and
   compare with eager PyTorch: largest absolute logit difference, top-1 agreement, accuracy;
4. with ``int8``, quantize the artefact (statically, calibrated on training images) and verify the
   result the same way;
5. time each artefact in its runtime (:func:`kdframe.compression.time_calls`) and only then move
   the files to the output folder, with a report ``<stage>.<format>.json`` next to them.

A model that cannot be exported, or an artefact whose fp32 accuracy differs from eager PyTorch's by
more than :data:`FP32_ACCURACY_TOLERANCE` points, is an :class:`~kdframe.errors.ExportError` and
nothing is written.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from kdframe.compression import LatencySettings, Timing, count_parameters, time_calls
from kdframe.data import eval_batches
from kdframe.errors import ExportError, KdframeError
from kdframe.folders import write_text_atomic

if TYPE_CHECKING:
    from kdframe.plugins import Plugins

#: Sub-folder of the run folder that ``kdframe export`` writes to by default.
EXPORTS_FOLDER = "exports"
#: The most an exported fp32 model's test accuracy may differ from eager PyTorch's (points).
FP32_ACCURACY_TOLERANCE = 0.1
#: Default number of training images that calibrate int8 quantization.
CALIBRATION_SAMPLES = 256

Runner = Callable[[Tensor], Tensor]


class Exporter(abc.ABC):
    """A deployment format: how to write a model and how to run what was written.

    Subclass it in a plugin and return an instance from an :class:`~kdframe.registry.ExporterSpec`'s
    factory. ``export`` and ``load`` are abstract; ``quantize`` is needed only by formats whose spec
    sets ``supports_int8`` (the core never calls it otherwise).

    The :attr:`runtime` property names the runtime that loads the artefact, e.g.
    ``"ONNX Runtime 1.32.0"`` (shown in reports).

    Attributes:
        suffix: The artefact's file name ending, e.g. ``".onnx"``: ``kdframe export`` writes
            ``<stage><suffix>`` (and ``<stage>.int8<suffix>``), so formats need distinct suffixes.
    """

    suffix: ClassVar[str] = ""

    @property
    def runtime(self) -> str:
        """The runtime that loads the artefact, with its version."""
        return type(self).__name__

    @abc.abstractmethod
    def export(self, model: nn.Module, example: Tensor, path: Path) -> None:
        """Write ``model`` (eval mode, CPU, fp32) to ``path``, with the batch dimension of its input
        dynamic; ``example`` is a real batch of at least two images. Raise on failure (the core
        names the operation that failed and the alternatives)."""

    @abc.abstractmethod
    def load(self, path: Path) -> Runner:
        """Load the artefact at ``path`` in this format's own runtime and return a function from a
        CPU float32 image batch ``(N, C, H, W)`` to its logits ``(N, classes)`` as a tensor."""

    def quantize(self, source: Path, path: Path, calibration: Tensor) -> None:
        """Write an int8 version of the artefact ``source`` to ``path``, calibrated on the images
        ``calibration`` (``(N, C, H, W)``, training images)."""
        raise ExportError(f"{type(self).__name__} does not implement int8 quantization; leave out --int8.")


@dataclass
class Verification:
    """How one artefact compares with eager PyTorch on the test images."""

    file: str
    precision: str
    size_mb: float
    accuracy: float
    eager_accuracy: float
    max_abs_diff: float
    agreement: float
    samples: int
    latency: Timing
    throughput: Timing

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "precision": self.precision,
            "size_mb": round(self.size_mb, 4),
            "test_acc": round(self.accuracy, 4),
            "eager_test_acc": round(self.eager_accuracy, 4),
            "acc_delta": round(self.accuracy - self.eager_accuracy, 4),
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": round(self.agreement, 4),
            "samples": self.samples,
            "latency": self.latency.to_dict(),
            "throughput": self.throughput.to_dict(),
        }


@dataclass
class ExportReport:
    """What ``kdframe export`` wrote and measured."""

    run_folder: str
    stage: str
    model: str
    arch: str
    format: str
    runtime: str
    params: int
    threads: int
    artefacts: list[Verification] = field(default_factory=list)
    exporter_params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_folder": self.run_folder,
            "stage": self.stage,
            "model": self.model,
            "arch": self.arch,
            "format": self.format,
            "exporter_params": self.exporter_params,
            "runtime": self.runtime,
            "params": self.params,
            "threads": self.threads,
            "artefacts": [artefact.to_dict() for artefact in self.artefacts],
        }


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Keep exporters' progress prints, log records and deprecation warnings off the terminal."""
    torch_logger = logging.getLogger("torch")
    previous = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_logger.setLevel(previous)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def failed_operation(error: BaseException) -> str:
    """What in the model an exporter could not handle, in words, from its exception."""
    text = str(error)
    operator = re.search(r"OpOverload\(op='([\w.]+)'", text) or re.search(r"\baten::(\w+)", text) or re.search(r"torch\.ops\.(aten\.\w+)", text)
    if operator:
        return f"the operation {operator.group(1)}, which this format cannot express"
    if "data-dependent" in text or "GuardOnDataDependent" in text:
        return "control flow or a shape that depends on tensor values (a Python 'if' on a tensor, .item(), nonzero)"
    summary = text.split("Exception summary", 1)[-1].strip()
    line = next((line.strip() for line in summary.splitlines() if line.strip()), type(error).__name__)
    return re.sub(r"\x1b\[[0-9;]*m", "", line)[:300]


def verify(
    runner: Runner,
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    *,
    file: Path,
    precision: str,
    settings: LatencySettings,
    label: str,
) -> Verification:
    """Run an artefact at batch 1 and on every test batch next to eager ``model``; time it."""
    first = batches[0][0]
    correct = correct_eager = agree = count = 0
    max_diff = 0.0
    try:
        with torch.inference_mode():
            single = runner(first[:1])
            if tuple(single.shape) != (1, *model(first[:1]).shape[1:]):
                raise ExportError(f"{label} returns logits of shape {tuple(single.shape)} for one image, not (1, classes).")
            for images, labels in batches:
                eager = model(images)
                exported = runner(images).float()
                max_diff = max(max_diff, float((exported - eager).abs().max()))
                predicted, expected = exported.argmax(dim=1), eager.argmax(dim=1)
                correct += int((predicted == labels).sum())
                correct_eager += int((expected == labels).sum())
                agree += int((predicted == expected).sum())
                count += int(labels.shape[0])
    except KdframeError:
        raise
    except Exception as error:
        raise ExportError(
            f"{label} was written but fails to run in its runtime on test images ({type(error).__name__}: "
            f"{_first_line(error)}); nothing was written. Its batch size may not be dynamic: report this to the "
            "exporter's authors, or use another --format."
        ) from error
    throughput_images = first[: settings.throughput_batch]
    latency = time_calls(lambda: runner(first[:1]), 1, settings)
    throughput = time_calls(lambda: runner(throughput_images), int(throughput_images.shape[0]), settings)
    return Verification(
        file=file.name,
        precision=precision,
        size_mb=file.stat().st_size / 1e6,
        accuracy=100.0 * correct / count,
        eager_accuracy=100.0 * correct_eager / count,
        max_abs_diff=float(f"{max_diff:.3g}"),
        agreement=100.0 * agree / count,
        samples=count,
        latency=latency,
        throughput=throughput,
    )


def _load(exporter: Exporter, path: Path, label: str) -> Runner:
    """The exporter's runner for ``path``; a failure is an :class:`ExportError`."""
    try:
        with quiet_exporters():
            return exporter.load(path)
    except KdframeError:
        raise
    except Exception as error:
        raise ExportError(
            f"{label} was written but its runtime cannot load it ({type(error).__name__}: {_first_line(error)}); "
            "nothing was written. Report this to the exporter's authors, or use another --format."
        ) from error


def export_stage(
    folder: str | Path,
    *,
    stage: str | None = None,
    format: str = "onnx",
    params: dict[str, Any] | None = None,
    int8: bool = False,
    calibration_samples: int = CALIBRATION_SAMPLES,
    test_samples: int | None = None,
    out: str | Path | None = None,
    settings: LatencySettings | None = None,
    plugins: Plugins | None = None,
    best: bool = False,
) -> tuple[ExportReport, Path]:
    """Export a stage's model from its run folder to ``format`` and verify it (see the module
    docstring); return the report and the folder the artefacts were written to.

    Args:
        folder: The run folder.
        stage: The stage (default: the last one that saved a model, the run's final student).
        format: A registered exporter (``kdframe plugins --kind exporter``).
        params: The exporter's params (validated by its params model).
        int8: Also write and verify a statically quantized int8 artefact.
        calibration_samples: Training images that calibrate int8 quantization.
        test_samples: Verify on the first this many test images (default: the whole test split).
        out: Where to write (default ``<folder>/exports``).
        settings: How the artefacts are timed.
        plugins: The plugin manager to read the run with (default: the one its schedule asks for).
        best: Export the weights of the stage's best epoch (``best.pt``) instead of its last; the
            files are named ``<stage>-best.*``.
    """
    from kdframe.saved_models import load_stage_model, training_images
    from kdframe.schedule import component_params

    folder = Path(folder)
    saved = load_stage_model(folder, stage, plugins, best=best)
    base = f"{saved.stage}-best" if best else saved.stage
    registry = saved.plugins.registry
    component = registry.get("exporter", format)
    validated = component_params(registry, "exporter", format, params or {}, "--param")
    with registry.component_code("exporter", format, "its factory"):
        exporter = component.spec.factory(validated)
    if int8 and not getattr(component.spec, "supports_int8", False):
        offering = [c.name for c in registry.iter("exporter") if getattr(c.spec, "supports_int8", False)]
        raise ExportError(
            f"Exporter '{format}' does not offer int8 quantization. Formats that do: {', '.join(offering) or 'none installed'}; "
            "leave out --int8 for an fp32 export."
        )
    settings = settings or LatencySettings()
    model = saved.model
    label = f"Stage '{saved.stage}' (model '{saved.key}', {saved.arch}{', best epoch' if best else ''})"
    batch_size = saved.schedule.data.eval_batch_size
    batches = [(images.cpu(), labels.cpu()) for images, labels, _ in eval_batches(saved.data, batch_size, device=torch.device("cpu"))]
    if test_samples is not None:
        kept, remaining = [], test_samples
        for images, labels in batches:
            if remaining <= 0:
                break
            kept.append((images[:remaining], labels[:remaining]))
            remaining -= int(labels.shape[0])
        batches = kept
    # A copy, not a view of the test split: torch.export stores example inputs with their storage.
    example = (batches[0][0][:2] if batches[0][0].shape[0] >= 2 else batches[0][0].repeat(2, 1, 1, 1)).clone()
    report = ExportReport(
        str(folder), saved.stage, saved.key, saved.arch, format, exporter.runtime, count_parameters(model),
        torch.get_num_threads(), exporter_params=validated.model_dump(mode="json"),
    )
    target = Path(out) if out is not None else folder / EXPORTS_FOLDER
    with tempfile.TemporaryDirectory(prefix="kdframe-export-") as scratch:
        fp32_path = Path(scratch) / f"{base}{exporter.suffix}"
        try:
            with quiet_exporters(), torch.inference_mode(False):
                exporter.export(model, example, fp32_path)
        except KdframeError:
            raise
        except Exception as error:
            alternatives = [c.name for c in registry.iter("exporter") if c.name != format]
            raise ExportError(
                f"{label} cannot be exported to {format}: it uses {failed_operation(error)}. Try another "
                f"format ({', '.join(f'--format {name}' for name in alternatives) or 'none other installed'}), or "
                "change the model to avoid that operation. Nothing was written; rerun with --debug for the "
                "exporter's full message."
            ) from error
        runner = _load(exporter, fp32_path, f"The {format} export of {label}")
        fp32 = verify(runner, model, batches, file=fp32_path, precision="fp32", settings=settings, label=f"The {format} export of {label}")
        if abs(fp32.accuracy - fp32.eager_accuracy) > FP32_ACCURACY_TOLERANCE:
            raise ExportError(
                f"The {format} export of {label} does not match eager PyTorch: test accuracy {fp32.accuracy:.2f}% vs "
                f"{fp32.eager_accuracy:.2f}% (largest logit difference {fp32.max_abs_diff:g}). The exporter "
                "changed what the model computes; nothing was written. Try another --format."
            )
        report.artefacts.append(fp32)
        written = [fp32_path]
        if int8:
            int8_path = Path(scratch) / f"{base}.int8{exporter.suffix}"
            calibration = training_images(saved.data, calibration_samples, saved.schedule.seed)
            try:
                with quiet_exporters():
                    exporter.quantize(fp32_path, int8_path, calibration)
            except KdframeError:
                raise
            except Exception as error:
                raise ExportError(
                    f"Quantizing the {format} export of {label} to int8 failed: {failed_operation(error)}. "
                    "Nothing was written; export without --int8, or rerun with --debug for the full message."
                ) from error
            runner8 = _load(exporter, int8_path, f"The int8 {format} export of {label}")
            report.artefacts.append(
                verify(runner8, model, batches, file=int8_path, precision="int8", settings=settings, label=f"The int8 {format} export of {label}")
            )
            written.append(int8_path)
        target.mkdir(parents=True, exist_ok=True)
        for path in written:
            shutil.move(str(path), target / path.name)
    write_text_atomic(target / f"{base}.{format}.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report, target


def format_export(report: ExportReport | dict[str, Any]) -> str:
    """A table of an export report's artefacts (as written to ``<stage>.<format>.json``)."""
    from kdframe.results import format_grid

    data = report.to_dict() if isinstance(report, ExportReport) else report
    header = ["artefact", "precision", "size", "latency b1", "throughput", "test acc %", "eager acc %", "max |Δ logit|", "top-1 agree %"]
    lines = [header]
    for artefact in data.get("artefacts", []):
        lines.append(
            [
                artefact["file"],
                artefact["precision"],
                f"{artefact['size_mb']:.3f} MB",
                f"{artefact['latency']['median_ms']:.3f} ms",
                f"{artefact['throughput']['images_per_s']:.0f} img/s",
                f"{artefact['test_acc']:.2f}",
                f"{artefact['eager_test_acc']:.2f}",
                f"{artefact['max_abs_diff']:.3g}",
                f"{artefact['top1_agreement']:.2f}",
            ]
        )
    samples = data["artefacts"][0]["samples"] if data.get("artefacts") else 0
    title = (
        f"Stage '{data.get('stage')}' ({data.get('arch')}) as {data.get('format')}, run in {data.get('runtime')} on the CPU "
        f"({data.get('threads')} threads), verified on {samples} test images against eager PyTorch:"
    )
    return title + "\n" + format_grid(lines)


def format_exports(folder: str | Path) -> str:
    """The tables of every export report in ``<folder>/exports`` ("" when there is none)."""
    exports = Path(folder) / EXPORTS_FOLDER
    if not exports.is_dir():
        return ""
    tables = []
    for path in sorted(exports.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            tables.append(format_export(data))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            tables.append(f"{path}: not an export report kdframe can read (skipped).")
    return "\n\n".join(tables)
