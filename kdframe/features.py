"""Feature taps: record intermediate outputs of named submodules with forward hooks.

Models are never rewritten: a :class:`FeatureTap` registers a forward hook on each requested module
(by its path in ``model.named_modules()``) and keeps that module's latest output.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from kdframe.errors import LayerError


#: The path that names a model's output (its logits): the root module in ``named_modules()``.
LOGITS = "logits"


def module_path(path: str) -> str:
    """The ``named_modules()`` name of a layer path (``logits`` is the root module, ``""``)."""
    return "" if path == LOGITS else path


def check_layer_paths(model: nn.Module, paths: Iterable[str], label: str) -> None:
    """Raise :class:`LayerError` for any path that is not a submodule of ``model`` (or ``logits``)."""
    names = [name for name, _ in model.named_modules() if name]
    for path in paths:
        if path in names or path == LOGITS:
            continue
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.4)
        nearby = ", ".join(close) if close else "none close"
        listing = ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "")
        raise LayerError(
            f"Layer '{path}' does not exist in {label}. Closest names: {nearby}. Module paths of "
            f"this model: {listing}. Use one of these names (they are those of "
            "model.named_modules()), or 'logits' for the model's output."
        )


class FeatureTap:
    """Keeps the outputs of the named submodules of ``model`` from its latest forward pass."""

    def __init__(self, model: nn.Module, paths: Iterable[str], label: str) -> None:
        self.paths = list(dict.fromkeys(paths))
        self.label = label
        self.outputs: dict[str, Tensor] = {}
        check_layer_paths(model, self.paths, label)
        modules = dict(model.named_modules())
        self.modules = {path: modules[module_path(path)] for path in self.paths}
        self._handles = [self.modules[path].register_forward_hook(self._hook(path)) for path in self.paths]

    def _hook(self, path: str) -> Any:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, Tensor):
                raise LayerError(
                    f"Layer '{path}' of {self.label} returns {type(output).__name__}, not a tensor; "
                    "tap a layer whose output is a single tensor."
                )
            self.outputs[path] = output

        return record

    def take(self) -> dict[str, Tensor]:
        """Return the recorded outputs and forget them (so no graph is kept alive between batches)."""
        outputs, self.outputs = self.outputs, {}
        return outputs

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
