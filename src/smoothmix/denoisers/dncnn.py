"""DnCNN, the denoiser of denoised smoothing (Salman et al., 2020), as denoiser kind "dncnn".

The paper's denoiser (their ``cifar_dncnn``/``imagenet_dncnn``, after Zhang et al., 2017):
``depth`` = 17 convolutions of 3x3 with ``width`` = 64 feature maps: conv + ReLU, then 15 x
(conv without bias + BatchNorm + ReLU), then a conv back to the image channels, and residual
learning: the network predicts the noise and the output is ``z - net(z)``. Orthogonal
initialisation, with the last convolution set to zero so that training starts from the
identity. (``cifar_dncnn_wide`` is the same with width 128.)

Ours differs in three ways:

* no BatchNorm (no normalisation layer at all). In train mode BatchNorm couples the images
  of a batch, and certification needs a denoiser that acts on each sample alone; in eval
  mode it is a per-channel affine map that the adjacent convolution can learn itself, so
  the middle convolutions keep their bias instead;
* the defaults are sized for MNIST on a CPU: depth 10, width 32 (about 75k parameters;
  the paper's 17 x 64 has about 0.56M); ``depth`` and ``width`` are settings;
* ``channels`` (1 for MNIST, 3 for CIFAR-10/ImageNet) is a setting; ``smoothmix train``
  fills it in from the dataset and the checkpoint records it in ``arch_kwargs``.

Input and output are images in [0, 1] pixel units, (N, C, H, W), of any H and W (3x3
convolutions with padding 1 keep the size). The output is not clipped: the classifier
behind it sees whatever the denoiser makes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smoothmix.checks import check_count
from smoothmix.denoisers.registry import DENOISERS

__all__ = ["DnCNN", "dncnn"]


class DnCNN(nn.Module):
    """Residual denoiser ``D(z) = z - net(z)``, ``net`` = ``depth`` 3x3 convolutions with
    ReLUs between them and no normalisation layer (see the module docstring)."""

    def __init__(self, channels: int, depth: int = 10, width: int = 32) -> None:
        super().__init__()
        self.channels = check_count("dncnn channels", channels)
        self.depth = check_count("dncnn depth", depth, minimum=2)
        self.width = check_count("dncnn width", width)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1, bias=False))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthogonal weights, zero biases, and a zero last layer: D starts as the identity
        (as in the paper's code), so the first steps do not destroy the image."""
        convs = [m for m in self.net if isinstance(m, nn.Conv2d)]
        for conv in convs:
            nn.init.orthogonal_(conv.weight)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        with torch.no_grad():
            convs[-1].weight.zero_()

    def forward(self, z: Tensor) -> Tensor:
        return z - self.net(z)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, depth={self.depth}, width={self.width}"


@DENOISERS.register("dncnn", description="DnCNN of Salman et al. (2020), no BatchNorm",
                    settings=("channels", "depth", "width"), paper={"depth": 17, "width": 64})
def dncnn(channels: int, depth: int = 10, width: int = 32) -> nn.Module:
    """A :class:`DnCNN` for images of ``channels`` channels (``depth`` convolutions of
    ``width`` feature maps; the paper: 17 and 64)."""
    return DnCNN(channels, depth, width)
