"""A kdframe plugin template: two loss strategies, a model, a curriculum and a logger.

kdframe finds this module through the entry point ``kdframe_template`` of the ``kdframe`` group,
declared in this distribution's ``pyproject.toml``, and calls its registration hooks. Importing the
module registers nothing by itself.

* loss ``logit_mimic`` (response): logit regression of Ba & Caruana (2014), see :mod:`.loss`;
* loss ``pooled_hint`` (feature): a FitNets-style hint on pooled features through a learned
  adapter, see :mod:`.feature_loss`;
* model ``mlp``: a multi-layer perceptron with named layers for feature losses, see :mod:`.model`;
* curriculum ``self_distillation``: train a model, then distil a copy of it from it, see
  :mod:`.curriculum`;
* logger ``csv_metrics``: one CSV row per epoch in the run folder, see :mod:`.logger`.
"""

from __future__ import annotations

from kdframe import CurriculumSpec, LoggerSpec, LossSpec, ModelSpec, hookimpl
from kdframe_template import curriculum, feature_loss, logger, loss, model

#: The major version of kdframe's plugin API this plugin is written for; kdframe refuses to load a
#: plugin written for another major version instead of failing halfway through a run.
KDFRAME_PLUGIN_API = 2


@hookimpl
def kdframe_register_losses() -> list[LossSpec]:
    """The loss strategies of this plugin."""
    return [loss.SPEC, feature_loss.SPEC]


@hookimpl
def kdframe_register_models() -> list[ModelSpec]:
    """The model architectures of this plugin."""
    return [model.SPEC]


@hookimpl
def kdframe_register_curricula() -> list[CurriculumSpec]:
    """The curricula of this plugin."""
    return [curriculum.SPEC]


@hookimpl
def kdframe_register_loggers() -> list[LoggerSpec]:
    """The loggers of this plugin."""
    return [logger.SPEC]
