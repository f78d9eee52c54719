"""Print the recipe reference (every recipe key, its default and help) as Markdown, for the README.

    python -m ranke_trl.recipe_reference

Keys that installed plugins add (`ranke_trl.recipes.register_recipe_extension`) are listed after the library's.
"""

from __future__ import annotations

import dataclasses

from trl import GRPOConfig

from .config import RankEConfig
from .plugins import load_plugins
from .recipes import RECIPE_EXTENSIONS, RecipeArguments


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _rows(fields) -> list[str]:
    return [f"| `{f.name}` | `{_default(f)}` | {f.metadata.get('help', '')} |" for f in fields if f.init]


def ranke_fields() -> list[dataclasses.Field]:
    """`RankEConfig` fields that RankE adds or whose default or meaning it changes from `GRPOConfig`."""
    grpo = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    return [
        f
        for f in dataclasses.fields(RankEConfig)
        if f.name not in grpo or f.metadata.get("help") != grpo[f.name].metadata.get("help")
    ]


def recipe_reference() -> str:
    header = ["| key | default | meaning |", "|---|---|---|"]
    lines = ["**What to train on** (`RecipeArguments`)", "", *header, *_rows(dataclasses.fields(RecipeArguments)), "",
             "**RankE settings** (`RankEConfig`; every other `GRPOConfig` / `TrainingArguments` key works too)", "",
             *header, *_rows(ranke_fields())]
    load_plugins()
    for name, extension in RECIPE_EXTENSIONS.items():
        lines += ["", f"**Plugin `{name}`** (`{extension.arguments.__name__}`)", "", *header,
                  *_rows(dataclasses.fields(extension.arguments))]
    return "\n".join(lines)


if __name__ == "__main__":
    print(recipe_reference())
