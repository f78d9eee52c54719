"""The vocabulary of ShapesWorld: palette, shape kinds, sizes, prompt families and relations.

Everything else in `shapes_world` (the scene sampler, the captions, the evaluator) reads these tables, so a
colour or a kind is added in one place.

Geometry lives on a canonical 64x64 canvas (`CANVAS`); renders at other resolutions scale it.
"""

from __future__ import annotations

# The canonical canvas, in units of a 64-px image. Scenes store positions in these units.
CANVAS = 64

# White is far from every shape colour, and a white-to-colour blend (a blurry edge) lands near no other colour.
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# Saturated and far apart in RGB (the closest pair, blue/purple, is 142 apart), so blurry VQ reconstructions still
# sit nearer their own colour than any other. Names are GenEval colours.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 175, 60),
    "blue": (30, 70, 230),
    "yellow": (245, 205, 20),
    "purple": (165, 40, 200),
    "black": (25, 25, 25),
}
COLORS: tuple[str, ...] = tuple(PALETTE)

# Axis-aligned shapes, told apart by features that survive blur: the bounding box's aspect ratio (rectangle 2:1,
# the others 1:1), how far the centroid sits below the box centre (triangle, apex up: 1/6 of its height; the others
# 0), and between circle and square, the box's fill ratio (pi/4 against 1) and diagonal extent. A diamond was tried
# and dropped: blurred small diamonds and circles are the same blob.
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "rectangle")

# Width of the bounding box, in canvas units; a rectangle is half as tall as wide, the other kinds as tall.
SIZES: dict[str, int] = {"small": 14, "large": 20}

# Shapes sit in the cells of a 2x2 grid, jittered, at least GAP canvas units apart and GAP / 2 from the border.
GRID = 2
CELL = CANVAS // GRID
GAP = 6

# GenEval's prompt families, with its tag names, and its mix (prompt counts per tag in GenEval's 553 prompts).
FAMILIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_MIX: dict[str, float] = {
    "single_object": 80,
    "two_object": 99,
    "counting": 80,
    "colors": 94,
    "position": 100,
    "color_attr": 100,
}

# GenEval's relation names (stored in metadata) and the phrase a caption uses for each.
RELATIONS: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
# Counting prompts ask for 2 to 4 objects, as GenEval's do; 4 fills the grid.
COUNTS: tuple[int, ...] = (2, 3, 4)
