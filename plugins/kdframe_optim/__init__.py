"""Optimizers and learning-rate schedules for kdframe (first-party plugin).

Registers the optimizers ``sgd`` (the default), ``adam`` and ``adamw`` and the LR schedules
``cosine`` (the default), ``step`` and ``constant``, exactly as a third-party plugin would. Schedule
example::

    "training": {
        "optimizer": {"name": "adamw", "params": {"lr": 0.001, "weight_decay": 0.05},
                      "param_groups": [{"params": "loss.*", "lr": 0.01}]},
        "lr_schedule": {"name": "step", "params": {"milestones": [30, 60]}, "warmup_epochs": 1}
    }
"""

from __future__ import annotations

import kdframe
from kdframe_optim.lr_schedules import Constant, Cosine, CosineParams, Step, StepParams
from kdframe_optim.optimizers import AdamParams, SGDParams, make_adam, make_adamw, make_sgd

KDFRAME_PLUGIN_API = 2

__all__ = ["kdframe_register_lr_schedules", "kdframe_register_optimizers"]


@kdframe.hookimpl
def kdframe_register_optimizers() -> list[kdframe.OptimizerSpec]:
    return [
        kdframe.OptimizerSpec(
            name="sgd",
            summary="Stochastic gradient descent with (Nesterov) momentum and L2 weight decay (torch.optim.SGD).",
            factory=make_sgd,
            params=SGDParams,
            family="sgd",
        ),
        kdframe.OptimizerSpec(
            name="adam",
            summary="Adam with L2 weight decay (torch.optim.Adam; Kingma and Ba, ICLR 2015).",
            factory=make_adam,
            params=AdamParams,
            family="adaptive",
        ),
        kdframe.OptimizerSpec(
            name="adamw",
            summary="AdamW, Adam with decoupled weight decay (torch.optim.AdamW; Loshchilov and Hutter, ICLR 2019).",
            factory=make_adamw,
            params=AdamParams,
            family="adaptive",
        ),
    ]


@kdframe.hookimpl
def kdframe_register_lr_schedules() -> list[kdframe.LRScheduleSpec]:
    return [
        kdframe.LRScheduleSpec(
            name="cosine",
            summary="Cosine annealing from the peak LR to min_lr_factor times it at the stage's end.",
            factory=Cosine,
            params=CosineParams,
            family="decay",
        ),
        kdframe.LRScheduleSpec(
            name="step",
            summary="The LR times gamma at each milestone epoch.",
            factory=Step,
            params=StepParams,
            family="decay",
        ),
        kdframe.LRScheduleSpec(
            name="constant",
            summary="The peak LR throughout, after the warm-up.",
            factory=Constant,
            params=kdframe.NoParams,
            family="constant",
        ),
    ]
