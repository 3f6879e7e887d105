"""Deployment formats for ``kdframe export`` (first-party plugin).

Registers three exporters, exactly as a third-party plugin would:

* ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter), run and verified in ONNX
  Runtime; ``--int8`` adds a statically quantized model (ONNX Runtime's quantizer, QDQ format,
  calibrated on training images). Needs the ``deploy`` extra (``pip install 'kdframe[deploy]'``).
* ``pt2``: ``torch.export`` to a ``.pt2`` archive, loaded with ``torch.export.load``.
* ``torchscript``: ``torch.jit.trace``, loaded with ``torch.jit.load`` (deprecated in PyTorch 2.14;
  prefer ``pt2`` or ``onnx`` for new deployments).
"""

from __future__ import annotations

import kdframe
from kdframe_export.onnx import OnnxExporter, OnnxParams
from kdframe_export.pt2 import Pt2Exporter, Pt2Params
from kdframe_export.torchscript import TorchScriptExporter, TorchScriptParams

KDFRAME_PLUGIN_API = 2

__all__ = ["kdframe_register_exporters"]


@kdframe.hookimpl
def kdframe_register_exporters() -> list[kdframe.ExporterSpec]:
    return [
        kdframe.ExporterSpec(
            name="onnx",
            summary="ONNX (torch.onnx.export, dynamic batch), verified in ONNX Runtime; int8 by ONNX Runtime's static quantizer.",
            factory=OnnxExporter,
            params=OnnxParams,
            family="onnx",
            supports_int8=True,
        ),
        kdframe.ExporterSpec(
            name="pt2",
            summary="torch.export ExportedProgram (.pt2, dynamic batch), verified with torch.export.load.",
            factory=Pt2Exporter,
            params=Pt2Params,
            family="pytorch",
        ),
        kdframe.ExporterSpec(
            name="torchscript",
            summary="TorchScript (torch.jit.trace; deprecated by PyTorch, prefer pt2), verified with torch.jit.load.",
            factory=TorchScriptExporter,
            params=TorchScriptParams,
            family="pytorch",
        ),
    ]
