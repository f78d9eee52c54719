"""ShapesEval: GenEval for ShapesWorld, exact on clean renders and tolerant of a VQ decoder's blur.

Detection (`ShapesEval.detect`) replaces GenEval's object detector with image processing:
1. Each pixel takes the nearest palette colour (background included) if it lies within `color_margin` of it, else
   no colour; blended edge pixels then belong to nothing rather than to a wrong colour.
2. Each colour's pixels, holes filled, split into 8-connected components (`scipy.ndimage`); components under
   `min_area_fraction` of the image are noise.
3. A component's kind comes from blur-tolerant geometry: its box's aspect ratio, how far its centroid sits below the
   box centre, its fill ratio and diagonal extent (see `shape_features` and `classify_kind`).

It is exact (every clean render judged correct) for renders of 48 px and more; at 32 px small circles and squares
are a few pixels wide and no longer tell apart.

Checks (`ShapesEval.evaluate`) follow GenEval's rules on the detections: every `include` entry needs `count` objects
of its class (and colour); an `exclude` entry forbids `count` or more; a `position` entry needs the relation between
the largest objects of the two entries, by GenEval's centroid-offset rule.

The reward (`shapes_eval_reward`) is the mean of the per-check scores, so it gives partial credit and equals 1.0
exactly when the image is correct.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .prompts import as_metadata
from .vocab import BACKGROUND, COLORS, FAMILIES, PALETTE

ImageLike = Image.Image | np.ndarray | torch.Tensor


@dataclass
class DetectedShape:
    """One detected object: its kind ("unknown" when no kind fits), colour, area in pixels, centroid (x, y) and
    inclusive bounding box (x0, y0, x1, y1) in pixels, and the geometric features its kind was read from."""

    kind: str
    color: str
    area: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    features: dict[str, float]


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


def shape_features(component: np.ndarray) -> dict[str, float]:
    """Blur-tolerant geometry of one component, given as a boolean mask (h, w) cropped to its bounding box.

    Returns:
        aspect: box width / height (a rectangle's is 2, the other kinds' 1).
        fill: area / box area, in (0, 1] (square 1, circle pi/4, triangle 1/2).
        diagonal: the component's extent along the diagonals over its extent along the axes (square sqrt 2,
            circle 1); blur rounds a square's corners but leaves this well above a circle's.
        drop: how far the centroid sits below the box centre, as a fraction of the height (triangle 1/6, others 0).
        top_share: area in the top half over area in the bottom half (triangle 1/3, others 1).
    """
    height, width = component.shape
    rows, cols = np.nonzero(component)
    area = len(rows)
    y, x = rows - (height - 1) / 2, cols - (width - 1) / 2  # pixel centres about the box centre
    # A pixel reaches 1/sqrt(2) beyond its centre along a diagonal, and the box half-size includes half a pixel.
    diagonal = (np.maximum(np.abs(x + y), np.abs(x - y)).max() + 1) / np.sqrt(2) / ((height + width) / 4)
    top = (y < 0).sum() + 0.5 * (y == 0).sum()
    return {
        "aspect": width / height,
        "fill": area / (height * width),
        "diagonal": float(diagonal),
        "drop": float(y.mean() / height),
        "top_share": float(top / max(area - top, 1.0)),
    }


def classify_kind(features: dict[str, float]) -> str:
    """The kind of a component from its `shape_features`, or "unknown" for blobs no kind fits.

    Each threshold separates the kinds' feature ranges measured over clean renders, Gaussian blur up to sigma 1.5 px,
    down- and up-sampling by 64 -> 24 -> 64 px, and blur plus noise; there, each feature drifts toward the others'.
    """
    if features["fill"] < 0.45:  # scraps, streaks and noise; the sparsest shape, a triangle, fills half its box
        return "unknown"
    if 1.45 <= features["aspect"] <= 4.0:
        return "rectangle"
    if not 1 / 1.35 <= features["aspect"] <= 1.35:
        return "unknown"
    if features["drop"] > 0.07 or features["top_share"] < 0.7:
        return "triangle"
    # Blur lowers a square's fill and diagonal together and raises a circle's fill; their sum stays apart.
    return "square" if features["fill"] + 0.5 * features["diagonal"] >= 1.45 else "circle"


def _relations(a: DetectedShape, b: DetectedShape, threshold: float = 0.1) -> set[str]:
    """GenEval's relations of `a` to `b`: the centroid offset, shrunk on each axis by `threshold` times the summed
    box sizes, must point within 60 degrees of an axis."""
    offset = np.subtract(a.centroid, b.centroid)
    dims = np.add(a.bbox[2:], b.bbox[2:]) - np.add(a.bbox[:2], b.bbox[:2]) + 2  # summed widths and heights
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
                y0, x0 = slices[0].start, slices[1].start
                features = shape_features(component)
                found.append(
                    DetectedShape(
                        kind=classify_kind(features),
                        color=color,
                        area=area,
                        centroid=(float(x0 + cols.mean()), float(y0 + rows.mean())),
                        bbox=(x0, y0, slices[1].stop - 1, slices[0].stop - 1),
                        features=features,
                    )
                )
        return sorted(found, key=lambda shape: -shape.area)

    def evaluate(self, image: ImageLike, spec: str | dict[str, Any]) -> dict[str, Any]:
        """Check one image against a prompt, its metadata dict, or the metadata's JSON string.

        Returns a JSON-serialisable dict: `tag`, `prompt`, `correct` (bool: every check passed, GenEval's verdict),
        `score` (float in [0, 1]: the mean check score; 1.0 iff `correct`), `checks` (one per requirement, each
        with `name`, `score`, `passed` and `detail`), `reason` (the failed checks' details) and `detected`.
        """
        meta = as_metadata(spec)
        detected = self.detect(image)
        checks = self._checks(meta, detected)
        return {
            "tag": meta.get("tag", "unknown"),
            "prompt": meta.get("prompt", ""),
            "correct": all(check["passed"] for check in checks),
            "score": float(np.mean([check["score"] for check in checks])) if checks else 0.0,
            "checks": checks,
            "reason": "; ".join(check["detail"] for check in checks if not check["passed"]),
            "detected": [
                {"class": d.kind, "color": d.color, "area": d.area, "centroid": list(d.centroid)} for d in detected
            ],
        }

    def evaluate_batch(
        self, images: Sequence[ImageLike] | torch.Tensor | np.ndarray, specs: Sequence[str | dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """`evaluate` over pairs; `images` is a sequence of images or a batch (B, 3, H, W) / (B, H, W, 3)."""
        if len(images) != len(specs):
            raise ValueError(f"Got {len(images)} images but {len(specs)} prompts/metadata; pass one per image.")
        return [self.evaluate(image, spec) for image, spec in zip(images, specs)]

    def _checks(self, meta: dict[str, Any], detected: list[DetectedShape]) -> list[dict[str, Any]]:
        """One check per requirement of `meta`, each scored in [0, 1] and passed at 1."""

        def matching(entry):  # largest first: area stands in for a detector's confidence
            return [d for d in detected if d.kind == entry["class"] and entry.get("color", d.color) == d.color]

        def check(name, score, detail):
            return {"name": name, "score": float(score), "passed": bool(score >= 1.0), "detail": detail}

        include, exclude, checks = meta["include"], list(meta.get("exclude", [])), []
        for entry in include:
            kind, wanted, color = entry["class"], entry["count"], entry.get("color")
            # GenEval writes "exactly n" as include n plus exclude n + 1; score that pair as one graded count.
            exact = [e for e in exclude if (e["class"], e.get("color"), e["count"]) == (kind, color, wanted + 1)]
            if exact:
                exclude.remove(exact[0])
                found = len(matching(exact[0]))
                score = max(0.0, 1.0 - abs(found - wanted) / wanted)
                checks.append(check(f"count {kind}", score, f"expected exactly {wanted} {kind}, found {found}"))
            else:
                found = sum(d.kind == kind for d in detected)
                score = min(found, wanted) / wanted
                checks.append(check(f"count {kind}", score, f"expected {wanted} {kind}, found {found}"))
            if color is not None:
                found = len(matching(entry))
                score = min(found, wanted) / wanted
                checks.append(check(f"color {kind}", score, f"expected {wanted} {color} {kind}, found {found}"))
            if "position" in entry:
                relation, other = entry["position"]
                target = include[other]
                subjects = matching(entry)[:wanted]
                targets = [d for d in matching(target) if all(d is not s for s in subjects)][: target["count"]]
                holds = bool(subjects and targets) and all(
                    relation in _relations(s, t, self.position_threshold)
                    for s, t in itertools.product(subjects, targets)
                )
                detail = f"expected {kind} {relation} {target['class']}"
                checks.append(check(f"position {kind}", float(holds), detail))
        for entry in exclude:
            found, limit = len(matching(entry)), entry["count"]
            detail = f"expected fewer than {limit} {entry['class']}, found {found}"
            checks.append(check(f"exclude {entry['class']}", float(found < limit), detail))
        return checks


def summarize(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """GenEval's summary of `evaluate` results.

    Returns:
        overall: the mean over prompt families of their accuracy (GenEval's headline number), in [0, 1].
        per_family: accuracy (fraction `correct`) per tag, in `vocab.FAMILIES` order.
        num_images: images per tag.
        image_accuracy: the fraction of all images that are correct.
        mean_score: the mean partial-credit `score`.
    """
    results = list(results)
    if not results:
        raise ValueError("summarize() got no results; evaluate at least one image first.")
    by_tag: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_tag[result["tag"]].append(result)
    order = [tag for tag in FAMILIES if tag in by_tag] + sorted(set(by_tag) - set(FAMILIES))
    per_family = {tag: float(np.mean([r["correct"] for r in by_tag[tag]])) for tag in order}
    return {
        "overall": float(np.mean(list(per_family.values()))),
        "per_family": per_family,
        "num_images": {tag: len(by_tag[tag]) for tag in order},
        "image_accuracy": float(np.mean([r["correct"] for r in results])),
        "mean_score": float(np.mean([r["score"] for r in results])),
    }


# --- the reward ----------------------------------------------------------------------------------------------------


def _prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    """The caption in a plain prompt or in a conversation's last user message (text parts joined)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if message.get("role") == "user":
                content = message["content"]
                if isinstance(content, list):
                    content = " ".join(part["text"] for part in content if part.get("type") == "text")
                return content
    raise TypeError(f"Expected a prompt string or a list of chat messages with a 'user' turn, got {prompt!r}.")


def make_shapes_eval_reward(evaluator: ShapesEval | None = None) -> Callable[..., list[float]]:
    """A TRL reward function `shapes_eval(prompts, completions, metadata=None, **kwargs) -> list[float]`.

    - `completions`: images, each a float tensor (3, H, W) in [0, 1] (or a batch (B, 3, H, W)); any `ImageLike`.
    - `prompts`: captions, or conversations whose last user message is the caption.
    - `metadata`: optional, the dataset's `metadata` column (JSON strings, one per completion); preferred over
      parsing the prompt when given. Other dataset columns arrive through `**kwargs` and are ignored.

    Each reward is the mean of the image's check scores (see `ShapesEval.evaluate`), a float in [0, 1] that gives
    partial credit (a red square for "a red circle" earns 0.0, a blue circle 0.5) and is 1.0 exactly when GenEval's
    all-or-nothing verdict is "correct". It is a plain function of pixels: no module, no gradient.
    """
    evaluator = evaluator if evaluator is not None else ShapesEval()

    def shapes_eval(prompts, completions, metadata=None, **kwargs) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts for {len(completions)} completions; pass one per image.")
        if metadata is None:
            metadata = [None] * len(completions)
        elif len(metadata) != len(completions):
            raise ValueError(f"Got {len(metadata)} metadata entries for {len(completions)} completions.")
        specs = [meta if meta is not None else _prompt_text(p) for p, meta in zip(prompts, metadata)]
        return [result["score"] for result in evaluator.evaluate_batch(completions, specs)]

    return shapes_eval


shapes_eval_reward = make_shapes_eval_reward()
