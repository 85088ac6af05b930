"""Several processes with torchrun, one process without it, through the same code.

`torchrun --nproc-per-node N -m apl_core pretrain ...` sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; `init_distributed` reads them and joins the process group (NCCL on
GPUs, gloo on CPUs). Without them it returns a single-process context and nothing else
changes. The process group has a timeout, so a rank whose peer died stops with an error instead
of waiting forever.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, metrics and checkpoints."""
        return self.rank == 0


def init_distributed(device: torch.device, timeout_s: float | None = None) -> DistContext:
    """Join the torchrun process group when there is one (see module docstring)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    context = DistContext(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s or float(os.environ.get("APL_DIST_TIMEOUT", 600)))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend, timeout=timeout)
    return context


def local_device(device: torch.device, context: DistContext) -> torch.device:
    """Each rank of a multi-GPU run drives its own GPU (cuda:LOCAL_RANK)."""
    if device.type == "cuda" and context.enabled:
        return torch.device("cuda", context.local_rank)
    return device


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum a metric accumulator over ranks in place (a no-op in one process)."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(value, context: DistContext) -> list:
    """Every rank's `value`, in rank order (a one-element list in one process)."""
    if not context.enabled:
        return [value]
    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def shutdown() -> None:
    """Leave the process group, if this process joined one (the end of a torchrun run)."""
    if dist.is_initialized():
        dist.destroy_process_group()
