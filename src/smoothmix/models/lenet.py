"""LeNet for MNIST as in the published experiments (docs/MATH.md §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeNet"]


class LeNet(nn.Module):
    """conv 1→20 5×5, pool; conv 20→50 5×5, pool; fc 800→500; fc 500→classes (~431k params).

    Attribute names (conv1, conv2, fc1, fc2) match the reference checkpoints' keys.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
