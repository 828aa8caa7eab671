"""Training: the method-agnostic loop, its configuration, the published presets and the
high-level :func:`train` that ``smoothmix train`` calls.

* :func:`train` — by name (dataset/arch/method/preset) or with your own ``model=`` and
  ``train_set=``/``test_set=``;
* :func:`fit` — the loop itself, for any ``nn.Module``, any dataset and any method object;
  :class:`Callback` — its hooks (evaluation, checkpoint and logs are callbacks,
  :mod:`smoothmix.training.callbacks`); :class:`ExecutionStrategy` — how a step executes
  (device, DDP, compile, bf16, CUDA graphs; :mod:`smoothmix.training.strategy`);
* :class:`TrainConfig` — optimiser, schedule and execution settings;
* :data:`PRESETS` / :func:`get_preset` — the published recipes (docs/MATH.md §3).
"""

from smoothmix.training.api import TrainSpec, resolve, train
from smoothmix.training.callbacks import Callback
from smoothmix.training.loop import LOG_NAME, Run, TrainConfig, evaluate_noisy, fit
from smoothmix.training.presets import PRESETS, Preset, get_preset, list_presets
from smoothmix.training.strategy import ExecutionStrategy

__all__ = [
    "LOG_NAME",
    "PRESETS",
    "Callback",
    "ExecutionStrategy",
    "Preset",
    "Run",
    "TrainConfig",
    "TrainSpec",
    "evaluate_noisy",
    "fit",
    "get_preset",
    "list_presets",
    "resolve",
    "train",
]
