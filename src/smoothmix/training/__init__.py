"""Training: the method-agnostic loop, its configuration, the published presets and the
high-level :func:`train` that ``smoothmix train`` calls.

* :func:`train` — by name (dataset/arch/method/preset) or with your own ``model=`` and
  ``train_set=``/``test_set=``;
* :func:`fit` — the loop itself, for any ``nn.Module``, any dataset and any method object;
* :class:`TrainConfig` — optimiser, schedule and execution settings;
* :data:`PRESETS` / :func:`get_preset` — the published recipes (docs/MATH.md §3).
"""

from smoothmix.training.api import TrainSpec, resolve, train
from smoothmix.training.loop import LOG_NAME, TrainConfig, evaluate_noisy, fit
from smoothmix.training.presets import PRESETS, Preset, get_preset, list_presets

__all__ = [
    "LOG_NAME",
    "PRESETS",
    "Preset",
    "TrainConfig",
    "TrainSpec",
    "evaluate_noisy",
    "fit",
    "get_preset",
    "list_presets",
    "resolve",
    "train",
]
