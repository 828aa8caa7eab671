"""smoothmix: train and certify provably robust classifiers by randomized smoothing.

The names most users need are importable from here; everything else lives in the
obviously named submodules (``core``, ``certification``, ``analysis``, ``methods``,
``models``, ``checkpoint``, ``data``, ``training``, ``diagnostics``).
"""

from smoothmix.core import Smooth, certified_radius, clopper_pearson_lower
from smoothmix.errors import SmoothmixError

__version__ = "0.4.0"

__all__ = [
    "Smooth",
    "SmoothmixError",
    "certified_radius",
    "clopper_pearson_lower",
    "__version__",
]
