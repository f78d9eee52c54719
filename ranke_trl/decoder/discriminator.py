"""The PatchGAN discriminator `Dis_ψ` of the Rank-GAN loss (METHOD.md, Eq. 6), and its receptive field."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not pix2pix's BatchNorm: decoder batches are small (a few rollouts per rank), and batch statistics
    # would differ between real and fake batches and between ranks.
    return nn.GroupNorm(math.gcd(32, channels), channels)


@dataclass(frozen=True)
class ReceptiveField:
    """The input window one output logit of a conv stack sees.

    Logit `(i, j)` sees rows `[i * stride - padding, i * stride - padding + size)` (and the same columns), clipped
    to the image; `size` and `padding` are in input pixels, `stride` is the product of the layers' strides.
    """

    size: int
    stride: int
    padding: int

    def window(self, index: int, side: int) -> range:
        """Input rows (or columns) in `[0, side)` that logit row (or column) `index` sees."""
        start = index * self.stride - self.padding
        return range(max(start, 0), min(start + self.size, side))


def receptive_field(net: nn.Module) -> ReceptiveField:
    """The receptive field of a stack of square convolutions, read from its `nn.Conv2d` layers in order.

    Only convolutions widen it. Normalisation layers are ignored: a GroupNorm's per-image statistics let every
    logit depend weakly on the whole image, but each logit's features are computed from this window alone.
    """
    size, stride, padding = 1, 1, 0
    for layer in net.modules():
        if isinstance(layer, nn.Conv2d):
            size += (layer.kernel_size[0] - 1) * layer.dilation[0] * stride
            padding += layer.padding[0] * stride
            stride *= layer.stride[0]
    return ReceptiveField(size, stride, padding)


class PatchDiscriminator(nn.Module):
    """A pix2pix-style PatchGAN: strided 4x4 convs with LeakyReLU(0.2), then two stride-1 convs to a logit map.

    Args:
        in_channels: image channels (3).
        channels: width of the first layer; each strided layer doubles it, capped at 8x.
        num_layers: number of stride-2 convs; each halves the resolution and roughly doubles the receptive field:
            1, 2, 3, 4, 5 layers see 16, 34, 70, 142, 286 px (`receptive_field`).

    Input (B, in_channels, H, W) in [-1, 1]; output (B, 1, h, w) real-vs-fake logits, one per patch
    (h = H / 2**num_layers - 2 for the default 4x4 kernels).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        if channels < 1 or num_layers < 1:
            raise ValueError(f"PatchDiscriminator needs channels, num_layers >= 1; got {channels}, {num_layers}.")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers):
            out = channels * min(2**i, 8)
            # No bias before a normalisation layer: it would be removed by the normalisation anyway.
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
            width = out
        out = channels * min(2**num_layers, 8)
        layers += [nn.Conv2d(width, out, 4, stride=1, padding=1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(out, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, args) -> "PatchDiscriminator":
        """Build from `RankEConfig.discriminator_channels` and `discriminator_layers`."""
        return cls(3, args.discriminator_channels, args.discriminator_layers)

    @property
    def receptive_field(self) -> ReceptiveField:
        """The input window each logit judges (70 px with the default 3 layers)."""
        return receptive_field(self.net)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)
