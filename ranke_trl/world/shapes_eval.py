"""ShapesEval: GenEval for ShapesWorld, exact on clean renders and tolerant of a VQ decoder's blur.

Detection (`ShapesEval.detect`) replaces GenEval's object detector with image processing:
1. Each pixel takes the nearest palette colour (background included) if it lies within `color_margin` of it, else
   no colour; blended edge pixels then belong to nothing rather than to a wrong colour.
2. Each colour's pixels, holes filled, split into 8-connected components; components under `min_area` are noise.
3. A component's kind comes from its geometry: its bounding box's fill ratio and how far its centroid sits below the
   box centre (see `classify_kind`).

Checks (`ShapesEval.evaluate`) follow GenEval's rules on the detections: every `include` entry needs `count` objects
of its class (and colour); an `exclude` entry forbids `count` or more; a `position` entry needs the relation between
the largest objects of the two entries, by GenEval's centroid-offset rule.

The reward (`shapes_eval_reward`) is the mean of the per-check scores, so it gives partial credit and equals 1.0
exactly when the image is correct.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .prompts import as_metadata
from .vocab import BACKGROUND, COLORS, PALETTE

ImageLike = Image.Image | np.ndarray | torch.Tensor


@dataclass
class DetectedShape:
    """One detected object: kind ("unknown" if no kind fits), colour, area in pixels, centroid (x, y) and bbox
    (x0, y0, x1, y1) in pixels (inclusive), and the two geometric features its kind was read from."""

    kind: str
    color: str
    area: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    fill: float
    centroid_drop: float


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """An RGB image (H, W, 3) uint8 from a PIL image, an array (H, W, 3) or (3, H, W), or a tensor (3, H, W).

    Float inputs are read as [0, 1] and clamped (a decoder's [-1, 1] output must be mapped to [0, 1] first);
    uint8 inputs as [0, 255].
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().to("cpu")
        image = image.float().numpy() if image.dtype != torch.uint8 else image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"Expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}.")
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"Expected one RGB image shaped (3, H, W) or (H, W, 3), got shape {tuple(image.shape)}.")
    if image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def classify_kind(fill: float, centroid_drop: float, aspect: float) -> str:
    """The shape kind of a component from its bounding-box fill ratio (area / box area, in (0, 1]), its centroid's
    drop below the box centre as a fraction of the box height (a triangle's is 1/6, the others' 0) and the box's
    aspect ratio (long side / short side, >= 1). Returns "unknown" for blobs no kind fits."""
    if aspect > 1.4 or fill < 0.3:  # merged shapes, streaks and scraps are no single shape
        return "unknown"
    if centroid_drop > 0.085:
        return "triangle" if fill < 0.72 else "unknown"
    if fill >= 0.89:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "diamond"


def _relations(a: DetectedShape, b: DetectedShape, threshold: float = 0.1) -> set[str]:
    """GenEval's relations of `a` to `b`: the centroid offset, shrunk on each axis by `threshold` times the summed
    box sizes, must point within 60 degrees of an axis."""
    offset = np.subtract(a.centroid, b.centroid)
    dims = np.array([a.bbox[2] - a.bbox[0] + 1 + b.bbox[2] - b.bbox[0] + 1, a.bbox[3] - a.bbox[1] + 1 + b.bbox[3] - b.bbox[1] + 1])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


class ShapesEval:
    """Scores images against ShapesWorld prompts, GenEval-style.

    Args:
        color_margin: a pixel belongs to a palette colour only within this fraction of the smallest distance between
            two palette colours (background included); under 0.5, so no pixel belongs to two.
        min_area_fraction: components smaller than this fraction of the image are ignored (VQ speckle, edge scraps).
        position_threshold: GenEval's slack on centroid offsets, as a fraction of the two objects' summed sizes.
    """

    def __init__(self, color_margin: float = 0.4, min_area_fraction: float = 0.008, position_threshold: float = 0.1):
        if not 0.0 < color_margin < 0.5:
            raise ValueError(f"color_margin={color_margin} must lie in (0, 0.5) so no pixel is near two colours.")
        self.names = ("background", *COLORS)
        self.palette = np.array([BACKGROUND, *(PALETTE[c] for c in COLORS)], dtype=np.float32)  # (C + 1, 3)
        gaps = np.linalg.norm(self.palette[:, None] - self.palette[None], axis=-1)
        self.max_distance = color_margin * gaps[~np.eye(len(gaps), dtype=bool)].min()
        self.min_area_fraction = min_area_fraction
        self.position_threshold = position_threshold

    def color_labels(self, image: ImageLike) -> np.ndarray:
        """Per-pixel colour index (H, W) into `self.names` (0 is the background), or -1 for no colour."""
        rgb = to_rgb_uint8(image).astype(np.float32)
        distance = np.linalg.norm(rgb[:, :, None, :] - self.palette, axis=-1)  # (H, W, C + 1)
        labels = distance.argmin(-1)
        return np.where(distance.min(-1) <= self.max_distance, labels, -1)

    def detect(self, image: ImageLike) -> list[DetectedShape]:
        """All objects in `image`, largest first."""
        labels = self.color_labels(image)
        min_area = max(4, round(self.min_area_fraction * labels.size))
        found = []
        for index, color in enumerate(self.names[1:], start=1):
            mask = labels == index
            if mask.sum() < min_area:
                continue
            # Noise leaves uncoloured pixels inside a shape; filling holes keeps its area and fill ratio.
            components, _ = ndimage.label(ndimage.binary_fill_holes(mask), structure=np.ones((3, 3)))
            for label, slices in enumerate(ndimage.find_objects(components), start=1):
                component = components[slices] == label
                area = int(component.sum())
                if area < min_area:
                    continue
                rows, cols = np.nonzero(component)
                height, width = component.shape
                cy, cx = rows.mean(), cols.mean()
                fill = area / (height * width)
                drop = (cy - (height - 1) / 2) / height
                kind = classify_kind(fill, drop, max(height, width) / min(height, width))
                y0, x0 = slices[0].start, slices[1].start
                found.append(
                    DetectedShape(
                        kind, color, area, (float(x0 + cx), float(y0 + cy)),
                        (x0, y0, x0 + width - 1, y0 + height - 1), float(fill), float(drop),
                    )
                )
        return sorted(found, key=lambda shape: -shape.area)
