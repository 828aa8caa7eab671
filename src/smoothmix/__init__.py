"""smoothmix: train and certify provably robust classifiers by randomized smoothing."""

__version__ = "0.1.0"
