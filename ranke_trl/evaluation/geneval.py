"""GenEval: write generated images in the official evaluator's layout, and read its results back.

GenEval's detector stack (mmdet 2.x, mmcv-full 1.7, CUDA) is not on PyPI, so scoring runs separately in a clone
of https://github.com/djghosh13/geneval. The layout, one folder per prompt of `evaluation_metadata.jsonl`:

    <out>/00000/metadata.jsonl        # that prompt's metadata record, one JSON object
    <out>/00000/samples/00000.png
    <out>/00000/samples/00001.png
    <out>/00001/...

The official evaluator (checked against the repository's `evaluation/` scripts), run from the GenEval clone:

    python evaluation/evaluate_images.py <out> --outfile <results>/results.jsonl --model-path <detector_dir>
    cd evaluation && python summary_scores.py <results>/results.jsonl

`<detector_dir>` holds `mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth` (from `evaluation/download_models.sh`).
`summary_scores.py` opens `object_names.txt` relative to the working directory, hence the `cd`.
`read_geneval_results` computes the same per-task scores from `results.jsonl` without pandas.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Fixed PNG settings: identical pixels give identical bytes (PIL writes no timestamp chunk).
_PNG_SETTINGS = {"format": "PNG", "compress_level": 6, "optimize": False}


def geneval_metadata_line(metadata: dict) -> bytes:
    """The bytes of `metadata.jsonl`: the record's keys in their given order, `json.dumps` defaults, a newline.

    This equals the record's line in GenEval's `prompts/evaluation_metadata.jsonl`.
    """
    return (json.dumps(metadata, ensure_ascii=True, separators=(", ", ": ")) + "\n").encode("utf-8")


def read_geneval_prompts(metadata_jsonl: str | os.PathLike) -> list[dict]:
    """GenEval's prompt records, e.g. `prompts/evaluation_metadata.jsonl`, in file order (= folder index)."""
    with open(metadata_jsonl, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.size(0) != 3 or not image.is_floating_point():
            raise ValueError(
                f"Tensor images must be float (3, H, W) in [0, 1], got {image.dtype} {tuple(image.shape)}."
            )
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())  # (H, W, 3) uint8 -> RGB
    raise TypeError(f"Images must be PIL images or float (3, H, W) tensors in [0, 1], got {type(image).__name__}.")


class GenEvalWriter:
    """Writes images for GenEval prompts into `out_dir` in the official layout, byte-for-byte reproducibly.

    `add` may be called several times for one prompt (e.g. batch by batch): samples are numbered on from the
    ones already there, provided the metadata is the same.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)

    def prompt_dir(self, index: int) -> Path:
        return self.out_dir / f"{index:05d}"

    def add(self, index: int, metadata: dict, images) -> list[Path]:
        """Write `images` for prompt `index` (its line number in `evaluation_metadata.jsonl`, from 0).

        `metadata`: that prompt's record; it must hold "tag" and "prompt", which the evaluator reads.
        `images`: a list of PIL images or float (3, H, W) tensors in [0, 1], or a (N, 3, H, W) tensor.
        Returns the paths of the PNG files written.
        """
        if index < 0:
            raise ValueError(f"index must be >= 0, got {index}.")
        missing = {"tag", "prompt"} - set(metadata)
        if missing:
            raise ValueError(f"GenEval metadata needs the keys {sorted(missing)}; pass the prompt's full record.")
        if len(images) == 0:
            raise ValueError(f"No images given for prompt {index}.")
        folder = self.prompt_dir(index)
        metadata_file, samples = folder / "metadata.jsonl", folder / "samples"
        line = geneval_metadata_line(metadata)
        if metadata_file.exists():
            if metadata_file.read_bytes() != line:
                raise ValueError(
                    f"{folder} already holds another prompt's metadata; use a fresh out_dir for each run."
                )
        else:
            samples.mkdir(parents=True, exist_ok=True)
            metadata_file.write_bytes(line)
        start = sum(1 for path in samples.glob("*.png"))
        paths = []
        for offset, image in enumerate(images):
            path = samples / f"{start + offset:05d}.png"
            _to_pil(image).save(path, **_PNG_SETTINGS)
            paths.append(path)
        return paths


def read_geneval_results(results_jsonl: str | os.PathLike) -> dict[str, float]:
    """Per-task accuracy and the overall GenEval score from the official evaluator's `results.jsonl`.

    Each line is one image with at least "tag" and "correct" (bool). A task's accuracy is the fraction of its
    images judged correct; the overall score is the mean over tasks of those accuracies, as in GenEval's
    `summary_scores.py`. Returns `{"geneval/overall": ..., "geneval/<tag>": ...}`, values in [0, 1], tags in
    order of first appearance.
    """
    correct_by_tag: dict[str, list[bool]] = defaultdict(list)
    with open(results_jsonl, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "tag" not in record or "correct" not in record:
                raise ValueError(
                    f"{results_jsonl}, line {number}: expected the keys 'tag' and 'correct' of GenEval's "
                    "evaluate_images.py output."
                )
            correct_by_tag[record["tag"]].append(bool(record["correct"]))
    if not correct_by_tag:
        raise ValueError(f"{results_jsonl} holds no results; did evaluate_images.py find the images?")
    per_tag = {f"geneval/{tag}": float(np.mean(values)) for tag, values in correct_by_tag.items()}
    return {"geneval/overall": float(np.mean(list(per_tag.values()))), **per_tag}
