"""Tiny prompt/image datasets shared by the trainer tests."""

from datasets import Dataset
from datasets import Image as ImageFeature
from PIL import Image

COLOURS = ["red", "blue", "green", "yellow"]


def colour_squares(n: int = 8) -> Dataset:
    """`n` rows of `prompt` ("a red square", ...) and a matching 64 px single-colour `image`."""
    return Dataset.from_dict(
        {
            "prompt": [f"a {COLOURS[i % 4]} square" for i in range(n)],
            "image": [Image.new("RGB", (64, 64), COLOURS[i % 4]) for i in range(n)],
        }
    ).cast_column("image", ImageFeature())
