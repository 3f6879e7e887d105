"""The ``torchscript`` exporter: ``torch.jit.trace``, saved with ``torch.jit.save``."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor, nn

import kdframe


class TorchScriptParams(kdframe.Params):
    """Params of the ``torchscript`` exporter."""

    check_trace: bool = Field(
        True, description="Let torch.jit.trace run the traced module again and compare (torch.jit.trace(check_trace=...))."
    )


class TorchScriptExporter(kdframe.Exporter):
    """Traces the model with ``torch.jit.trace`` (a trace records the operations run on the
    example, so Python control flow is fixed to the branch the example took) and runs it with
    ``torch.jit.load``. PyTorch 2.14 deprecates TorchScript; ``pt2`` is its successor."""

    suffix = ".torchscript.pt"

    def __init__(self, params: TorchScriptParams | None = None) -> None:
        self.params = params or TorchScriptParams()

    @property
    def runtime(self) -> str:
        return f"TorchScript (PyTorch {torch.__version__})"

    def export(self, model: nn.Module, example: Tensor, path: Path) -> None:
        traced = torch.jit.trace(model, example, check_trace=self.params.check_trace)
        torch.jit.save(traced, str(path))

    def load(self, path: Path) -> kdframe.export.Runner:
        # A TorchScript archive holds code: load only the file export() has just written.
        module = torch.jit.load(str(path), map_location="cpu")
        module.eval()

        def run(images: Tensor) -> Tensor:
            with torch.inference_mode():
                return module(images)

        return run
