"""The HPSv2 benchmark prompt sets (METHOD.md, Evaluation protocol) and the summary of their scores.

The prompts live in the Hugging Face dataset repository `zhwang/HPDv2` as `benchmark/<subset>.json`, one file per
style: `photo.json`, `concept-art.json`, `anime.json`, `paintings.json`. Each file is a JSON list of prompt
strings (800 each); the official evaluator names the i-th image `<subset>/{i:05d}.jpg`, so prompt order matters.

A local copy (for machines without Hub access) is a directory holding those files, either directly
(`<dir>/photo.json`) or as in the dataset repository (`<dir>/benchmark/photo.json`). To make one elsewhere:

    huggingface-cli download zhwang/HPDv2 --repo-type dataset --include "benchmark/*.json" --local-dir <dir>

The paper reports photo, concept-art and anime; paintings is optional.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

HPS_BENCHMARK_REPO = "zhwang/HPDv2"
HPS_SUBSETS = ("photo", "concept-art", "anime", "paintings")
PAPER_SUBSETS = ("photo", "concept-art", "anime")


def _check_subsets(subsets) -> list[str]:
    subsets = [subsets] if isinstance(subsets, str) else list(subsets)
    unknown = [name for name in subsets if name not in HPS_SUBSETS]
    if unknown:
        raise ValueError(f"Unknown HPSv2 benchmark subsets {unknown}; choose from {list(HPS_SUBSETS)}.")
    if not subsets:
        raise ValueError(f"No subsets given; choose from {list(HPS_SUBSETS)}.")
    return subsets


def _local_file(source: Path, subset: str) -> Path:
    for candidate in (source / f"{subset}.json", source / "benchmark" / f"{subset}.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"No {subset}.json in {source} or {source / 'benchmark'}; copy benchmark/{subset}.json from the "
        f"{HPS_BENCHMARK_REPO} dataset there."
    )


def _hub_file(subset: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(HPS_BENCHMARK_REPO, f"{subset}.json", subfolder="benchmark", repo_type="dataset")
        )
    except Exception as error:  # offline, rate-limited, proxy: all end the same way for the user
        raise RuntimeError(
            f"Could not download benchmark/{subset}.json from the {HPS_BENCHMARK_REPO} dataset ({error}). "
            "Pass source=<dir> with a local copy of the benchmark JSON files."
        ) from error


def load_hps_benchmark_prompts(
    subsets=PAPER_SUBSETS, source: str | os.PathLike | None = None, max_per_subset: int | None = None
) -> dict[str, list[str]]:
    """Prompts of the HPSv2 benchmark, `{subset: [prompt, ...]}` in the given subset order and file order.

    Args:
        subsets: names among `HPS_SUBSETS` (one name or several).
        source: a local directory (see the module docstring), or None to download from the Hub.
        max_per_subset: keep only the first N prompts of each subset (smoke runs); None keeps all.
    """
    subsets = _check_subsets(subsets)
    if max_per_subset is not None and max_per_subset <= 0:
        raise ValueError(f"max_per_subset must be positive or None, got {max_per_subset}.")
    if source is not None and not Path(source).is_dir():
        raise FileNotFoundError(f"HPSv2 benchmark source {source} is not a directory.")
    prompts = {}
    for subset in subsets:
        path = _hub_file(subset) if source is None else _local_file(Path(source), subset)
        with open(path, encoding="utf-8") as handle:
            loaded = json.load(handle)
        if not isinstance(loaded, list) or not all(isinstance(prompt, str) for prompt in loaded):
            raise ValueError(f"{path} must hold a JSON list of prompt strings, as benchmark/{subset}.json does.")
        prompts[subset] = loaded if max_per_subset is None else loaded[:max_per_subset]
    return prompts


def summarize_hps(scores_by_subset: dict[str, list[float]]) -> dict[str, float]:
    """Per-subset mean HPS and their unweighted average over subsets.

    `scores_by_subset`: `{subset: [score per image]}`, scores on the scorer's scale (HPSv2 reports
    100 · cos(image, text), about 20-35). Returns `{"hps/<subset>": mean, ..., "hps/average": mean of means}`;
    the average is over the subsets given, so state which ones when comparing with the paper.
    """
    if not scores_by_subset:
        raise ValueError("No HPS scores given.")
    _check_subsets(list(scores_by_subset))
    summary = {}
    for subset, scores in scores_by_subset.items():
        scores = [float(score) for score in scores]
        if not scores:
            raise ValueError(f"No HPS scores for subset {subset!r}.")
        if not all(math.isfinite(score) for score in scores):
            raise ValueError(f"Subset {subset!r} has non-finite HPS scores; check the scorer's inputs.")
        summary[f"hps/{subset}"] = sum(scores) / len(scores)
    summary["hps/average"] = sum(summary.values()) / len(summary)
    return summary
