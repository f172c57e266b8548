"""Data-parallel runs under torchrun: joining and leaving the process group, and what the ranks exchange.

Every rank draws the same permutation and augmentations and takes its own rows of each global batch (train.py);
this module only knows about the group itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    """Rank, world size and backend; world 1 and no backend when not under torchrun."""

    rank: int = 0
    world: int = 1
    backend: str | None = None  # "gloo" or "nccl" once in a process group
    owner: bool = False  # this process group was created here, so it is destroyed here too

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None


def under_torchrun() -> bool:
    """True in a process that torchrun started: it sets the rendezvous variables init_process_group reads."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(device: torch.device) -> Dist:
    """Join torchrun's process group (nccl on CUDA, gloo otherwise), even a one-process one.

    With one process the run still goes through DistributedDataParallel (and SyncBatchNorm with --sync-bn), so a
    one-GPU torchrun exercises the multi-GPU code path instead of silently skipping it.
    """
    if not under_torchrun():
        return Dist()
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dist.get_backend(), owner)


def leave(d: Dist) -> None:
    """Wait for every rank, then destroy the process group if it was created here (torch warns at exit otherwise)."""
    if d.active and dist.is_initialized():
        dist.barrier()
        if d.owner:
            dist.destroy_process_group()


def sync_from_rank0(module: nn.Module) -> None:
    """Make every rank's copy of a module rank 0's: weights and buffers (BN statistics drift apart per rank)."""
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, 0)


def sum_over_ranks(values: list[float], d: Dist) -> list[float]:
    """Element-wise sums of the ranks' values, in float64.

    The tensor lives on the CPU, except under NCCL, which reduces CUDA tensors only: MPS has no float64.
    """
    if not d.active:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if d.backend == "nccl" else torch.device("cpu")
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()
