"""How the training step executes: device, processes, wrappers, one optimisation step.

:class:`ExecutionStrategy` is the one place that knows about torchrun/DDP, ``torch.compile``,
bf16 autocast, the channels-last layout and ``--cuda-graphs`` (:mod:`smoothmix.training.graphs`).
The loop (:func:`smoothmix.training.fit`) asks it to place and wrap the model, to move a
batch to the device and to run one step; collective operations (sum over ranks, gather,
barrier) go through it too, and are no-ops on one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from smoothmix import distributed
from smoothmix.device import resolve_device
from smoothmix.errors import require

if TYPE_CHECKING:
    from smoothmix.methods.base import TrainingMethod
    from smoothmix.training.loop import TrainConfig

__all__ = ["ExecutionStrategy"]


class ExecutionStrategy:
    """One process's part of a run: its device, rank and world, and how a step runs.

    Built by :meth:`from_config` (which initialises torchrun's process group when there is
    one); ``channels_last`` is decided by the loop from the data (:meth:`place`).
    """

    def __init__(self, device: torch.device, rank: int = 0, world: int = 1,
                 is_distributed: bool = False, *, precision: str = "fp32",
                 compile: bool = False, cuda_graphs: bool = False) -> None:
        self.device, self.rank, self.world = device, rank, world
        self.is_distributed = is_distributed
        self.amp = precision == "bf16"
        self.compile, self.cuda_graphs = compile, cuda_graphs
        self.channels_last = False
        self._graph: Any = None  # StepGraph with --cuda-graphs (created at the first step)

    @classmethod
    def from_config(cls, config: TrainConfig) -> ExecutionStrategy:
        device = resolve_device(config.device)
        _, env_world, local_rank = distributed.distributed_env()
        if env_world > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)  # one GPU per torchrun process
        is_dist = distributed.init_distributed(device)
        return cls(device, distributed.rank(), distributed.world_size(), is_dist,
                   precision=config.precision, compile=config.compile,
                   cuda_graphs=config.cuda_graphs)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def per_rank_batch(self, batch_size: int) -> int:
        require(batch_size % self.world == 0,
                f"--batch {batch_size} is not divisible by the {self.world} processes; each "
                "rank trains on batch/world images per step")
        return batch_size // self.world

    # -- the model ----------------------------------------------------------------------
    def place(self, model: nn.Module, channels_last: bool) -> nn.Module:
        """The model on this rank's device, in the memory format its inputs will have."""
        self.channels_last = channels_last
        return model.to(memory_format=torch.channels_last) if channels_last else model

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the method calls: DDP under torchrun, compiled with ``--compile``."""
        wrapped: nn.Module = model
        if self.is_distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda"
                          else None)
        if self.compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        require(not (self.cuda_graphs and (self.is_distributed or self.compile)),
                "--cuda-graphs runs on one process without --compile (it captures the eager "
                "step)")
        return wrapped

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast with ``precision="bf16"``, else nothing."""
        if self.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- one step -----------------------------------------------------------------------
    def to_device(self, batch: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(x, y, side)`` of a loader batch on the device (side data already is)."""
        x = batch[0].to(self.device, non_blocking=True)
        y = batch[1].to(self.device, non_blocking=True)
        side = batch[2] if len(batch) > 2 else {}
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, side

    def step(self, method: TrainingMethod | Callable[..., Any], model: nn.Module,
             optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
             side: Mapping[str, Tensor], epoch: int) -> tuple[Tensor, list[str]]:
        """One optimisation step; returns ``(values, keys)``: a float device tensor
        ``[loss, *metrics[keys]]`` of this batch (batch means) and the metric names."""
        if self.cuda_graphs:
            if self._graph is None:
                from smoothmix.training.graphs import StepGraph

                self._graph = StepGraph(model, method, optimizer, self.amp)
            values, keys = self._graph.step(x, y, dict(side), epoch)
            return values, keys
        with self.autocast():
            out = method(model, x, y, epoch, **side)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        keys = [k for k in out.metrics if k != "loss"]
        # Stays on the device: the loop reads it back once per log interval / epoch.
        return torch.stack([out.loss.detach().float(),
                            *(out.metrics[k].detach().float().reshape(()) for k in keys)]), keys

    # -- collectives (no-ops on one process) --------------------------------------------
    def all_reduce_sum(self, t: Tensor) -> Tensor:
        if distributed.is_distributed():
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather_objects(self, obj: Any) -> list[Any]:
        if not distributed.is_distributed():
            return [obj]
        out: list[Any] = [None] * distributed.world_size()
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        distributed.barrier()
