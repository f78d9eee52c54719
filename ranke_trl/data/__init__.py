"""Datasets by name, path or Hub id: `open_dataset`, the one opener behind training and evaluation.

A source is, in the order `open_dataset` tries them:

- a registered name (`register_dataset`): 'tiny' is built in; plugins add theirs (ShapesWorld: 'shapes');
- a `save_to_disk` directory (a `Dataset`, or a `DatasetDict` of splits);
- a .json/.jsonl/.csv/.parquet file;
- a data folder (`load_dataset` infers imagefolder, csv, ...) or a Hub id (`HF_HOME` caches downloads).

`load_prompt_dataset` is `open_dataset` plus the prompt-column check and rename that TRL's trainers need.

The paper's training set (15K BLIP3o-60k pairs with compressed captions and ground-truth codes) is built by
`python -m ranke_trl.data.curate --recipe recipes/data/blip3o_15k.yaml`; its stages live beside this module
(`shards`, `filters`, `stratify`, `compress`, `encode`, `publish`) and are imported only by the curation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from ..plugins import lookup

#: `factory(split, num_rows, seed) -> datasets.Dataset`; `num_rows` None means the factory's own default size
DatasetFactory = Callable[[str, "int | None", int], Dataset]


@dataclass(frozen=True)
class RegisteredDataset:
    """A dataset known by name: its factory, and the split used when none is named (e.g. by an eval recipe)."""

    factory: DatasetFactory
    default_split: str = "train"


DATASETS: dict[str, RegisteredDataset] = {}
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def _check_utf8(path: str) -> None:
    """Raise a ValueError naming `path` and the line when a text data file is not valid UTF-8."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path} is not UTF-8 text: line {number}, byte {err.start}: {err.reason}. Re-encode it, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path} > fixed{os.path.splitext(path)[1]}`."
                ) from None
# Files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write; any other folder is a data folder to load_dataset.
SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")


def register_dataset(name: str, factory: DatasetFactory, default_split: str = "train") -> None:
    """Make `name` a dataset source for recipes (`dataset_name`, `reference_dataset`, `prompt_dataset`).

    `factory(split, num_rows, seed)` returns a `datasets.Dataset`: `num_rows` rows (None: its own default) of
    `split`, the same rows for the same seed. Registering a name again replaces it.
    """
    if not callable(factory):
        raise TypeError(f"register_dataset({name!r}, ...) needs a callable factory, got {factory!r}.")
    DATASETS[name] = RegisteredDataset(factory, default_split)


def registered_dataset(name: str) -> RegisteredDataset | None:
    """The dataset registered as `name` (loading plugins if needed), or None."""
    return lookup(DATASETS, name)


def default_split(source: str) -> str:
    """The split `open_dataset(source)` reads when none is named: a registered dataset's own, else "train"."""
    registered = registered_dataset(source)
    return registered.default_split if registered is not None else "train"


TINY_COLOURS = ("red", "blue", "green", "yellow")


def colour_squares(num_rows: int = 64, image_size: int = 64) -> Dataset:
    """`num_rows` rows of `prompt` ("a red square", "a blue square", ... in turn) and its single-colour RGB `image`
    (image_size x image_size): the built-in 'tiny' dataset, for smoke runs and tests."""
    colours = [TINY_COLOURS[i % len(TINY_COLOURS)] for i in range(num_rows)]
    return Dataset.from_dict(
        {
            "prompt": [f"a {colour} square" for colour in colours],
            "image": [Image.new("RGB", (image_size, image_size), colour) for colour in colours],
        }
    ).cast_column("image", ImageFeature())


def _tiny(split: str, num_rows: int | None, seed: int) -> Dataset:
    return colour_squares(64 if num_rows is None else num_rows)  # every split and seed: the same rows


register_dataset("tiny", _tiny)


def open_dataset(
    source: str, split: str | None = None, config: str | None = None, num_rows: int | None = None, seed: int = 0
) -> Dataset:
    """A `datasets.Dataset` from `source` (see the module docstring); no column is required.

    `split` None reads `default_split(source)`. `num_rows` keeps the first rows (a
    registered factory is asked for that many); `seed` is passed to registered factories only.
    """
    registered = registered_dataset(source)
    split = split or default_split(source)
    if registered is not None:
        dataset = registered.factory(split, num_rows, seed)
    elif os.path.isdir(source) and any(os.path.isfile(os.path.join(source, f)) for f in SAVED_DATASET_FILES):
        dataset = load_from_disk(source)
        if hasattr(dataset, "keys"):
            if split not in dataset:
                raise ValueError(f"{source} has no split {split!r} (splits: {list(dataset)}); set the split key.")
            dataset = dataset[split]
    elif os.path.isfile(source):
        builder = FILE_BUILDERS.get(os.path.splitext(source)[1])
        if builder is None:
            raise ValueError(f"Cannot read {source}: use a .json, .jsonl, .csv or .parquet file, or a folder.")
        if builder != "parquet":
            _check_utf8(source)  # `datasets` would fail later, without naming the file
        dataset = load_dataset(builder, data_files=source, split="train")
    else:  # a data folder or a Hub id
        dataset = load_dataset(source, config, split=split)
    if num_rows is not None and len(dataset) > num_rows:
        dataset = dataset.select(range(num_rows))
    return dataset


def load_prompt_dataset(
    name: str,
    split: str = "train",
    config: str | None = None,
    prompt_column: str = "prompt",
    max_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """`open_dataset(name, split, config, max_samples, seed)` with its text prompts in a `prompt` column, as TRL
    expects: `prompt_column` is renamed to `prompt` (replacing any other `prompt` column)."""
    dataset = open_dataset(name, split, config, num_rows=max_samples, seed=seed)
    if prompt_column not in dataset.column_names:
        raise ValueError(
            f"Dataset {name!r} has no column {prompt_column!r} (columns: {dataset.column_names}); set "
            "`prompt_column` to the column that holds the prompts."
        )
    if prompt_column != "prompt":
        if "prompt" in dataset.column_names:
            dataset = dataset.remove_columns("prompt")
        dataset = dataset.rename_column(prompt_column, "prompt")
    return dataset


__all__ = [
    "DATASETS",
    "RegisteredDataset",
    "colour_squares",
    "default_split",
    "load_prompt_dataset",
    "open_dataset",
    "register_dataset",
    "registered_dataset",
]
