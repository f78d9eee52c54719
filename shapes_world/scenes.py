"""ShapesWorld scenes: sampling a scene for a prompt family, and rendering it.

A scene is 1 to 4 flat-coloured shapes on a white background, each in its own cell of a 2x2 grid with integer
jitter, so shapes never overlap and keep `GAP` canvas units apart. Geometry is stored on the canonical 64-unit canvas
and rendered at any size without anti-aliasing: a pixel takes a shape's colour iff its centre lies inside the shape,
which keeps renders exact and byte-identical across runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import prompts
from .vocab import BACKGROUND, CANVAS, CELL, COLORS, COUNTS, FAMILIES, GAP, GRID, KINDS, PALETTE, RELATIONS, SIZES


@dataclass(frozen=True)
class ShapeSpec:
    """One shape: its kind, colour and size names, and its centre (x right, y down) in canvas units [0, 64)."""

    kind: str
    color: str
    size: str
    x: int
    y: int


@dataclass(frozen=True)
class Scene:
    """A set of shapes with the caption's GenEval-style metadata (`metadata["prompt"]`, `metadata["tag"]`)."""

    shapes: tuple[ShapeSpec, ...]
    metadata: dict[str, Any]

    @property
    def prompt(self) -> str:
        return self.metadata["prompt"]

    @property
    def tag(self) -> str:
        return self.metadata["tag"]

    def key(self) -> str:
        """A stable hex digest of the scene's caption and layout (Python's `hash` is salted per process)."""
        text = repr((self.prompt, sorted((s.kind, s.color, s.size, s.x, s.y) for s in self.shapes)))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# --- sampling ----------------------------------------------------------------------------------------------------


def _place(rng: np.random.Generator, cell: int, kind: str, color: str) -> ShapeSpec:
    """A shape of random size in grid cell `cell` (row-major), jittered as far as `GAP` allows."""
    size = str(rng.choice(list(SIZES)))
    jitter = (CELL - SIZES[size] - GAP) // 2  # half the slack: shapes in neighbouring cells stay >= GAP apart
    row, col = divmod(cell, GRID)
    x, y = (int(CELL * c + CELL // 2 + rng.integers(-jitter, jitter + 1)) for c in (col, row))
    return ShapeSpec(kind, color, size, x, y)


def _kinds(rng: np.random.Generator, n: int) -> list[str]:
    return [str(k) for k in rng.choice(KINDS, size=n, replace=False)]


def _colors(rng: np.random.Generator, n: int, distinct: bool = False) -> list[str]:
    return [str(c) for c in rng.choice(COLORS, size=n, replace=not distinct)]


def sample_scene(rng: np.random.Generator, tag: str) -> Scene:
    """Sample a scene of prompt family `tag` (one of `vocab.FAMILIES`) and its caption.

    Objects a caption leaves unconstrained (colour in `single_object`, `two_object`, `counting` and `position`;
    size and place everywhere) are drawn uniformly. `position` scenes put the pair in one row ("left of",
    "right of") or one column ("above", "below") so the relation is unambiguous.
    """
    cells = [int(c) for c in rng.permutation(GRID * GRID)]
    if tag == "single_object" or tag == "colors":
        (kind,), (color,) = _kinds(rng, 1), _colors(rng, 1)
        shapes = [_place(rng, cells[0], kind, color)]
        meta = prompts.single_object(kind) if tag == "single_object" else prompts.colors(kind, color)
    elif tag == "two_object" or tag == "color_attr":
        kinds, cols = _kinds(rng, 2), _colors(rng, 2, distinct=tag == "color_attr")
        shapes = [_place(rng, cell, k, c) for cell, k, c in zip(cells, kinds, cols)]
        if tag == "two_object":
            meta = prompts.two_object(*kinds)
        else:
            meta = prompts.color_attr(cols[0], kinds[0], cols[1], kinds[1])
    elif tag == "counting":
        count = int(rng.choice(COUNTS))
        (kind,) = _kinds(rng, 1)
        shapes = [_place(rng, cell, kind, c) for cell, c in zip(cells[:count], _colors(rng, count))]
        meta = prompts.counting(kind, count)
    elif tag == "position":
        relation = str(rng.choice(list(RELATIONS)))
        line = int(rng.integers(GRID))  # the shared row or column
        first, second = (line * GRID, line * GRID + 1) if relation in ("left of", "right of") else (line, GRID + line)
        subject_cell, object_cell = (first, second) if relation in ("left of", "above") else (second, first)
        kinds, cols = _kinds(rng, 2), _colors(rng, 2)
        shapes = [_place(rng, subject_cell, kinds[0], cols[0]), _place(rng, object_cell, kinds[1], cols[1])]
        meta = prompts.position(kinds[0], relation, kinds[1])
    else:
        raise ValueError(f"Unknown prompt family {tag!r}; expected one of {FAMILIES}.")
    return Scene(tuple(shapes), meta)


# --- rendering ---------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _pixel_centres(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u, v), each (H, W), in canvas units."""
    centres = (np.arange(image_size, dtype=np.float64) + 0.5) * (CANVAS / image_size)
    u, v = np.meshgrid(centres, centres)
    return u, v


def shape_mask(shape: ShapeSpec, image_size: int = 64) -> np.ndarray:
    """Boolean mask (image_size, image_size) of the pixels whose centres lie inside `shape`."""
    u, v = _pixel_centres(image_size)
    du, dv, half = u - shape.x, v - shape.y, SIZES[shape.size] / 2
    if shape.kind == "circle":
        return du * du + dv * dv <= half * half
    if shape.kind == "square":
        return (np.abs(du) <= half) & (np.abs(dv) <= half)
    if shape.kind == "triangle":  # apex up, base as wide as the triangle is tall
        depth = dv + half  # 0 at the apex, 2 * half at the base
        return (depth >= 0) & (depth <= 2 * half) & (np.abs(du) <= depth / 2)
    if shape.kind == "rectangle":  # twice as wide as tall
        return (np.abs(du) <= half) & (np.abs(dv) <= half / 2)
    raise ValueError(f"Unknown shape kind {shape.kind!r}; expected one of {KINDS}.")


def render_scene(scene: Scene, image_size: int = 64) -> np.ndarray:
    """Render `scene` as an RGB image (image_size, image_size, 3), uint8 in [0, 255]."""
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small to draw shapes; use 16 px or more (64 is native).")
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for shape in scene.shapes:
        image[shape_mask(shape, image_size)] = PALETTE[shape.color]
    return image
