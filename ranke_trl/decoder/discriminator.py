"""The PatchGAN discriminator `Dis_ψ` of the Rank-GAN loss (METHOD.md, Eq. 6)."""

from __future__ import annotations

import math

import torch
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not pix2pix's BatchNorm: decoder batches are small (a few rollouts per rank), and batch statistics
    # would differ between real and fake batches and between ranks.
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """A pix2pix-style PatchGAN: strided 4x4 convs with LeakyReLU(0.2), then two stride-1 convs to a logit map.

    Args:
        in_channels: image channels (3).
        channels: width of the first layer; each strided layer doubles it, capped at 8x.
        num_layers: number of stride-2 convs; each halves the resolution (3 gives ~70 px receptive fields).

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

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)
