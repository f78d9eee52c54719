"""Captions of ShapesWorld scenes, their GenEval-style metadata, and a parser from one to the other.

Each prompt family follows GenEval's template and its metadata format, without GenEval's "a photo of" prefix
(which the parser still accepts):

| tag           | caption                               | checked                                  |
|---------------|---------------------------------------|------------------------------------------|
| single_object | "a circle"                            | a circle is there                        |
| two_object    | "a circle and a square"               | both kinds are there                     |
| counting      | "three triangles"                     | exactly three triangles                  |
| colors        | "a red circle"                        | a red circle is there                    |
| position      | "a circle to the left of a square"    | both are there, in that relation         |
| color_attr    | "a red circle and a green square"     | each colour is bound to its own kind     |

Metadata is a JSON-serialisable dict, as in GenEval's `evaluation_metadata.jsonl`::

    {"tag": "counting", "include": [{"class": "triangle", "count": 3}],
     "exclude": [{"class": "triangle", "count": 4}], "prompt": "three triangles"}

A position entry reads as GenEval's does: `{"class": "circle", "count": 1, "position": ["left of", 0]}` means the
circle is left of `include[0]`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .vocab import COLORS, KINDS, NUMBER_WORDS, RELATIONS


def _noun(kind: str, count: int = 1, color: str | None = None) -> str:
    words = [("an" if (color or kind)[0] in "aeiou" else "a") if count == 1 else NUMBER_WORDS[count]]
    if color is not None:
        words.append(color)
    words.append(kind if count == 1 else kind + "s")
    return " ".join(words)


def _item(kind: str, count: int = 1, color: str | None = None, position: list | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"class": kind, "count": count}
    if color is not None:
        item["color"] = color
    if position is not None:
        item["position"] = position
    return item


def single_object(kind: str) -> dict[str, Any]:
    """Metadata of "a {kind}"."""
    return {"tag": "single_object", "include": [_item(kind)], "prompt": _noun(kind)}


def two_object(kind_a: str, kind_b: str) -> dict[str, Any]:
    """Metadata of "a {kind_a} and a {kind_b}"."""
    prompt = f"{_noun(kind_a)} and {_noun(kind_b)}"
    return {"tag": "two_object", "include": [_item(kind_a), _item(kind_b)], "prompt": prompt}


def counting(kind: str, count: int) -> dict[str, Any]:
    """Metadata of "{count} {kind}s": exactly `count` of them, so `count + 1` is excluded (GenEval's convention)."""
    return {
        "tag": "counting",
        "include": [_item(kind, count)],
        "exclude": [_item(kind, count + 1)],
        "prompt": _noun(kind, count),
    }


def colors(kind: str, color: str) -> dict[str, Any]:
    """Metadata of "a {color} {kind}"."""
    return {"tag": "colors", "include": [_item(kind, color=color)], "prompt": _noun(kind, color=color)}


def position(kind_a: str, relation: str, kind_b: str) -> dict[str, Any]:
    """Metadata of "a {kind_a} {relation} a {kind_b}", `relation` one of GenEval's ("left of", "above", ...)."""
    prompt = f"{_noun(kind_a)} {RELATIONS[relation]} {_noun(kind_b)}"
    return {"tag": "position", "include": [_item(kind_b), _item(kind_a, position=[relation, 0])], "prompt": prompt}


def color_attr(color_a: str, kind_a: str, color_b: str, kind_b: str) -> dict[str, Any]:
    """Metadata of "a {color_a} {kind_a} and a {color_b} {kind_b}"."""
    prompt = f"{_noun(kind_a, color=color_a)} and {_noun(kind_b, color=color_b)}"
    include = [_item(kind_a, color=color_a), _item(kind_b, color=color_b)]
    return {"tag": "color_attr", "include": include, "prompt": prompt}


# --- parsing -----------------------------------------------------------------------------------------------------

_COUNT_OF_WORD = {"a": 1, "an": 1, **{word: n for n, word in NUMBER_WORDS.items()}}
_RELATION_OF_PHRASE = {phrase: rel for rel, phrase in RELATIONS.items()} | {rel: rel for rel in RELATIONS}


def _alternatives(words) -> str:
    # Longest first, so "to the left of" wins over "left of".
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


def _phrase_pattern(name: str) -> str:
    return (
        rf"(?P<{name}_det>{_alternatives(_COUNT_OF_WORD)})\s+"
        rf"(?:(?P<{name}_color>{_alternatives(COLORS)})\s+)?"
        rf"(?P<{name}_kind>{_alternatives(KINDS)})(?P<{name}_plural>s?)"
    )


_PROMPT_RE = re.compile(
    rf"^(?:a photo of\s+)?{_phrase_pattern('a')}"
    rf"(?:\s+(?P<joiner>{_alternatives(['and', *_RELATION_OF_PHRASE])})\s+{_phrase_pattern('b')})?$"
)


def _phrase(match: re.Match, name: str, prompt: str) -> tuple[str, int, str | None]:
    count = _COUNT_OF_WORD[match[f"{name}_det"]]
    if (count > 1) != bool(match[f"{name}_plural"]):
        raise ValueError(f"Prompt {prompt!r}: {match[f'{name}_det']!r} does not agree in number with its noun.")
    return match[f"{name}_kind"], count, match[f"{name}_color"]


def parse_prompt(prompt: str) -> dict[str, Any]:
    """Parse a ShapesWorld caption back into its GenEval-style metadata (the inverse of the builders above).

    Accepts one noun phrase (`[a|an|two|three|four] [colour] kind[s]`) or two joined by "and" or a relation
    ("to the left of", "left of", "above", ...), optionally after "a photo of", in any case, with a final full stop.
    The tag follows from the form: a colour on a single object makes it `colors`, a number makes it `counting`, a
    colour on either of two objects makes it `color_attr`, a relation makes it `position`.

    Raises:
        ValueError: if the prompt is outside this grammar; pass the scene's metadata instead.
    """
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    match = _PROMPT_RE.match(text)
    if match is None:
        raise ValueError(
            f"Cannot parse ShapesWorld prompt {prompt!r}. Expected phrases like 'a red circle', 'three squares', "
            f"'a circle and a blue square' or 'a circle to the left of a square', with colours {list(COLORS)} and "
            f"kinds {list(KINDS)}; or pass the scene's metadata (the dataset's `metadata` column) instead."
        )
    kind_a, count_a, color_a = _phrase(match, "a", prompt)
    if match["joiner"] is None:
        if count_a > 1:
            meta = counting(kind_a, count_a)
            if color_a is not None:  # beyond GenEval's templates: a coloured count binds the colour to all of them
                meta["include"][0]["color"] = meta["exclude"][0]["color"] = color_a
        else:
            meta = single_object(kind_a) if color_a is None else colors(kind_a, color_a)
        meta["prompt"] = prompt
        return meta

    kind_b, count_b, color_b = _phrase(match, "b", prompt)
    joiner = match["joiner"]
    if joiner == "and":
        tag = "two_object" if color_a is None and color_b is None else "color_attr"
        include = [_item(kind_a, count_a, color_a), _item(kind_b, count_b, color_b)]
    else:
        tag = "position"
        include = [_item(kind_b, count_b, color_b), _item(kind_a, count_a, color_a, [_RELATION_OF_PHRASE[joiner], 0])]
    return {"tag": tag, "include": include, "prompt": prompt}


def as_metadata(spec: str | dict[str, Any]) -> dict[str, Any]:
    """Metadata from a metadata dict, its JSON string (the dataset's `metadata` column), or a prompt to parse."""
    if isinstance(spec, dict):
        meta = spec
    elif isinstance(spec, str) and spec.lstrip().startswith("{"):
        meta = json.loads(spec)
    elif isinstance(spec, str):
        return parse_prompt(spec)
    else:
        raise TypeError(f"Expected a prompt, a metadata dict or its JSON string, got {type(spec).__name__}.")
    if "include" not in meta:
        raise ValueError(f"Metadata {meta!r} has no 'include' list; it must be GenEval-style (see prompts.py).")
    return meta
