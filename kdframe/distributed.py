"""Multi-process training launched by ``torchrun``: process group, sharding, reductions, rank 0.

``torchrun --nproc_per_node=N -m kdframe run SCHEDULE.json`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set (multi-node: torchrun's
``--nnodes``, ``--node_rank`` and ``--rdzv_*`` flags as usual). :func:`init_from_env` joins the process
group (NCCL for CUDA, gloo for the CPU); without torchrun everything here is a no-op for one process.

A distributed run computes what a single-process run with the same schedule computes:

* ``data.batch_size`` stays the *global* batch. Every rank draws the same shuffling and augmentation
  (the seed is the same), and takes its contiguous share of each global batch
  (:meth:`DistEnv.shard_batch`); the batch size must be a multiple of the number of processes.
* The student is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages its
  gradients; the parameters of loss-term adapters are averaged by :func:`average_gradients`.
* BatchNorm layers normalise with the statistics of the global batch (:func:`sync_batchnorm`), as in
  the single-process run; PyTorch's ``SyncBatchNorm`` supports only GPUs, this works on any backend.
* Loss values and metrics are averaged or summed across ranks; evaluation splits the test set.

Loss terms that relate the samples of a batch to each other (RKD, similarity-preserving, CRD...) see
only their rank's share of the batch, as in any data-parallel training. Only rank 0 writes logs,
checkpoints and results.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdframe.errors import TrainingError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the process group (rank 0 of 1 when not distributed).

    Attributes:
        rank: Global rank.
        world_size: Number of processes.
        local_rank: Rank on this node (the CUDA device index).
        device: Where collective operations need their tensors (the CPU for gloo).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes files and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    def shard_batch(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """This rank's contiguous, equal share of a global batch (dimension 0) of each tensor."""
        if not self.active:
            return tensors
        count = int(tensors[0].shape[0])
        if count % self.world_size:
            raise TrainingError(
                f"A batch of {count} samples cannot be split evenly over {self.world_size} processes. "
                f"Make data.batch_size a multiple of {self.world_size} (and keep train_samples at "
                "least one batch)."
            )
        size = count // self.world_size
        start = self.rank * size
        return tuple(tensor[start : start + size] for tensor in tensors)

    def shard_split(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """This rank's share of a whole split (near-equal parts; for evaluation)."""
        if not self.active:
            return tensors
        return tuple(tensor.tensor_split(self.world_size)[self.rank] for tensor in tensors)

    def shard_size(self, count: int) -> int:
        """How many of a split's ``count`` samples :meth:`shard_split` gives this rank."""
        if not self.active:
            return count
        return count // self.world_size + (1 if self.rank < count % self.world_size else 0)

    def sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` over all ranks (same device and dtype as given)."""
        if not self.active:
            return tensor
        reduced = tensor.to(self.device, copy=True)
        dist.all_reduce(reduced)
        return reduced.to(tensor.device)

    def mean(self, tensor: Tensor) -> Tensor:
        """The element-wise mean of ``tensor`` over all ranks."""
        return self.sum(tensor) / self.world_size if self.active else tensor


def launched() -> bool:
    """Whether this process was started by torchrun (or alike) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> DistEnv:
    """The process group as a :class:`DistEnv` (one process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if launched() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: torch.device) -> DistEnv:
    """Join the process group that torchrun's environment describes (once); return :func:`current`.

    NCCL for a CUDA ``device``, gloo otherwise. Without torchrun (``WORLD_SIZE`` unset or 1) this does
    nothing and returns one process.
    """
    if launched() and not dist.is_initialized():
        if not dist.is_available():
            raise TrainingError("This PyTorch build has no torch.distributed; run without torchrun.")
        device = local_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return current()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process is rank 0 (always true without torchrun)."""
    return current().is_main


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself without a process group)."""
    env = current()
    if not env.active:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, device=env.device if env.device.type == "cuda" else None)
    return holder[0]


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    env = current()
    if env.active:
        dist.barrier(device_ids=[env.local_rank] if env.device.type == "cuda" else None)


def average_gradients(parameters: Sequence[nn.Parameter], env: DistEnv) -> None:
    """Average the gradients of ``parameters`` over all ranks, in one collective call.

    Every rank must hold gradients for the same parameters (the losses and weights are the same).
    """
    if not env.active:
        return
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not grads:
        return
    flat = env.mean(torch.cat([grad.reshape(-1) for grad in grads]))
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset : offset + count].view(grad.shape))
        offset += count


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    """``model`` in :class:`DistributedDataParallel` (which averages its gradients); itself alone."""
    if not env.active:
        return model
    device_ids = [env.local_rank] if env.device.type == "cuda" else None
    # Buffers (BatchNorm statistics) stay equal on every rank: sync_batchnorm updates them from the
    # global batch, so broadcasting them every step would only cost time.
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of every rank's copy is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        reduced = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(reduced)
        return reduced

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        reduced = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(reduced)
        return reduced


def _global_batch_norm(module: _BatchNorm, input: Tensor) -> Tensor:
    """BatchNorm over the global batch: statistics summed over ranks with differentiable all-reduces."""
    if not module.training and module.running_mean is not None:
        return type(module).forward(module, input)
    module._check_input_dim(input)
    dims = [0, *range(2, input.dim())]
    shape = [1, -1] + [1] * (input.dim() - 2)
    values = input.float()
    local_count = values.new_full((1,), float(values.numel() // values.shape[1]))
    totals = _AllReduceSum.apply(torch.cat([values.sum(dims), local_count]))
    count = totals[-1]
    mean = totals[:-1] / count
    centered = values - mean.view(shape)
    var = _AllReduceSum.apply((centered * centered).sum(dims)) / count
    output = centered * torch.rsqrt(var + module.eps).view(shape)
    if module.affine:
        output = output * module.weight.view(shape) + module.bias.view(shape)
    if module.training and module.track_running_stats and module.running_mean is not None:
        with torch.no_grad():
            module.num_batches_tracked.add_(1)
            factor = module.momentum if module.momentum is not None else 1.0 / float(module.num_batches_tracked)
            unbiased = var * count / (count - 1).clamp(min=1.0)
            module.running_mean.mul_(1 - factor).add_(mean.detach().to(module.running_mean.dtype), alpha=factor)
            module.running_var.mul_(1 - factor).add_(unbiased.detach().to(module.running_var.dtype), alpha=factor)
    return output.to(input.dtype)


def sync_batchnorm(models: Iterable[nn.Module], env: DistEnv) -> Callable[[], None]:
    """Make every BatchNorm layer of ``models`` use global-batch statistics in training mode.

    The layers are patched in place (their forward), so module paths, forward hooks (feature taps)
    and state dicts stay as they are. Returns a function that undoes it. Nothing without a group.
    """
    patched: list[nn.Module] = []
    if env.active:
        for model in models:
            for module in model.modules():
                if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm) and "forward" not in vars(module):
                    module.forward = types.MethodType(_global_batch_norm, module)
                    patched.append(module)

    def restore() -> None:
        for module in patched:
            vars(module).pop("forward", None)
        patched.clear()

    return restore
