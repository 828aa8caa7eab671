"""torchrun / DistributedDataParallel helpers shared by training and certification.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs as a single
process and these helpers are no-ops. The backend follows the device: NCCL on CUDA, gloo
on CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "barrier", "cleanup", "distributed_env", "init_distributed", "is_distributed",
    "is_main_process", "rank", "world_size",
]


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) otherwise."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: torch.device) -> bool:
    """Join the torchrun process group if there is one; return whether we are distributed."""
    _, world_size, local_rank = distributed_env()
    if world_size <= 1:
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
