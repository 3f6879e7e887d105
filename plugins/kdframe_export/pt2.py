"""The ``pt2`` exporter: ``torch.export`` with a dynamic batch dimension, saved as a ``.pt2`` archive."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor, nn

import kdframe


class Pt2Params(kdframe.Params):
    """Params of the ``pt2`` exporter."""

    strict: bool = Field(
        False,
        description="Trace with TorchDynamo's strict mode (torch.export.export(strict=True)); the default "
        "non-strict mode traces the Python code as it runs.",
    )


def batch_dynamic() -> tuple[dict[int, torch.export.Dim]]:
    """``dynamic_shapes`` for a model with one image input: its batch dimension, any size from 1."""
    return ({0: torch.export.Dim("batch", min=1)},)


class Pt2Exporter(kdframe.Exporter):
    """Writes ``torch.export.export(model)`` with ``torch.export.save``; runs it with
    ``torch.export.load(path).module()``."""

    suffix = ".pt2"

    def __init__(self, params: Pt2Params | None = None) -> None:
        self.params = params or Pt2Params()

    @property
    def runtime(self) -> str:
        return f"torch.export (PyTorch {torch.__version__})"

    def export(self, model: nn.Module, example: Tensor, path: Path) -> None:
        program = torch.export.export(model, (example,), dynamic_shapes=batch_dynamic(), strict=self.params.strict)
        torch.export.save(program, path)

    def load(self, path: Path) -> kdframe.export.Runner:
        module = torch.export.load(path).module()

        def run(images: Tensor) -> Tensor:
            with torch.inference_mode():
                return module(images)

        return run
