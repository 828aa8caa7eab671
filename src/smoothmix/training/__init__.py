"""Training: the method-agnostic loop, the run's two records, the published presets and the
high-level :func:`train` that ``smoothmix train`` calls.

* :func:`train` — by name (dataset/arch/method/preset) or with your own ``model=`` and
  ``train_set=``/``test_set=``;
* :class:`Recipe` — what decides the trained weights (data, network, method and options, σ,
  schedule, batch, seed, precision); :class:`Runtime` — how the run executes (device,
  compile, layout, workers, progress); :mod:`smoothmix.training.recipe`;
* :func:`fit` — the loop itself, for any ``nn.Module``, any dataset and any method object;
  :class:`Callback` — its hooks (evaluation, checkpoint and logs are callbacks,
  :mod:`smoothmix.training.callbacks`); :class:`ExecutionStrategy` — how a step executes
  (device, DDP, compile, bf16, CUDA graphs; :mod:`smoothmix.training.strategy`); the run
  folder and its checkpoint, saved and restored: :mod:`smoothmix.training.rundir`;
* :class:`TrainConfig` — the flat spelling of a Recipe and a Runtime (older API);
* :data:`PRESETS` / :func:`get_preset` — the published recipes (docs/MATH.md §3).
"""

from smoothmix.training.api import TrainSpec, resolve, train
from smoothmix.training.callbacks import Callback
from smoothmix.training.evaluation import evaluate_noisy
from smoothmix.training.loop import Run, TrainConfig, fit
from smoothmix.training.presets import PRESETS, Preset, get_preset, list_presets
from smoothmix.training.recipe import Recipe, Runtime
from smoothmix.training.rundir import LOG_NAME
from smoothmix.training.strategy import ExecutionStrategy

__all__ = [
    "LOG_NAME",
    "PRESETS",
    "Callback",
    "ExecutionStrategy",
    "Preset",
    "Recipe",
    "Run",
    "Runtime",
    "TrainConfig",
    "TrainSpec",
    "evaluate_noisy",
    "fit",
    "get_preset",
    "list_presets",
    "resolve",
    "train",
]
