"""The ``onnx`` exporter: ``torch.onnx.export`` (torch.export-based), run in ONNX Runtime, and int8
by ONNX Runtime's static post-training quantizer.

Why ONNX Runtime's quantizer for int8: it runs on the CPU here and on the devices ONNX Runtime
targets, it is maintained by the runtime that executes the result, and its static QDQ models are
what mobile and edge runtimes consume. PyTorch's own eager and FX quantization
(``torch.ao.quantization``) is deprecated in favour of torchao and ExecuTorch's flows, which target
their own runtimes.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

import kdframe
from kdframe_export.pt2 import batch_dynamic

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class OnnxParams(kdframe.Params):
    """Params of the ``onnx`` exporter."""

    opset: int = Field(18, ge=13, le=30, description="ONNX opset version of the exported graph.")
    per_channel: bool = Field(
        True, description="int8 only: one quantization scale per output channel of each weight (more accurate than one per tensor)."
    )
    calibration_method: str = Field(
        "minmax",
        pattern="^(minmax|entropy|percentile)$",
        description="int8 only: how activation ranges are chosen from the calibration images (ONNX Runtime's CalibrationMethod: minmax, entropy or percentile).",
    )


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise kdframe.ExportError(
            f"The onnx exporter needs the Python package '{module.split('.')[0]}', which is not installed. "
            "Install kdframe's deploy extra (pip install 'kdframe[deploy]': onnx, onnxscript and onnxruntime), "
            "or use --format pt2."
        ) from None


class OnnxExporter(kdframe.Exporter):
    """Exports with ``torch.onnx.export(dynamo=True)`` to one self-contained ``.onnx`` file whose
    input ``images`` has a dynamic batch dimension; runs it with ``onnxruntime.InferenceSession``
    on the CPU execution provider."""

    suffix = ".onnx"

    def __init__(self, params: OnnxParams | None = None) -> None:
        self.params = params or OnnxParams()

    @property
    def runtime(self) -> str:
        try:
            import onnxruntime
        except ImportError:
            return "ONNX Runtime (not installed)"
        return f"ONNX Runtime {onnxruntime.__version__}"

    def export(self, model: nn.Module, example: Tensor, path: Path) -> None:
        _require("onnx")
        _require("onnxscript")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=batch_dynamic(),
            opset_version=self.params.opset,
            external_data=False,
            dynamo=True,
        )

    def load(self, path: Path) -> kdframe.export.Runner:
        onnxruntime = _require("onnxruntime")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(images: Tensor) -> Tensor:
            (logits,) = session.run(None, {name: images.detach().cpu().float().numpy()})
            return torch.from_numpy(logits)

        return run

    def quantize(self, source: Path, path: Path, calibration: Tensor) -> None:
        quantization = _require("onnxruntime.quantization")
        prepared = path.with_name(path.stem + ".prepared.onnx")
        quantization.quant_pre_process(str(source), str(prepared))
        batches = [calibration[start : start + 32].numpy() for start in range(0, calibration.shape[0], 32)]
        method = {
            "minmax": quantization.CalibrationMethod.MinMax,
            "entropy": quantization.CalibrationMethod.Entropy,
            "percentile": quantization.CalibrationMethod.Percentile,
        }[self.params.calibration_method]

        class Reader(quantization.CalibrationDataReader):
            def __init__(self) -> None:
                self.pending = iter(batches)

            def get_next(self) -> dict[str, Any] | None:
                batch = next(self.pending, None)
                return None if batch is None else {INPUT_NAME: batch}

        try:
            quantization.quantize_static(
                str(prepared),
                str(path),
                Reader(),
                quant_format=quantization.QuantFormat.QDQ,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                per_channel=self.params.per_channel,
                calibrate_method=method,
            )
        finally:
            with contextlib.suppress(OSError):
                prepared.unlink()
