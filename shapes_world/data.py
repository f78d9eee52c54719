"""ShapesWorld as `datasets.Dataset` splits, generated on demand and fixed by a seed.

Splits partition the space of scenes: a scene belongs to the split its stable hash (`Scene.key`) falls in, and each
split keeps only its own scenes. So no scene (caption plus exact layout) is in two splits, whatever the seeds, while
every split draws from the same distribution. Prompts do repeat across splits: there are only a few hundred.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from .scenes import Scene, render_scene, sample_scene
from .vocab import FAMILIES, GENEVAL_MIX

# Share of the scene space held by each split, in per-mille of the hash range.
SPLIT_PERMILLE: dict[str, tuple[int, int]] = {"train": (0, 800), "validation": (800, 900), "test": (900, 1000)}

FEATURES = Features({"prompt": Value("string"), "image": Image(), "tag": Value("string"), "metadata": Value("string")})


def scene_split(scene: Scene) -> str:
    """The split that owns `scene`: "train" (80% of scenes), "validation" (10%) or "test" (10%)."""
    bucket = int(scene.key(), 16) % 1000
    return next(split for split, (low, high) in SPLIT_PERMILLE.items() if low <= bucket < high)


def family_counts(num_examples: int, family_mix: Mapping[str, float] | None = None) -> dict[str, int]:
    """How many examples of each family a split of `num_examples` holds: `family_mix` (relative weights, default
    GenEval's prompt counts) rounded by largest remainder, so the counts sum to `num_examples` exactly."""
    mix = dict(GENEVAL_MIX if family_mix is None else family_mix)
    unknown = set(mix) - set(FAMILIES)
    if unknown:
        raise ValueError(f"family_mix names unknown families {sorted(unknown)}; choose from {FAMILIES}.")
    if any(weight < 0 for weight in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"family_mix={mix} needs non-negative weights with a positive sum.")
    total = sum(mix.values())
    exact = {tag: num_examples * weight / total for tag, weight in mix.items()}
    counts = {tag: int(share) for tag, share in exact.items()}
    by_remainder = sorted(exact, key=lambda tag: (counts[tag] - exact[tag], FAMILIES.index(tag)))
    for tag in by_remainder[: num_examples - sum(counts.values())]:
        counts[tag] += 1
    return counts


def sample_scenes(
    split: str, num_examples: int, seed: int = 0, family_mix: Mapping[str, float] | None = None
) -> list[Scene]:
    """`num_examples` scenes of `split`, in shuffled family order; the same arguments give the same scenes."""
    if split not in SPLIT_PERMILLE:
        raise ValueError(f"Unknown split {split!r}; expected one of {list(SPLIT_PERMILLE)}.")
    if num_examples < 0:
        raise ValueError(f"num_examples={num_examples} must be non-negative.")
    # One stream per (seed, split): a split's scenes do not depend on how many the others draw.
    rng = np.random.default_rng([seed, list(SPLIT_PERMILLE).index(split)])
    tags = [tag for tag, count in family_counts(num_examples, family_mix).items() for _ in range(count)]
    scenes = []
    for tag in (tags[i] for i in rng.permutation(len(tags))):
        scene = sample_scene(rng, tag)
        while scene_split(scene) != split:  # rejection keeps the split's share of the scene distribution
            scene = sample_scene(rng, tag)
        scenes.append(scene)
    return scenes


def make_split(
    split: str,
    num_examples: int,
    seed: int = 0,
    image_size: int = 64,
    family_mix: Mapping[str, float] | None = None,
) -> Dataset:
    """A ShapesWorld split: "train", "validation" or "test".

    Args:
        num_examples: rows to generate.
        seed: fixes the rows; the same seed gives byte-identical images.
        image_size: side of the square images in pixels (64 is native; geometry scales).
        family_mix: relative weight per prompt family (keys from `vocab.FAMILIES`); default GenEval's mix.

    Returns:
        A Dataset with columns `prompt` (str), `image` (`datasets.Image()`, RGB image_size x image_size),
        `tag` (the prompt family) and `metadata` (GenEval-style JSON string; see `prompts.py`).
    """
    scenes = sample_scenes(split, num_examples, seed, family_mix)
    return Dataset.from_dict(
        {
            "prompt": [scene.prompt for scene in scenes],
            "image": [PILImage.fromarray(render_scene(scene, image_size)) for scene in scenes],
            "tag": [scene.tag for scene in scenes],
            "metadata": [json.dumps(scene.metadata) for scene in scenes],
        },
        features=FEATURES,
    )
