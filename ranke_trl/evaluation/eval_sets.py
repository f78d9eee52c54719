"""Evaluation sets: the prompts to generate for, and the real images to compare against.

Prompt sets (METHOD.md, Evaluation protocol) are known by name (`register_prompt_set`), each read into a list of
`PromptRecord`s in a fixed order. Built in:

- `"dataset"`: a text column of any `ranke_trl.data.open_dataset` source: a Hub dataset, a local `save_to_disk`
  directory, a data folder, a .json/.jsonl/.csv/.parquet file or a registered dataset (MS-COCO 30K captions:
  `sayakpaul/coco-30-val-2014`, column `caption`);
- `"hps"`: the HPSv2 benchmark subsets (`hps_benchmark.load_hps_benchmark_prompts`);
- `"geneval"`: GenEval's `evaluation_metadata.jsonl`, one record per line.

Plugins add theirs (ShapesWorld: `"shapes"`, with GenEval-like metadata). Reference image sets (FID's real images,
the shift diagnostics' ground-truth codes) are `open_dataset` sources with an image column. Both are read lazily:
only the rows a process needs are decoded.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from datasets import Dataset

from ranke_trl.corpus import image_to_tensor
from ranke_trl.data import open_dataset
from ranke_trl.plugins import lookup

from .geneval import read_geneval_prompts
from .hps_benchmark import PAPER_SUBSETS, load_hps_benchmark_prompts


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


def _check_column(dataset: Dataset, column: str, source: str, key: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(
            f"{source} has no column {column!r} (columns: {dataset.column_names}); set `{key}` to the right one."
        )


#: `load(*, source, split, config, column, max_prompts, seed, hps_subsets) -> list[PromptRecord]`
PromptSetLoader = Callable[..., "list[PromptRecord]"]


@dataclass(frozen=True)
class PromptSet:
    """A prompt set known by name: its loader, and whether every record carries GenEval metadata (then the
    'geneval' export can run on it)."""

    load: PromptSetLoader
    geneval_metadata: bool = False


PROMPT_SETS: dict[str, PromptSet] = {}


def register_prompt_set(name: str, load: PromptSetLoader, *, geneval_metadata: bool = False) -> None:
    """Make `name` a `prompt_set` of `ranke-trl eval`.

    `load` is called with the keywords `source` (the recipe's `prompt_dataset` / `geneval_metadata` /
    `hps_benchmark_dir`, or None), `split` (None: the set's own default), `config`, `column`, `max_prompts` (None:
    all, or the set's own default size), `seed` (`dataset_seed`) and `hps_subsets`; it takes the ones it needs and
    `**kwargs`. It returns `PromptRecord`s in a fixed order. Registering a name again replaces it.
    """
    if not callable(load):
        raise TypeError(f"register_prompt_set({name!r}, ...) needs a callable loader, got {load!r}.")
    PROMPT_SETS[name] = PromptSet(load, geneval_metadata)


def get_prompt_set(name: str) -> PromptSet:
    """The prompt set registered as `name`, loading plugins if needed; a ValueError lists the known names."""
    prompt_set = lookup(PROMPT_SETS, name)
    if prompt_set is None:
        raise ValueError(f"Unknown prompt_set {name!r}; choose from {sorted(PROMPT_SETS)}.")
    return prompt_set


def load_eval_prompts(
    prompt_set: str,
    *,
    source: str | None = None,
    split: str | None = None,
    config: str | None = None,
    column: str = "prompt",
    max_prompts: int | None = None,
    hps_subsets: Sequence[str] = PAPER_SUBSETS,
    seed: int = 0,
) -> list[PromptRecord]:
    """The prompts of the evaluation set `prompt_set`, in its fixed order (see `register_prompt_set`).

    `max_prompts` keeps the first prompts (per subset for "hps").
    """
    loader = get_prompt_set(prompt_set).load
    if max_prompts is not None and max_prompts <= 0:
        raise ValueError(f"max_prompts must be positive or None, got {max_prompts}.")
    return loader(source=source, split=split, config=config, column=column, max_prompts=max_prompts, seed=seed,
                  hps_subsets=hps_subsets)


def _dataset_prompts(*, source, split, config, column, max_prompts, seed, **_) -> list[PromptRecord]:
    """A text column of any `open_dataset` source."""
    if source is None:
        raise ValueError("prompt_set 'dataset' needs `prompt_dataset` (a Hub id, local dataset, folder or file).")
    dataset = open_dataset(source, split, config, num_rows=max_prompts, seed=seed)
    _check_column(dataset, column, source, "prompt_column")
    texts = dataset.select_columns([column])[column]  # only the text: images in the same rows stay undecoded
    return [PromptRecord(i, str(text)) for i, text in enumerate(texts)]


def _hps_prompts(*, source, max_prompts, hps_subsets, **_) -> list[PromptRecord]:
    """The HPSv2 benchmark: `source` is its local folder, or None for the Hub."""
    by_subset = load_hps_benchmark_prompts(hps_subsets, source=source, max_per_subset=max_prompts)
    return [PromptRecord(i, text, subset=name) for name, texts in by_subset.items() for i, text in enumerate(texts)]


def _geneval_prompts(*, source, max_prompts, **_) -> list[PromptRecord]:
    """GenEval: `source` is the path of its `evaluation_metadata.jsonl`."""
    if source is None or not os.path.isfile(source):
        raise FileNotFoundError(
            f"GenEval metadata file not found: {source}; set `geneval_metadata` to GenEval's "
            "prompts/evaluation_metadata.jsonl."
        )
    rows = read_geneval_prompts(source)[:max_prompts]
    return [PromptRecord(i, row["prompt"], metadata=row) for i, row in enumerate(rows)]


register_prompt_set("dataset", _dataset_prompts)
register_prompt_set("hps", _hps_prompts)
register_prompt_set("geneval", _geneval_prompts, geneval_metadata=True)


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
