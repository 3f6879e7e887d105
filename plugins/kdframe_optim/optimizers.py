"""The optimizers ``sgd``, ``adam`` and ``adamw`` (torch.optim), with kdframe's defaults."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from kdframe import Params

#: A number in [0, 1), e.g. one of Adam's betas.
UnitInterval = Annotated[float, Field(ge=0.0, lt=1.0)]


class SGDParams(Params):
    """Params of ``sgd``."""

    lr: float = Field(0.05, gt=0.0, le=100.0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum factor.")
    weight_decay: float = Field(5e-4, ge=0.0, description="L2 penalty.")
    nesterov: bool = Field(True, description="Nesterov momentum (needs momentum > 0).")


class AdamParams(Params):
    """Params of ``adam`` and ``adamw``."""

    lr: float = Field(1e-3, gt=0.0, le=100.0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, description="Weight decay (decoupled for adamw).")
    betas: tuple[UnitInterval, UnitInterval] = Field(
        (0.9, 0.999), description="Coefficients of the running averages, each in [0, 1)."
    )


def make_sgd(params: SGDParams, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD with momentum; Nesterov only where there is momentum."""
    return torch.optim.SGD(
        param_groups,
        lr=params.lr,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
        nesterov=params.nesterov and params.momentum > 0,
    )


def make_adam(params: AdamParams, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Adam (L2 weight decay)."""
    return torch.optim.Adam(param_groups, lr=params.lr, weight_decay=params.weight_decay, betas=params.betas)


def make_adamw(params: AdamParams, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(param_groups, lr=params.lr, weight_decay=params.weight_decay, betas=params.betas)
