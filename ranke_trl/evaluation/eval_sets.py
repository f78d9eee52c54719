"""Evaluation sets: the prompts to generate for, and the real images to compare against.

Prompt sets (METHOD.md, Evaluation protocol), each read into a list of `PromptRecord`s in a fixed order:

- `"dataset"`: a text column of a Hub dataset, a local `save_to_disk` directory, a data folder or a
  .json/.jsonl/.csv/.parquet file (MS-COCO 30K captions: `sayakpaul/coco-30-val-2014`, column `caption`);
- `"hps"`: the HPSv2 benchmark subsets (`hps_benchmark.load_hps_benchmark_prompts`);
- `"geneval"`: GenEval's `evaluation_metadata.jsonl`, one record per line;
- `"shapes"`: the offline ShapesWorld (`ranke_trl.world.make_split`), whose `metadata` is GenEval-like.

Reference image sets (FID's real images, the shift diagnostics' ground-truth codes) are any of the same dataset
sources with an image column, or `"shapes"`. Both are read lazily: only the rows a process needs are decoded.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset, load_dataset, load_from_disk

from ranke_trl.corpus import image_to_tensor
from ranke_trl.data import _FILE_BUILDERS

from .geneval import read_geneval_prompts
from .hps_benchmark import PAPER_SUBSETS, load_hps_benchmark_prompts

PROMPT_SETS = ("dataset", "hps", "geneval", "shapes")
DEFAULT_SHAPES_ROWS = 64
# Files `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write; any other folder is a data folder to load_dataset.
_SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of an evaluation set.

    `index`: its position in its subset, from 0 (GenEval's folder number, HPS's file number). `subset`: the HPS
    style, else None. `metadata`: the GenEval-style record (with "tag" and "prompt"), else None.
    """

    index: int
    prompt: str
    subset: str | None = None
    metadata: dict | None = None

    @property
    def name(self) -> str:
        """`"00012"`, or `"photo/00012"` within a subset: where its images go on disk."""
        return f"{self.index:05d}" if self.subset is None else f"{self.subset}/{self.index:05d}"


def prompt_seed(base_seed: int, record: PromptRecord) -> int:
    """The sampling seed of one prompt, in [0, 2^63): a hash of `(base_seed, subset, index)`.

    It depends on nothing else, so a prompt's images are the same whatever the batch size, the number of processes
    or the other prompts evaluated with it (an HPS subset evaluated alone gets the same images as in the full set).
    """
    if base_seed < 0:
        raise ValueError(f"seed must be >= 0, got {base_seed}.")
    subset_key = 0 if record.subset is None else zlib.crc32(record.subset.encode("utf-8"))
    state = np.random.SeedSequence([base_seed, subset_key, record.index]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


def open_dataset(
    source: str, split: str = "train", config: str | None = None, num_rows: int | None = None, seed: int = 0
) -> Dataset:
    """A `datasets.Dataset` from `source`: "shapes", a Hub id, a saved dataset, a data folder or a data file.

    Unlike `ranke_trl.data.load_prompt_dataset`, it needs no prompt column (reference image sets have none) and it
    reads plain folders (e.g. an image folder) with `load_dataset`. `num_rows` keeps the first rows (for "shapes":
    how many to generate, default 64); `seed` fixes the "shapes" rows.
    """
    if source == "shapes":
        from ranke_trl.world import make_split

        return make_split(split, num_examples=num_rows or DEFAULT_SHAPES_ROWS, seed=seed)
    if os.path.isdir(source) and any(os.path.isfile(os.path.join(source, f)) for f in _SAVED_DATASET_FILES):
        dataset = load_from_disk(source)
        if hasattr(dataset, "keys"):
            if split not in dataset:
                raise ValueError(f"{source} has no split {split!r} (splits: {list(dataset)}); set the split key.")
            dataset = dataset[split]
    elif os.path.isfile(source):
        builder = _FILE_BUILDERS.get(os.path.splitext(source)[1])
        if builder is None:
            raise ValueError(f"Cannot read {source}: use a .json, .jsonl, .csv or .parquet file, or a folder.")
        dataset = load_dataset(builder, data_files=source, split="train")
    else:  # a data folder (load_dataset infers imagefolder, csv, ...) or a Hub id
        dataset = load_dataset(source, config, split=split)
    if num_rows is not None:
        dataset = dataset.select(range(min(num_rows, len(dataset))))
    return dataset


def _check_column(dataset: Dataset, column: str, source: str, key: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(
            f"{source} has no column {column!r} (columns: {dataset.column_names}); set `{key}` to the right one."
        )


def load_eval_prompts(
    prompt_set: str,
    *,
    source: str | None = None,
    split: str | None = None,
    config: str | None = None,
    column: str = "prompt",
    max_prompts: int | None = None,
    hps_subsets: Sequence[str] = PAPER_SUBSETS,
    shapes_seed: int = 0,
) -> list[PromptRecord]:
    """The prompts of an evaluation set, in file order (see the module docstring for `prompt_set`).

    `source`: the dataset ("dataset"), the local HPS benchmark folder or None for the Hub ("hps"), the path of
    `evaluation_metadata.jsonl` ("geneval"); unused for "shapes". `split` defaults to "train", or "test" for
    "shapes". `max_prompts` keeps the first prompts (per subset for "hps").
    """
    if prompt_set not in PROMPT_SETS:
        raise ValueError(f"Unknown prompt_set {prompt_set!r}; choose from {list(PROMPT_SETS)}.")
    if max_prompts is not None and max_prompts <= 0:
        raise ValueError(f"max_prompts must be positive or None, got {max_prompts}.")
    if prompt_set == "hps":
        by_subset = load_hps_benchmark_prompts(hps_subsets, source=source, max_per_subset=max_prompts)
        return [PromptRecord(i, text, subset=name) for name, texts in by_subset.items() for i, text in enumerate(texts)]
    if prompt_set == "geneval":
        if source is None or not os.path.isfile(source):
            raise FileNotFoundError(
                f"GenEval metadata file not found: {source}; set `geneval_metadata` to GenEval's "
                "prompts/evaluation_metadata.jsonl."
            )
        rows = read_geneval_prompts(source)[:max_prompts]
        return [PromptRecord(i, row["prompt"], metadata=row) for i, row in enumerate(rows)]
    if prompt_set == "shapes":
        dataset = open_dataset("shapes", split or "test", num_rows=max_prompts, seed=shapes_seed)
        return [
            PromptRecord(i, text, metadata=json.loads(meta))
            for i, (text, meta) in enumerate(zip(dataset["prompt"], dataset["metadata"]))
        ]
    if source is None:
        raise ValueError("prompt_set 'dataset' needs `prompt_dataset` (a Hub id, local dataset, folder or file).")
    dataset = open_dataset(source, split or "train", config, num_rows=max_prompts)
    _check_column(dataset, column, source, "prompt_column")
    texts = dataset.select_columns([column])[column]  # only the text: images in the same rows stay undecoded
    return [PromptRecord(i, str(text)) for i, text in enumerate(texts)]


def iter_image_batches(
    dataset: Dataset, column: str, indices: Sequence[int], image_size: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """The images of `dataset[column]` at `indices`, as batches (b, 3, image_size, image_size) in [-1, 1].

    Each image's short side is resized to `image_size` (bicubic, antialiased) and centre-cropped, as the VQ
    tokenizer's preprocessing does (`ranke_trl.corpus.image_to_tensor`). Only one batch is decoded at a time.
    """
    _check_column(dataset, column, "The reference dataset", "reference_image_column")
    images = dataset.select_columns([column])
    for start in range(0, len(indices), batch_size):
        rows = images[list(indices[start : start + batch_size])][column]
        yield torch.stack([image_to_tensor(image, image_size) for image in rows])
