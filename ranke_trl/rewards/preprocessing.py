"""CLIP image preprocessing in torch, so that rewards stay differentiable with respect to the pixels.

open_clip's own transforms work on PIL images: they round to uint8 and cut the gradient. The function here
reproduces `open_clip.image_transform(size, is_train=False, ...)` on float tensors with torchvision's tensor ops,
which are differentiable and compute output sizes with the same rules as the PIL path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.functional as TF
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision.transforms import InterpolationMode

RESIZE_MODES = ("shortest", "longest", "squash")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _resized_size(height: int, width: int, target: tuple[int, int], resize_mode: str) -> tuple[int, int]:
    """The size open_clip's evaluation transform resizes an `height x width` image to, before cropping or padding."""
    if resize_mode == "squash":
        return target
    if resize_mode == "shortest" and target[0] == target[1]:
        # torchvision's `Resize(int)`: the short side to the target, the long side scaled and truncated.
        short, long = sorted((height, width))
        new_long = int(target[0] * long / short)
        return (target[0], new_long) if height <= width else (new_long, target[0])
    # open_clip's `ResizeKeepRatio`: the longest (or shortest) side fitted to the target, rounded.
    ratio_h, ratio_w = height / target[0], width / target[1]
    ratio = max(ratio_h, ratio_w) if resize_mode == "longest" else min(ratio_h, ratio_w)
    return round(height / ratio), round(width / ratio)


def _resize_like_pil(images: torch.Tensor, size: tuple[int, int], mode: InterpolationMode) -> torch.Tensor:
    """Resize in two passes, width then height, clamping to `[0, 1]` after each, as PIL does on uint8 images.

    Bicubic overshoots at edges. PIL saturates the overshoot at 0 and 255 after its horizontal pass as well as
    after the vertical one; a single 2-D resize would carry it into the second pass (up to 15/255 apart on noise).
    """
    out_h, out_w = size
    images = TF.resize(images, [images.shape[-2], out_w], interpolation=mode, antialias=True).clamp(0.0, 1.0)
    return TF.resize(images, [out_h, out_w], interpolation=mode, antialias=True).clamp(0.0, 1.0)


def clip_image_transform(
    images: torch.Tensor,
    image_size: int | Sequence[int] = 224,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Resize, crop or pad, and normalise images the way open_clip's evaluation transform does.

    Args:
        images: `(B, 3, H, W)` float in `[0, 1]`.
        image_size: the model's input size, an int or `(height, width)`.
        mean, std: per-channel normalisation, OpenAI's by default.
        resize_mode: as open_clip's `PreprocessCfg.resize_mode`:
            - `"shortest"` (standard CLIP): the short side to `image_size`, then a centre crop.
            - `"longest"` (HPSv2): the long side to `image_size`, then zero padding (black) to a centred square.
            - `"squash"`: straight to `image_size`, ignoring the aspect ratio.
        interpolation: `"bicubic"` or `"bilinear"`, always with antialiasing (as PIL does).

    Returns:
        `(B, 3, h, w)` normalised pixels (roughly `[-2, 2.2]`), differentiable with respect to `images`.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images of shape (B, 3, H, W), got {tuple(images.shape)}.")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"Unknown resize_mode {resize_mode!r}; expected one of {RESIZE_MODES}.")
    target = _pair(image_size)
    size = _resized_size(*images.shape[-2:], target, resize_mode)
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    images = _resize_like_pil(images.float(), size, mode)
    # Crops the resized short side ("shortest") or zero-pads the long side to a centred square ("longest").
    images = TF.center_crop(images, list(target))
    return TF.normalize(images, list(mean), list(std))
