"""Tiny prompt/image datasets shared by the trainer tests: the first rows of the library's built-in 'tiny' dataset."""

from ranke_trl.data import colour_squares as _colour_squares


def colour_squares(n: int = 8):
    """`n` rows of `prompt` ("a red square", ...) and a matching 64 px single-colour `image`."""
    return _colour_squares(n)
