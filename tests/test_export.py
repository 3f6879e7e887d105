"""kdframe export: every first-party exporter round-trips a trained model and verifies it; a plugin
adds an exporter; unexportable models and missing or damaged run folders are clear errors that write
nothing."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from kdframe import ExporterSpec, ExportError, ModelSpec, NoParams, hookimpl
from kdframe.cli import main
from kdframe.errors import CheckpointError, ComponentError, RunFolderError
from kdframe.export import EXPORTS_FOLDER, Exporter, export_stage, failed_operation
from kdframe.runner import run_schedule
from kdframe.saved_models import load_stage_model
from kdframe.testing import make_plugins, tiny_schedule, write_schedule
from kdframe_export.pt2 import Pt2Exporter


def _run(tmp_path: Path, name: str = "run", *plugins, **changes) -> Path:
    schedule = tiny_schedule(**{"training.epochs": 1, "logging.loggers": [], **changes})
    path = write_schedule(tmp_path, schedule, f"{name}.json")
    manager = make_plugins(*plugins) if plugins else None
    folder, _ = run_schedule(path, out=tmp_path / name, quiet=True, plugins=manager)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished TAKD run (teacher -> assistant -> student) of the tiny schedule."""
    return _run(tmp_path_factory.mktemp("export"), **{"training.epochs": 2})


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(("format", "suffix"), [("onnx", ".onnx"), ("pt2", ".pt2"), ("torchscript", ".torchscript.pt")])
def test_each_format_round_trips_within_a_tenth_of_a_point(trained: Path, tmp_path: Path, format: str, suffix: str) -> None:
    report, target = export_stage(trained, format=format, out=tmp_path / format)
    (artefact,) = report.artefacts
    assert report.stage == "student" and report.model == "student"  # the run's final student by default
    assert artefact.file == f"student{suffix}" and (target / artefact.file).is_file()
    assert artefact.samples == 64  # the tiny schedule's whole test split
    assert abs(artefact.accuracy - artefact.eager_accuracy) <= 0.1
    assert artefact.max_abs_diff < 1e-3 and artefact.agreement == 100.0
    assert artefact.size_mb == pytest.approx((target / artefact.file).stat().st_size / 1e6)
    assert artefact.latency.batch == 1 and artefact.latency.repeats >= 3 and artefact.throughput.batch == 64
    written = json.loads((target / f"student.{format}.json").read_text())
    assert written["artefacts"][0]["test_acc"] == pytest.approx(artefact.accuracy, abs=1e-3)
    assert written["format"] == format and written["params"] == report.params


def test_the_onnx_export_has_a_dynamic_batch_and_int8_is_verified(trained: Path, tmp_path: Path) -> None:
    report, target = export_stage(trained, stage="assistant", format="onnx", int8=True, calibration_samples=64, out=tmp_path)
    fp32, int8 = report.artefacts
    assert (fp32.file, fp32.precision, int8.file, int8.precision) == ("assistant.onnx", "fp32", "assistant.int8.onnx", "int8")
    graph = onnx.load(str(target / "assistant.onnx")).graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert graph.input[0].name == "images" and batch.dim_param and not batch.dim_value  # symbolic
    quantized = onnx.load(str(target / "assistant.int8.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in quantized.node)
    assert any(init.data_type == onnx.TensorProto.INT8 for init in quantized.initializer)
    assert int8.eager_accuracy == fp32.eager_accuracy and 0.0 <= int8.accuracy <= 100.0
    assert int8.max_abs_diff > fp32.max_abs_diff  # int8 is an approximation, reported as one


def test_a_model_trained_with_a_feature_loss_exports_without_taps_or_adapters(tmp_path: Path) -> None:
    folder = _run(
        tmp_path,
        "fitnet",
        **{
            "curriculum": {"name": "direct", "params": {"teacher": "teacher", "student": "student"}},
            "distill.losses": [
                {"name": "cross_entropy", "weight": 1.0},
                {"name": "fitnet", "weight": 0.5, "params": {"layers": [{"student": "features.0", "teacher": "features.3"}]}},
            ],
        },
    )
    saved = load_stage_model(folder)
    assert not saved.model._forward_hooks and all(not m._forward_hooks for m in saved.model.modules())
    report, target = export_stage(folder, format="onnx", out=tmp_path / "onnx")
    graph = onnx.load(str(target / "student.onnx")).graph
    assert [output.name for output in graph.output] == ["logits"]  # no feature outputs
    weights = sum(int(torch.tensor(list(init.dims)).prod()) if init.dims else 1 for init in graph.initializer)
    assert weights <= sum(t.numel() for t in saved.model.state_dict().values())  # no adapter weights
    export_stage(folder, format="pt2", out=tmp_path / "pt2")
    program = torch.export.load(tmp_path / "pt2" / "student.pt2")
    assert set(program.state_dict) <= set(saved.model.state_dict())
    assert len(program.graph_signature.user_outputs) == 1
    (example,), _ = program.example_inputs
    assert example.untyped_storage().nbytes() == example.numel() * 4  # not the whole test split's storage
    assert report.artefacts[0].max_abs_diff < 1e-3


class Branchy(nn.Module):
    """A classifier whose forward branches on a tensor's value: not exportable to a graph."""

    def __init__(self, params, info) -> None:
        super().__init__()
        self.linear = nn.Linear(info.in_channels * info.image_size[0] * info.image_size[1], info.num_classes)

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        if logits.mean() > 0:
            return logits
        return -logits


class Eigen(Branchy):
    """A classifier that uses an operation ONNX has no equivalent for."""

    def forward(self, x):
        flat = x.flatten(1)[:, :4]
        return self.linear(x.flatten(1)) + torch.linalg.eigh(flat.T @ flat)[0].sum()


class OddModels:
    @hookimpl
    def kdframe_register_models(self):
        return [
            ModelSpec(name="branchy", summary="branches on a tensor value", factory=Branchy, params=NoParams),
            ModelSpec(name="eigen", summary="uses eigh", factory=Eigen, params=NoParams),
        ]


@pytest.mark.parametrize(
    ("arch", "format", "expected"),
    [("branchy", "pt2", "control flow or a shape that depends on tensor values"), ("branchy", "onnx", "control flow"), ("eigen", "onnx", "aten._linalg_eigh")],
)
def test_an_unexportable_model_is_a_clear_error_that_writes_nothing(tmp_path: Path, arch: str, format: str, expected: str) -> None:
    plugin = ("odd-models", OddModels())
    folder = _run(
        tmp_path, arch, plugin, **{"models.student": {"arch": arch}, "curriculum": {"name": "direct", "params": {"student": "student"}}}
    )
    before = _contents(folder)
    with pytest.raises(ExportError) as raised:
        export_stage(folder, format=format, plugins=make_plugins(plugin))
    message = str(raised.value)
    assert expected in message and "Try another format" in message and "--format" in message and "Nothing was written" in message
    assert "\n" not in message
    assert _contents(folder) == before and not (folder / EXPORTS_FOLDER).exists()


def test_failed_operation_names_what_an_exporter_could_not_handle() -> None:
    assert "aten.foo" in failed_operation(RuntimeError("No ONNX function found for <OpOverload(op='aten.foo', overload='default')>"))
    assert "aten::bar" not in failed_operation(RuntimeError("Exporting the operator 'aten::bar' to ONNX is not supported"))
    assert "bar" in failed_operation(RuntimeError("Exporting the operator 'aten::bar' to ONNX is not supported"))
    assert failed_operation(RuntimeError("## Exception summary\n\n\x1b[96mboom\x1b[0m happened")) == "boom happened"


def test_missing_and_damaged_run_folders_are_clear_errors(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="does not exist"):
        export_stage(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        export_stage(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="not a run folder"):
        export_stage(tmp_path / "empty")
    copy = tmp_path / "copy"
    for name, data in _contents(trained).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    with pytest.raises(RunFolderError, match="no finished stage 'studnet'.*'student'"):
        export_stage(copy, stage="studnet")
    checkpoint = next(copy.glob("stages/*-student/student.pt"))
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        export_stage(copy)
    checkpoint.unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        export_stage(copy)
    (copy / "results.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="cannot be read"):
        export_stage(copy)
    assert not (copy / EXPORTS_FOLDER).exists()


def test_an_evaluate_stage_has_no_weights_to_export(tmp_path: Path) -> None:
    folder = _run(tmp_path, "ban", **{"curriculum": {"name": "born_again", "params": {"model": "student", "generations": 1, "ensemble": True}}})
    with pytest.raises(RunFolderError, match="evaluate stage"):
        export_stage(folder, stage="student-ensemble")


def test_unknown_formats_int8_where_unsupported_and_bad_params_are_refused(trained: Path) -> None:
    with pytest.raises(ComponentError, match="Unknown exporter 'onx'.*'onnx'"):
        export_stage(trained, format="onx")
    with pytest.raises(ExportError, match="does not offer int8.*onnx"):
        export_stage(trained, format="pt2", int8=True)
    with pytest.raises(Exception, match="opset"):
        export_stage(trained, format="onnx", params={"opset": 2})
    assert not (trained / EXPORTS_FOLDER / "student.pt2").exists()


class CountingExporter(Pt2Exporter):
    """A third party's exporter: pt2 under another name, counting its calls."""

    suffix = ".counted.pt2"
    calls: list[str] = []

    def export(self, model, example, path):
        CountingExporter.calls.append("export")
        super().export(model, example, path)

    def load(self, path):
        CountingExporter.calls.append("load")
        return super().load(path)


class ExporterPlugin:
    @hookimpl
    def kdframe_register_exporters(self):
        return [ExporterSpec(name="counted", summary="pt2, counted", factory=lambda params: CountingExporter())]


def test_a_plugin_adds_an_exporter(trained: Path, tmp_path: Path) -> None:
    plugins = make_plugins(("exporter-plugin", ExporterPlugin()))
    assert "counted" in plugins.registry.names("exporter")
    CountingExporter.calls = []
    report, target = export_stage(trained, format="counted", out=tmp_path, plugins=plugins)
    assert CountingExporter.calls == ["export", "load"]
    assert (target / "student.counted.pt2").is_file() and (target / "student.counted.json").is_file()
    assert report.artefacts[0].agreement == 100.0
    assert isinstance(CountingExporter(), Exporter)


class FixedBatchExporter(Pt2Exporter):
    """An exporter whose artefact only runs batches of two: not dynamic."""

    suffix = ".fixed.pt2"

    def load(self, path):
        run = super().load(path)

        def fixed(images):
            if images.shape[0] != 2:
                raise RuntimeError(f"expected batch 2, got {images.shape[0]}")
            return run(images)

        return fixed


class BrokenLoader(Pt2Exporter):
    suffix = ".broken.pt2"

    def load(self, path):
        raise ValueError("cannot parse")


class MoreExporters:
    @hookimpl
    def kdframe_register_exporters(self):
        return [
            ExporterSpec(name="fixed", summary="runs batch 2 only", factory=lambda params: FixedBatchExporter()),
            ExporterSpec(name="broken", summary="cannot load", factory=lambda params: BrokenLoader()),
        ]


@pytest.mark.parametrize(("format", "expected"), [("fixed", "fails to run in its runtime"), ("broken", "its runtime cannot load it")])
def test_an_artefact_that_does_not_run_is_refused_and_nothing_is_written(trained: Path, tmp_path: Path, format: str, expected: str) -> None:
    with pytest.raises(ExportError, match=expected) as raised:
        export_stage(trained, format=format, out=tmp_path / "out", plugins=make_plugins(("more", MoreExporters())))
    assert "nothing was written" in str(raised.value) and not (tmp_path / "out").exists()


def test_the_cli_exports_prints_the_table_and_report_shows_it(trained: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "run"
    for name, data in _contents(trained).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    assert main(["export", str(copy), "--int8", "--calibration-samples", "32", "--test-samples", "40"]) == 0
    printed = capsys.readouterr().out
    assert "student.onnx" in printed and "student.int8.onnx" in printed and "verified on 40 test images" in printed
    assert (copy / EXPORTS_FOLDER / "student.onnx.json").is_file()
    assert main(["report", str(copy)]) == 0
    shown = capsys.readouterr().out
    assert "Compression vs the teacher 'teacher'" in shown and "student.int8.onnx" in shown
    assert main(["export", str(copy), "--param", "opset"]) == 2
    assert "--param 'opset' is not KEY=VALUE" in capsys.readouterr().err
    assert main(["export", str(copy), "--test-samples", "0"]) == 2
    assert main(["export", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert "does not exist" in error and "Traceback" not in error


def test_export_help_names_the_formats_and_what_is_verified(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["export", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("onnx (default), pt2, torchscript", "--int8", "ONNX Runtime", "nothing is written", "docs/deployment.md"):
        assert phrase in text


def test_best_exports_the_best_epoch_s_weights_under_their_own_name(trained: Path, tmp_path: Path) -> None:
    assert main(["export", str(trained), "--best", "--format", "torchscript", "--out", str(tmp_path / "best")]) == 0
    assert sorted(path.name for path in (tmp_path / "best").iterdir()) == ["student-best.torchscript.json", "student-best.torchscript.pt"]
    report = json.loads((tmp_path / "best" / "student-best.torchscript.json").read_text())
    best = load_stage_model(trained, best=True).row
    assert report["artefacts"][0]["eager_test_acc"] == pytest.approx(best["best_test_acc"], abs=1e-3)
