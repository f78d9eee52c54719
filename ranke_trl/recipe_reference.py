"""Print the recipe reference (every recipe key, its default and help) as Markdown, for the README.

    python -m ranke_trl.recipe_reference
"""

from __future__ import annotations

import dataclasses

from trl import GRPOConfig

from .config import RankEConfig
from .recipes import RecipeArguments


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _rows(fields) -> list[str]:
    return [f"| `{f.name}` | `{_default(f)}` | {f.metadata.get('help', '')} |" for f in fields]


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
    return "\n".join(
        ["**What to train on** (`RecipeArguments`)", "", *header, *_rows(dataclasses.fields(RecipeArguments)), "",
         "**RankE settings** (`RankEConfig`; every other `GRPOConfig` / `TrainingArguments` key works too)", "",
         *header, *_rows(ranke_fields())]
    )


if __name__ == "__main__":
    print(recipe_reference())
