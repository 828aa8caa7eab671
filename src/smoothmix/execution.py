"""How the base classifier is run: precision, memory layout, forward chunk, compile, threads.

Everything here can change a logit in its last bits (bf16 rounds, channels_last and the
chunk change the order of the convolution's sums, threads change the reduction split), so
a near-tie argmax can flip between two settings. None of it touches soundness: the
certificate is a statement about the classifier *as run*, which is why a result file
records the resolved :class:`Execution` and a resumed run or shard must use the same one.

The chunk is fixed by a rule, never by timing: separate processes given the same settings
compute bit-identical votes. The rule's CPU size was chosen from the benchmark
``benchmarks/certify_throughput.py`` (LeNet and the CIFAR ResNets in channels_last run
fastest at a few hundred rows per forward on a CPU, whose caches a larger chunk overflows).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import cast

import torch
from torch import nn

from smoothmix.errors import require

__all__ = ["CPU_CHUNK", "EXECUTION_KEYS", "LAYOUTS", "LEGACY_EXECUTION", "PRECISIONS",
           "Execution", "check_alone", "check_precision", "check_request", "cpu_bf16_support",
           "describe_cpu", "is_convolutional", "prepare_model", "resolve_execution",
           "warn_if_bf16_emulated"]

PRECISIONS = ("fp32", "bf16")
LAYOUTS = ("channels_last", "contiguous")
# Rows per forward on a CPU (see the module docstring); accelerators take the whole block.
CPU_CHUNK = 250


@dataclass(frozen=True)
class Execution:
    """A fully resolved way of running the base classifier (see the module docstring)."""

    precision: str = "fp32"
    layout: str = "contiguous"
    chunk: int = CPU_CHUNK
    compile: bool = False
    threads: int = 1

    def settings(self) -> dict[str, object]:
        """The fields as a result file records them."""
        return asdict(self)

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """bf16 autocast around the forward when ``precision`` is bf16, else nothing."""
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=self.precision == "bf16"):
            yield

    def for_block(self, rows: int) -> Execution:
        """This execution for blocks of ``rows`` noisy copies: a chunk never exceeds the
        block (a recorded execution narrowed for a small block, fields otherwise kept)."""
        return self if self.chunk <= rows else replace(self, chunk=rows)

    def noise_layout(self, x: torch.Tensor
                     ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(``x`` as noise is drawn around it, the map from a drawn N x ... block to the
        model's input). channels_last: noise is drawn into an N x H x W x C buffer
        (contiguous, so the samplers take their fast path) and the model gets its
        N x C x H x W view, which is channels_last; otherwise both are the identity."""
        if self.layout == "channels_last" and x.dim() == 3:
            return x.permute(1, 2, 0), lambda block: block.permute(0, 3, 1, 2)
        return x, lambda block: block

    def prepare_input(self, batch: torch.Tensor) -> torch.Tensor:
        """The batch in this execution's memory layout (a no-op when it already is)."""
        if self.layout == "channels_last" and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch


def check_precision(precision: object) -> str:
    """The precision name, or a one-line error naming the valid ones."""
    require(precision in PRECISIONS,
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return str(precision)


def is_convolutional(model: nn.Module) -> bool:
    """Whether the model holds a 2-d convolution, the layer channels_last speeds up."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


# What files written before the execution was recorded (smoothmix 0.1/0.2) ran with. Their
# chunk was chosen by timing and their thread count not kept: resuming such a file takes the
# rule's chunk and the current threads.
LEGACY_EXECUTION: dict[str, object] = {"precision": "fp32", "layout": "contiguous",
                                       "compile": False}
EXECUTION_KEYS = ("precision", "layout", "chunk", "compile", "threads")


def check_request(*, precision: object = None, layout: object = None, chunk: object = None,
                  compile: object = None, threads: object = None) -> None:
    """SmoothmixError for a value no execution can take (None: unset, always fine). Names
    only: nothing is resolved against a device, so nothing is printed or changed."""
    if precision is not None:
        check_precision(precision)
    require(layout is None or layout in LAYOUTS,
            f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    require(chunk is None or _positive_int(chunk),
            f"chunk (rows per forward) must be an integer >= 1, got {chunk!r}")
    require(threads is None or _positive_int(threads),
            f"threads must be an integer >= 1, got {threads!r}")


def check_alone(execution: Execution | None, request: dict[str, object]) -> None:
    """SmoothmixError when a resolved ``execution`` comes with a request beside it: it
    already fixes precision, layout, chunk and compile, so the request would be ignored."""
    given = [name if name != "chunk" else "chunk_size"
             for name, value in request.items() if value is not None]
    require(execution is None or not given, "execution= already fixes how the model runs; "
            f"drop {', '.join(given)} (or drop execution=)")


def _positive_int(value: object) -> bool:
    # A plain int (recorded as such in a result file), not a bool.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def resolve_execution(
    model: nn.Module,
    device: torch.device,
    batch_size: int,
    *,
    precision: str | None = None,
    layout: str | None = None,
    chunk: int | None = None,
    compile: bool | None = None,
    threads: int | None = None,
    recorded: Mapping[str, object] | None = None,
) -> Execution:
    """The execution for ``model`` on ``device`` in blocks of ``batch_size`` noisy copies.

    Each argument left at None takes the value ``recorded`` (a resumed file's settings, or
    the settings of the run a shard belongs to) holds, else the rule: precision fp32;
    layout channels_last for convolutional models on a CPU (the faster one there:
    benchmarks/certify_throughput.py) and on
    accelerators under bf16, contiguous otherwise; chunk the whole block on accelerators,
    :data:`CPU_CHUNK` rows on a CPU; threads torch's current intra-op thread count (set to
    the recorded count when there is one). A value given that contradicts ``recorded`` is
    not refused here: the caller's settings comparison names it.
    """
    old = {k: recorded[k] for k in EXECUTION_KEYS if recorded and k in recorded}
    if recorded is not None and "precision" not in recorded:
        old = {**LEGACY_EXECUTION, **old}
    precision = check_precision(precision if precision is not None
                                else old.get("precision", "fp32"))
    layout = layout if layout is not None else cast("str | None", old.get("layout"))
    chunk = chunk if chunk is not None else cast("int | None", old.get("chunk"))
    threads = threads if threads is not None else cast("int | None", old.get("threads"))
    compile = bool(compile if compile is not None else old.get("compile", False))
    check_request(precision=precision, layout=layout, chunk=chunk, threads=threads)
    if layout is None:
        fast = device.type == "cpu" or precision == "bf16"
        layout = "channels_last" if fast and is_convolutional(model) else "contiguous"
    if chunk is None:
        chunk = CPU_CHUNK if device.type == "cpu" else batch_size
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    if precision == "bf16":
        warn_if_bf16_emulated(device)
    return Execution(precision, layout, min(chunk, batch_size), compile,
                     torch.get_num_threads())


def prepare_model(model: nn.Module, execution: Execution) -> nn.Module:
    """The module to call: ``model`` itself when its weights are already in the execution's
    layout, else a copy converted to it; compiled when asked. The user's module is never
    converted (it may be training, or shared with other code). Eval mode is the caller's
    business.

    The copy is made once per (model, layout) and kept while ``model`` lives; it is made
    again when any of the model's parameters or buffers has changed since (a new tensor, or
    an in-place update: torch's version counter), so a model trained between two calls is
    never voted with in its old state.
    """
    fmt = (torch.channels_last if execution.layout == "channels_last"
           else torch.contiguous_format)
    # Every convolution's weight, not the first one's: a weight with one input channel (a
    # LeNet's first layer on grey images) is contiguous in both formats, so the first says
    # nothing of the rest, which then ran unconverted (half the speed on MNIST, where the
    # pool's inputs do not carry the layout either).
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    prepared = model
    if any(not w.is_contiguous(memory_format=fmt) for w in weights):
        prepared = _converted(model, execution.layout, fmt)
    if execution.compile:
        return _compiled(prepared)
    return prepared


# model -> {layout: (the model's state signature when copied, the converted copy)}
_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, nn.Module]]] = (
    weakref.WeakKeyDictionary())


def _converted(model: nn.Module, layout: str, fmt: torch.memory_format) -> nn.Module:
    """``model``'s copy in memory format ``fmt``, cached (see :func:`prepare_model`)."""
    state = tuple((t.data_ptr(), t._version, t.dtype, str(t.device))
                  for t in itertools.chain(model.parameters(), model.buffers()))
    copies = _COPIES.setdefault(model, {})
    cached = copies.get(layout)
    if cached is None or cached[0] != state:
        copies.clear()  # a stale copy of the other layout is stale too
        copies[layout] = cached = (state, copy.deepcopy(model).to(memory_format=fmt))
    return cached[1]


@functools.lru_cache(maxsize=8)
def _compiled(model: nn.Module) -> nn.Module:
    return torch.compile(model)  # type: ignore[return-value]


def cpu_bf16_support() -> str:
    """What this CPU offers bf16 matrix products: "amx" (AMX tiles, e.g. Intel Sapphire
    Rapids), "avx512_bf16" (vector dot products only, e.g. AMD Zen 4/5) or "none" (bf16 is
    emulated in fp32 and slower than fp32)."""
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    return "none"


def warn_if_bf16_emulated(device: torch.device) -> None:
    """One line on stderr when bf16 has no hardware support on this CPU (it then runs, but
    slower than fp32): never silently slower."""
    if device.type == "cpu" and cpu_bf16_support() == "none":
        _warn_once("smoothmix: this CPU has neither AMX nor AVX-512-BF16, so bf16 is "
                   "emulated and slower than fp32; use --precision fp32")


@functools.cache
def _warn_once(message: str) -> None:
    print(message, file=sys.stderr)


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    # No /proc (macOS, Windows): torch's own dispatch level is the best hint it gives.
    capability = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")())
    return frozenset({"avx512_bf16"}) if "BF16" in capability.upper() else frozenset()


def describe_cpu() -> str:
    """The CPU model and its bf16 support, for benchmark and result headers."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} (bf16: {cpu_bf16_support()})"
