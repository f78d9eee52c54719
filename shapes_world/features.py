"""ShapesWorld's feature network: a small CNN that reads which coloured shape sits in which grid cell.

Inception (for FID) and VGG (for LPIPS) need ImageNet weights that offline machines lack, and they know nothing of
ShapesWorld anyway. ShapesWorld has its own ground truth, so a classifier trained on it yields features that encode
exactly what its prompts talk about. One trained network serves twice:

- `ShapesFIDFeatures`: its penultimate features, the feature space of "ShapesFID" (`evaluation.fid.FIDMetric`).
- `perceptual.ShapesPerceptualDistance`: an LPIPS-style distance on its conv activations, the VQGAN's perceptual loss.

The classifier predicts, for each cell of the 2x2 scene grid, "empty" or one of colour x kind (`CELL_CLASSES`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .scenes import Scene
from .vocab import CELL, COLORS, GRID, KINDS

#: what a grid cell can hold: nothing, or one shape of a colour and a kind
CELL_CLASSES: tuple[str, ...] = ("empty", *(f"{color} {kind}" for color in COLORS for kind in KINDS))


def cell_targets(scene: Scene) -> torch.LongTensor:
    """The class index in `CELL_CLASSES` of each grid cell (row-major), shape (GRID * GRID,)."""
    targets = torch.zeros(GRID * GRID, dtype=torch.long)
    for shape in scene.shapes:
        # A shape's centre never leaves its cell (scenes.py jitters it by less than half the slack).
        cell = (shape.y // CELL) * GRID + shape.x // CELL
        targets[cell] = CELL_CLASSES.index(f"{shape.color} {shape.kind}")
    return targets


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    """A stride-2 conv and a stride-1 conv, each with GroupNorm and SiLU: halves the resolution."""
    groups = math.gcd(8, channels_out)
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1),
        nn.GroupNorm(groups, channels_out),
        nn.SiLU(),
        nn.Conv2d(channels_out, channels_out, 3, padding=1),
        nn.GroupNorm(groups, channels_out),
        nn.SiLU(),
    )


class ShapesAttributeNet(nn.Module, PyTorchModelHubMixin, library_name="ranke_trl"):
    """Per-cell attribute classifier of ShapesWorld images; `save_pretrained` / `from_pretrained` like a Hub model.

    Args:
        widths: channels of the stride-2 blocks; each halves the resolution (64 px -> 4 px for four blocks).
        num_features: width of the penultimate layer (the ShapesFID feature dimension).
        image_size: input side in pixels; inputs of another size are resized to it.
        num_cells, num_classes: the grid cells and classes per cell (`CELL_CLASSES`).

    `forward(pixels)` takes (B, 3, H, W) in [-1, 1] and returns logits (B, num_cells, num_classes).
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 128),
        num_features: int = 128,
        image_size: int = 64,
        num_cells: int = GRID * GRID,
        num_classes: int = len(CELL_CLASSES),
    ):
        super().__init__()
        if image_size % 2 ** len(widths):
            raise ValueError(f"image_size={image_size} must be divisible by 2**len(widths)={2 ** len(widths)}.")
        self.image_size, self.num_features = image_size, num_features
        self.num_cells, self.num_classes = num_cells, num_classes
        channels = [3, *widths]
        self.blocks = nn.ModuleList(_block(a, b) for a, b in zip(channels[:-1], channels[1:]))
        final_side = image_size // 2 ** len(widths)
        # Flatten, not pool: which cell a shape sits in is the point, so positions must survive to the head.
        self.to_features = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * final_side**2, num_features), nn.SiLU())
        self.head = nn.Linear(num_features, num_cells * num_classes)

    def activations(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The output of every block, [(B, widths[i], H / 2**(i+1), W / 2**(i+1))], for pixels in [-1, 1].

        Convolutions only, so any size divisible by 2**len(widths) works (the VQGAN trains on crops).
        """
        maps = []
        for block in self.blocks:
            pixels = block(pixels)
            maps.append(pixels)
        return maps

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, num_features) of pixels (B, 3, H, W) in [-1, 1], resized to `image_size`."""
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size,) * 2, mode="bilinear", antialias=True)
        return self.to_features(self.activations(pixels)[-1])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels)).view(-1, self.num_cells, self.num_classes)


class ShapesFIDFeatures(nn.Module):
    """ShapesFID's feature extractor for `FIDMetric`: (B, 3, H, W) in [0, 1] -> (B, num_features), frozen."""

    def __init__(self, net: ShapesAttributeNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.num_features = net.num_features
        self.name = f"ShapesFID (ShapesAttributeNet penultimate, {net.num_features}-d)"

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.net.features(images01.float() * 2 - 1)


def augment(
    pixels: torch.Tensor, generator: torch.Generator, max_sigma: float = 1.5, noise: float = 0.05
) -> torch.Tensor:
    """Blur half the batch (one Gaussian sigma in (0, max_sigma] per call) and add Gaussian noise; [-1, 1] in and out.

    Decoded images are blurred and noisy renders, so the classifier, and with it ShapesFID, must read those too.
    """
    sigma = float(torch.rand((), generator=generator)) * max_sigma + 1e-3
    blurred = TF.gaussian_blur(pixels, kernel_size=[5, 5], sigma=[sigma, sigma])
    chosen = torch.rand(pixels.size(0), 1, 1, 1, generator=generator) < 0.5
    pixels = torch.where(chosen, blurred, pixels)
    return (pixels + noise * torch.randn(pixels.shape, generator=generator)).clamp(-1, 1)


def cell_accuracy(net: ShapesAttributeNet, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of grid cells classified right; `images` uint8 (M, 3, H, W), `targets` (M, num_cells)."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = net(images[start : start + batch_size].float() / 127.5 - 1)
            correct += int((logits.argmax(-1) == targets[start : start + batch_size]).sum())
    return correct / targets.numel()


def train_attribute_net(
    images: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
    show_progress: bool = True,
    desc: str = "feature net: training",
    **net_kwargs,
) -> tuple[ShapesAttributeNet, list[float]]:
    """Train a `ShapesAttributeNet` with cross-entropy on augmented renders.

    Args:
        images: uint8 (M, 3, 64, 64) world renders. targets: (M, num_cells) `cell_targets` of their scenes.
        steps, batch_size, learning_rate: AdamW with a cosine decay to zero.
        show_progress, desc: the progress bar and its label.

    Returns:
        The net in eval mode, frozen, and the per-step training losses.
    """
    if len(images) != len(targets):
        raise ValueError(f"Got {len(images)} images but {len(targets)} target rows; pass one row per image.")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = ShapesAttributeNet(image_size=images.shape[-1], **net_kwargs).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    losses = []
    for _ in tqdm(range(steps), desc=desc, disable=not show_progress):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        pixels = augment(images[index].float() / 127.5 - 1, generator)
        loss = F.cross_entropy(net(pixels).flatten(0, 1), targets[index].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return net.eval().requires_grad_(False), losses


def render_targets(scenes: Sequence[Scene]) -> torch.LongTensor:
    """`cell_targets` of each scene, stacked: (M, GRID * GRID)."""
    return torch.stack([cell_targets(scene) for scene in scenes]) if scenes else torch.zeros(0, GRID * GRID).long()


__all__ = [
    "CELL_CLASSES",
    "ShapesAttributeNet",
    "ShapesFIDFeatures",
    "augment",
    "cell_accuracy",
    "cell_targets",
    "render_targets",
    "train_attribute_net",
]
