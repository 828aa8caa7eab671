"""Replayable training steps (``--cuda-graphs``): the whole step as one CUDA graph.

A LeNet SmoothMix step is launch-bound on a GPU: hundreds of tiny kernels (T search steps of
forward + input gradient, two loss forwards, one backward, the SGD update), each costing
more to launch than to run. With fixed shapes (drop-last batches) the step is the same
sequence of kernels every time, so it is captured once as a CUDA graph and replayed for
every batch: one launch per step. What makes that valid:

* static buffers: each batch is copied into the same input tensors; the loss and metrics
  come back in one static device tensor that the loop accumulates (no host sync per step);
* the noise is drawn inside the graph (PyTorch's CUDA generator is graph-safe: every replay
  draws fresh numbers), so the randomness of the method is unchanged;
* the optimiser's gradients are set to None before capture, so the captured backward
  *assigns* them and every replay overwrites them; the loop does not zero them;
* per-epoch Python numbers baked into the kernels (the learning rate after a schedule step,
  the methods' warm-up weights, MACER's deferral) change only between epochs, so the step is
  re-captured at the start of every epoch.

The first steps run eagerly (on a side stream, as PyTorch's whole-network capture recipe
asks) to create the optimiser's momentum buffers and pick the cuDNN algorithms. A capture
that fails (a method that reads a value back to the host inside its step, say) is reported
once and the run continues eagerly.

On a CPU there is nothing to capture: :class:`StepGraph` runs the very same static-buffer
step eagerly; that is what the tests exercise here. NOTE: written and tested on a machine
without a GPU; the capture path has not yet run on one (scripts/gpu-check runs it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["StepGraph"]

# Eager steps before the first capture (PyTorch's recipe uses 3 on a side stream).
WARMUP_STEPS = 3


class StepGraph:
    """One training step ``method -> backward -> optimizer.step`` on fixed-shape batches.

    :meth:`step` returns ``(values, keys)``: ``values`` a float32 device tensor
    ``[loss, *metrics[keys]]`` of this batch (valid until the next call), ``keys`` the metric
    names. On CUDA the step is captured once per epoch and replayed; elsewhere (or after a
    failed capture) it runs eagerly with the same buffers.
    """

    def __init__(self, model: nn.Module, method: Callable[..., Any],
                 optimizer: torch.optim.Optimizer, amp: bool = False,
                 log: Callable[[str], None] = print) -> None:
        self.model, self.method, self.optimizer = model, method, optimizer
        self.amp, self.log = amp, log
        self.keys: list[str] | None = None
        self.static: tuple[Tensor, Tensor, dict[str, Tensor]] | None = None
        self.values: Tensor | None = None
        self.graph: Any = None
        self.pool: Any = None
        self.graph_epoch: int | None = None
        self.eager_steps = 0
        self.capture_failed = False

    # -- the step body, shared by the eager run and the capture ---------------------------
    def _body(self, x: Tensor, y: Tensor, side: dict[str, Tensor], epoch: int) -> Tensor:
        # bf16 autocast without its cast cache: cached casts made during a capture would be
        # freed behind the graph's back (PyTorch's advice for autocast with CUDA graphs).
        amp = (torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False)
               if self.amp else contextlib.nullcontext())
        with amp:
            out = self.method(self.model, x, y, epoch, **side)
        out.loss.backward()
        self.optimizer.step()
        if self.keys is None:
            self.keys = [k for k in out.metrics if k != "loss"]
        return torch.stack([out.loss.detach().float(),
                            *(out.metrics[k].detach().float().reshape(()) for k in self.keys)])

    def _eager(self, x: Tensor, y: Tensor, side: dict[str, Tensor], epoch: int) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        self.eager_steps += 1
        return self._body(x, y, side, epoch)

    def _load(self, x: Tensor, y: Tensor, side: dict[str, Tensor]) -> None:
        """Copy the batch into the static buffers (allocated from the first batch)."""
        if self.static is None:
            self.static = (x.clone(), y.clone(), {k: v.clone() for k, v in side.items()})
            return
        sx, sy, sside = self.static
        if sx.shape != x.shape or sy.shape != y.shape:
            raise ValueError(f"a replayable step needs batches of one shape: got "
                             f"{tuple(x.shape)} after {tuple(sx.shape)} (use drop-last)")
        sx.copy_(x)
        sy.copy_(y)
        for k, v in side.items():
            sside[k].copy_(v)

    def step(self, x: Tensor, y: Tensor, side: dict[str, Tensor],
             epoch: int) -> tuple[Tensor, list[str]]:
        self._load(x, y, side)
        assert self.static is not None
        sx, sy, sside = self.static
        use_graph = x.device.type == "cuda" and not self.capture_failed
        values: Tensor | None
        if not use_graph:
            values = self._eager(sx, sy, sside, epoch)
        elif self.eager_steps < WARMUP_STEPS:
            values = self._side_stream_eager(sx, sy, sside, epoch)
        else:
            if self.graph_epoch != epoch:
                self._capture(sx, sy, sside, epoch)
            if self.graph is None:  # the capture failed: eager from now on
                values = self._eager(sx, sy, sside, epoch)
            else:
                self.graph.replay()
                values = self.values
        assert self.keys is not None and values is not None
        return values, self.keys

    # -- CUDA only (not yet run on a GPU) ------------------------------------------------
    def _side_stream_eager(self, x: Tensor, y: Tensor, side: dict[str, Tensor],
                           epoch: int) -> Tensor:
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):
            values = self._eager(x, y, side, epoch)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        return values

    def _capture(self, x: Tensor, y: Tensor, side: dict[str, Tensor], epoch: int) -> None:
        """Capture the step for ``epoch`` (re-using the previous graph's memory pool)."""
        self.graph = None  # the previous epoch's graph is never replayed again
        self.optimizer.zero_grad(set_to_none=True)  # the capture assigns fresh gradients
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                values = self._body(x, y, side, epoch)
        except RuntimeError as exc:
            self.capture_failed = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.log(f"note: --cuda-graphs could not capture this step ({first}); "
                     "training continues without graphs")
            torch.cuda.synchronize(x.device)
            return
        self.pool = graph.pool()
        self.graph, self.values, self.graph_epoch = graph, values, epoch
        # Capture only records: the batch now in the static buffers has not been trained on
        # yet; step() replays the graph for it next.
