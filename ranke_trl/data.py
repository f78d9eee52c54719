"""Prompt/image datasets for training: Hub ids, local directories and files, or the procedural ShapesWorld."""

from __future__ import annotations

import os

from datasets import Dataset, load_dataset, load_from_disk

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_prompt_dataset(
    name: str,
    split: str = "train",
    config: str | None = None,
    prompt_column: str = "prompt",
    max_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset with a text-prompt column, renamed to `prompt` as TRL expects.

    `name` is 'shapes' or 'tiny' (ShapesWorld, generated offline; 'tiny' is its 64-row version), a local
    `save_to_disk` directory, a .json/.jsonl/.csv/.parquet file, or a Hub id (`HF_HOME` caches downloads).
    """
    if name in ("tiny", "shapes"):
        from .world import make_split

        return make_split(split, num_examples=max_samples or (64 if name == "tiny" else 4096), seed=seed)
    if os.path.isdir(name):
        dataset = load_from_disk(name)
        dataset = dataset[split] if hasattr(dataset, "keys") else dataset
    elif os.path.splitext(name)[1] in _FILE_BUILDERS:
        dataset = load_dataset(_FILE_BUILDERS[os.path.splitext(name)[1]], data_files=name, split="train")
    else:
        dataset = load_dataset(name, config, split=split)
    if prompt_column not in dataset.column_names:
        raise ValueError(
            f"Dataset {name!r} has no column {prompt_column!r} (columns: {dataset.column_names}); set "
            "`prompt_column` to the column that holds the prompts."
        )
    if prompt_column != "prompt":
        if "prompt" in dataset.column_names:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(prompt_column, "prompt")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset
