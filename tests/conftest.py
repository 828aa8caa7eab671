"""Fixtures shared by several test modules (no test module imports from another; plain
helpers shared by several modules live in ``tests/helpers.py``).

Two tiers:

- ``pytest -m "not slow"``: the fast tier, for the edit-test loop (under 3 minutes on two
  cores). It keeps every unit and contract test, the exact soundness checks, and a smaller
  run (fewer trials, same assertions) of each Monte-Carlo study that keeps its power at that
  size; the studies whose power needs thousands of trials are slow only.
- ``pytest``: everything, what CI (``.ci/run``) and a release run. It adds the tests marked
  ``@pytest.mark.slow``: end-to-end runs (demo, reproduce, training to convergence), real
  subprocess and ``torchrun`` / gloo launches (SIGKILL and resume, process-level errors,
  2-process runs), and the full-size Monte-Carlo studies.

Mark a new test ``slow`` when it launches a process or takes more than a few seconds; give a
statistical study a small fast variant beside the full-size slow one. ``cuda`` marks the GPU
variant of a test (skipped without a GPU).
"""

from __future__ import annotations

import pytest
import torch
from helpers import Linear2
from torch import nn


@pytest.fixture(scope="session")
def mnist_model() -> tuple[nn.Module, object]:
    """A linear MNIST classifier trained for a second under sigma = 0.5 noise: right on most
    test images, wrong on some, which is what skip-wrong needs."""
    from smoothmix.data import load_dataset

    test = load_dataset("mnist", "test")  # trained on test images 1000+, evaluated below 1000
    x = test.images[1000:5000].float().div(255)
    y = test.labels[1000:5000]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        batch = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(net(x[batch] + 0.5 * torch.randn_like(x[batch])),
                                           y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), test


@pytest.fixture(scope="session")
def linear2() -> type[Linear2]:
    """The class of a linear classifier whose smoothed radius is known in closed form."""
    return Linear2
