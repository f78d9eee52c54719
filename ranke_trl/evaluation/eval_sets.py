"""Evaluation sets: the prompts to generate for, and the real images to compare against.

Prompt sets (METHOD.md, Evaluation protocol) are known by name (`register_prompt_set`), each read into a list of
`PromptRecord`s in a fixed order. Built in:

- `"dataset"`: a text column of any `ranke_trl.data.open_dataset` source: a Hub dataset, a local `save_to_disk`
  directory, a data folder, a .json/.jsonl/.csv/.parquet file or a registered dataset (MS-COCO 30K captions:
  `sayakpaul/coco-30-val-2014`, column `caption`);
- `"hps"`: the HPSv2 benchmark subsets (`hps_benchmark.load_hps_benchmark_prompts`);
- `"geneval"`: GenEval's `evaluation_metadata.jsonl`, one record per line;
- `"coco30k"`: the MS-COCO 30K captions (`COCO30K_REPO`, column `caption`), or a local copy of them.

**Fixed sets and their sources** (`EVAL_SET_SOURCES`): GenEval's 553 prompts (GitHub, pinned commit; not on the
Hub), the HPSv2 benchmark's 800 prompts per style (Hub `zhwang/HPDv2`, `benchmark/*.json`), the COCO-30K captions and
their val2014 images for FID (Hub `sayakpaul/coco-30-val-2014`). `snapshot_eval_sets(DIR)` (or `python -m
ranke_trl.evaluation.eval_sets snapshot DIR`) copies them once into a local folder with their revisions, counts and
hashes, which every loader here reads offline; `eval_set_prompts` reads one set from it, e.g. for the curation's
leakage filter (`ranke_trl.data.curate`).

Plugins add theirs (ShapesWorld: `"shapes"`, with GenEval-like metadata). Reference image sets (FID's real images,
the shift diagnostics' ground-truth codes) are `open_dataset` sources with an image column. Both are read lazily:
only the rows a process needs are decoded.
"""

from __future__ import annotations

import hashlib
import json
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
from .hps_benchmark import HPS_BENCHMARK_REPO, HPS_SUBSETS, PAPER_SUBSETS, load_hps_benchmark_prompts


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


# --------------------------------------------------------------------------- fixed sets, their sources, local copies

GENEVAL_COMMIT = "af4902f24d3ca90ebbb446dd9891a59e0f82725f"
GENEVAL_URL = f"https://raw.githubusercontent.com/djghosh13/geneval/{GENEVAL_COMMIT}/prompts/evaluation_metadata.jsonl"
GENEVAL_SHA256 = "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"  # of the file at that commit
COCO30K_REPO = "sayakpaul/coco-30-val-2014"
#: name -> where it comes from and how many prompts the full set has (per subset for "hps")
EVAL_SET_SOURCES = {
    "geneval": {"source": GENEVAL_URL, "license": "MIT", "prompts": 553},
    "hps": {"source": f"hf://datasets/{HPS_BENCHMARK_REPO}/benchmark/<subset>.json", "prompts": 800},
    "coco30k": {"source": f"hf://datasets/{COCO30K_REPO} (split train, column caption; images: column image)",
                "prompts": 30000},
}
#: where `snapshot_eval_sets` puts each set inside its folder
SNAPSHOT_PATHS = {"geneval": "geneval/evaluation_metadata.jsonl", "hps": "hps", "coco30k": "coco30k"}
SNAPSHOT_RECORD = "eval_sets.json"


def _coco30k_prompts(*, source, max_prompts, seed, **_) -> list[PromptRecord]:
    """MS-COCO 30K captions: `source` a local copy (a `snapshot_eval_sets` folder's `coco30k/`, or any `open_dataset`
    source with a `caption` column), or None for the Hub dataset."""
    dataset = open_dataset(source or COCO30K_REPO, "train", num_rows=max_prompts, seed=seed)
    _check_column(dataset, "caption", source or COCO30K_REPO, "prompt_dataset")
    return [PromptRecord(i, str(text)) for i, text in enumerate(dataset.select_columns(["caption"])["caption"])]


register_prompt_set("dataset", _dataset_prompts)
register_prompt_set("hps", _hps_prompts)
register_prompt_set("geneval", _geneval_prompts, geneval_metadata=True)
register_prompt_set("coco30k", _coco30k_prompts)


def prompts_sha256(prompts: Sequence[str]) -> str:
    """A fingerprint of a prompt list in order: sha256 of the prompts joined by newlines."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def eval_set_prompts(name: str, root: str | os.PathLike, hps_subsets: Sequence[str] = PAPER_SUBSETS) -> list[str]:
    """The prompts of evaluation set `name` ("geneval", "hps": the `hps_subsets` in order, "coco30k") from a local
    copy laid out as `snapshot_eval_sets` writes it, through the prompt-set loaders above."""
    if name not in SNAPSHOT_PATHS:
        raise ValueError(f"Unknown evaluation set {name!r}; choose from {sorted(SNAPSHOT_PATHS)}.")
    path = os.path.join(root, SNAPSHOT_PATHS[name])
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: make a local copy with `python -m ranke_trl.evaluation.eval_sets "
                                f"snapshot {root}` (needs the network once).")
    records = load_eval_prompts(name, source=path, hps_subsets=hps_subsets)
    return [record.prompt for record in records]


def snapshot_eval_sets(
    out_dir: str | os.PathLike, sets: Sequence[str] = tuple(SNAPSHOT_PATHS), hps_revision: str | None = None,
    coco_revision: str | None = None, with_images: bool = False,
) -> dict:
    """Copy the evaluation sets from their sources (`EVAL_SET_SOURCES`) into `out_dir` for offline use; returns and
    writes `out_dir/eval_sets.json` (source, revision, prompt count and `prompts_sha256` of each).

    GenEval is checked against its pinned hash; all four HPS styles are copied; COCO-30K keeps the captions only
    unless `with_images` (about 4.9 GB, FID's reference images).
    """
    from huggingface_hub import HfApi, hf_hub_download

    record = {}
    for name in sets:
        path = os.path.join(out_dir, SNAPSHOT_PATHS[name])
        if name == "geneval":
            from urllib.request import urlopen

            with urlopen(GENEVAL_URL, timeout=60) as response:
                data = response.read()
            if hashlib.sha256(data).hexdigest() != GENEVAL_SHA256:
                raise ValueError(f"{GENEVAL_URL} does not have the expected sha256 {GENEVAL_SHA256}.")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(data)
            revision = GENEVAL_COMMIT
        elif name == "hps":
            revision = HfApi().dataset_info(HPS_BENCHMARK_REPO, revision=hps_revision).sha
            os.makedirs(os.path.join(path, "benchmark"), exist_ok=True)
            for subset in HPS_SUBSETS:
                file = hf_hub_download(HPS_BENCHMARK_REPO, f"benchmark/{subset}.json", repo_type="dataset",
                                       revision=revision)
                with open(file, "rb") as src, open(os.path.join(path, "benchmark", f"{subset}.json"), "wb") as dst:
                    dst.write(src.read())
        else:
            from datasets import load_dataset

            revision = HfApi().dataset_info(COCO30K_REPO, revision=coco_revision).sha
            columns = None if with_images else ["caption"]
            load_dataset(COCO30K_REPO, split="train", revision=revision, columns=columns).save_to_disk(path)
        prompts = eval_set_prompts(name, out_dir, HPS_SUBSETS)
        record[name] = {**EVAL_SET_SOURCES[name], "revision": revision, "count": len(prompts),
                        "sha256": prompts_sha256(prompts)}
    with open(os.path.join(out_dir, SNAPSHOT_RECORD), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    return record


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ranke_trl.evaluation.eval_sets",
                                     description="Copy the evaluation sets into a local folder (network needed once).")
    commands = parser.add_subparsers(dest="command", required=True)
    snap = commands.add_parser("snapshot", help="GenEval, HPSv2 benchmark and COCO-30K prompts into DIR.")
    snap.add_argument("out_dir")
    snap.add_argument("--sets", nargs="+", default=list(SNAPSHOT_PATHS), choices=list(SNAPSHOT_PATHS))
    snap.add_argument("--with_images", action="store_true", help="Also COCO-30K's images (FID reference, ~4.9 GB).")
    args = parser.parse_args(argv)
    record = snapshot_eval_sets(args.out_dir, args.sets, with_images=args.with_images)
    for name, info in record.items():
        print(f"{name}: {info['count']} prompts, revision {info['revision']}, sha256 {info['sha256'][:16]}")
    return 0



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


if __name__ == "__main__":
    raise SystemExit(_main())
