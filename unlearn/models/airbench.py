"""airbench: the small whitened conv net of the fast CIFAR-10 recipes [Jordan 2024, "94% on CIFAR-10 in 3.29
seconds on a single GPU"], written from the paper's description.

- A 2×2 convolution without padding whose filters whiten the 2×2 patches of the training images: the
  eigenvectors of the patch covariance scaled by 1/√(eigenvalue + 5e-4), each as a filter and its negative
  (2·C·4 = 24 filters for RGB), then GELU. The filters are fixed (a buffer); their bias trains.
- Three blocks of conv 3×3 → max-pool 2 → batch norm → GELU → conv 3×3 → batch norm → GELU, widths 64, 256, 256.
  Batch norm has no learnable scale (only a shift), momentum 0.6 in the paper's convention (running ← 0.6·running
  + 0.4·batch), eps 1e-12. Each convolution starts as the identity on its first in-channels (Dirac init).
- Max-pool 3 over the remaining 3×3 map, a linear layer without bias, and logits scaled by 1/9.

`init_from_data(x)` sets the whitening from (at most 5,000 of) the images a model is about to be trained on
(the harness calls it before training: the oracle is whitened with its own retain set, never with F).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.knobs import COUNT, POSITIVE, Range

WHITENING_EPS = 5e-4
WHITENING_IMAGES = 5000


class BatchNormNoScale(nn.BatchNorm2d):
    """Batch norm whose scale stays 1 (only the shift trains), as airbench has it."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)  # torch's momentum weighs the new batch
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = BatchNormNoScale(out_channels, momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = BatchNormNoScale(out_channels, momentum)
        for conv in (self.conv1, self.conv2):  # identity on the first in-channels, the rest as torch initialises
            with torch.no_grad():
                nn.init.dirac_(conv.weight[: conv.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirBench(nn.Module):
    knobs = {"num_classes": Range(2, integer=True), "in_channels": COUNT, "width1": COUNT, "width2": COUNT,
             "width3": COUNT, "bn_momentum": Range(0, 1, low_open=True, high_open=True), "scale": POSITIVE}

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width1: int = 64, width2: int = 256,
                 width3: int = 256, bn_momentum: float = 0.6, scale: float = 1 / 9):
        super().__init__()
        patch = in_channels * 2 * 2
        # Before `init_from_data`: the patch pixels themselves (identity whitening), each with its negative.
        identity = torch.eye(patch).view(patch, in_channels, 2, 2)
        self.register_buffer("whiten_weight", torch.cat([identity, -identity]))
        self.whiten_bias = nn.Parameter(torch.zeros(2 * patch))
        self.blocks = nn.Sequential(ConvGroup(2 * patch, width1, bn_momentum), ConvGroup(width1, width2, bn_momentum),
                                    ConvGroup(width2, width3, bn_momentum))
        self.head = nn.Linear(width3, num_classes, bias=False)
        self.scale = float(scale)

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Whitening filters from the 2×2 patches (stride 1) of the first 5,000 images of `x` (N, C, H, W)."""
        images = x[:WHITENING_IMAGES].float()
        c = images.shape[1]
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, c * 4).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + WHITENING_EPS)[:, None])
        # A patch row is flattened (channel, dy, dx): the layout of a conv filter.
        filters = filters.view(-1, c, 2, 2)
        self.whiten_weight.copy_(torch.cat([filters, -filters]).to(self.whiten_weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(F.conv2d(x, self.whiten_weight, self.whiten_bias))
        x = self.blocks(x)
        x = F.adaptive_max_pool2d(x, 1).flatten(1)  # the paper's max-pool 3 over the final 3×3 map
        return self.head(x) * self.scale
