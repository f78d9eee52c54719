"""`CurationArguments`: the keys of a curation recipe (`recipes/data/*.yaml`), one flat dataclass per the project's
recipe rules (read by `ranke_trl.recipes.RecipeParser`: strict keys, typed values, command-line overrides).

Defaults are the paper's (Appendix H): BLIP3o-60k, the Table H.1 mix of 15,000 rows, Qwen2.5-7B-Instruct with the
paper's prompt and at most 50 words, Janus-Pro-1B codes at 384 px.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .compress import BACKENDS, PAPER_TEMPLATE, CompressionSettings
from .shards import BLIP3O_REPO, SOURCE_SHARDS
from .stratify import SHORTFALL_POLICIES

#: Table H.1 as ratios (JourneyDB 30%, DALL-E 3 20%, MS-COCO 20%, human gestures 20%, GenEval 5%, typography 5%)
PAPER_MIX = {"journeydb": 0.30, "dalle3": 0.20, "mscoco": 0.20, "human_gestures": 0.20, "geneval": 0.05,
             "typography": 0.05}
PAPER_TOTAL = 15000
LEAKAGE_SETS = ("geneval", "hps", "coco30k")


def _mapping(value, key: str) -> dict | None:
    if value is None or isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{key} must be a mapping (YAML, or JSON on the command line); got {value!r}.") from error
    if not isinstance(parsed, dict):
        raise ValueError(f"{key} must be a mapping; got {value!r}.")
    return parsed


@dataclass
class CurationArguments:
    """Settings of `python -m ranke_trl.data.curate`; each field's help is its documentation."""

    # ---- where the rows come from
    source_dataset: str = field(
        default=BLIP3O_REPO,
        metadata={"help": "Hub dataset of WebDataset tar shards, or a local folder of them (same file names)."},
    )
    source_revision: str | None = field(
        default="main", metadata={"help": "Hub revision (branch, tag or commit); the manifest records its commit."}
    )
    source_shards: dict | str | None = field(
        default=None,
        metadata={"help": "source -> shard file stems (matched case-insensitively); None: BLIP3o-60k's mapping "
                  f"{dict((k, list(v)) for k, v in SOURCE_SHARDS.items())}."},
    )
    download_shards: bool = field(
        default=False,
        metadata={"help": "Download the needed shards to the Hugging Face cache before reading them (resumable, "
                  "reusable), instead of streaming them."},
    )
    num_proc: int = field(default=1, metadata={"help": "Processes reading shards in parallel (one shard each)."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Side of the square images stored at ingest; None: the codec's resolution (384 for "
                  "Janus-Pro). It must equal the codec's."},
    )
    image_format: str = field(default="jpeg", metadata={"help": "How resized images are stored: 'jpeg' or 'png'."})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of the stored images (4:4:4)."})
    # ---- filter
    min_caption_words: int = field(default=3, metadata={"help": "Drop captions with fewer words."})
    leakage_sets: list[str] = field(
        default_factory=lambda: list(LEAKAGE_SETS),
        metadata={"help": f"Evaluation prompt sets whose prompts no training caption may equal: {LEAKAGE_SETS}."},
    )
    eval_sets_dir: str | None = field(
        default=None,
        metadata={"help": "A local copy of the evaluation sets (`python -m ranke_trl.evaluation.eval_sets snapshot "
                  "DIR`); None: download them from their documented sources into <output_dir>/eval_sets first."},
    )
    # ---- stratify
    mix: dict | str | None = field(
        default_factory=lambda: dict(PAPER_MIX),
        metadata={"help": "Rows per source: counts, or ratios with `total` (largest-remainder rounding)."},
    )
    total: int | None = field(default=PAPER_TOTAL, metadata={"help": "Rows in all when `mix` gives ratios."})
    seed: int = field(default=0, metadata={"help": "Seeds each source's permutation and the final order."})
    on_shortfall: str = field(
        default="error",
        metadata={"help": f"When a source has fewer rows than asked: {SHORTFALL_POLICIES}. 'error' raises before "
                  "any model call, naming requested and available rows per source."},
    )
    # ---- compress
    compress_backend: str = field(default="hf", metadata={"help": f"Caption compression backend: {BACKENDS}."})
    compress_model: str = field(
        default="Qwen/Qwen2.5-7B-Instruct", metadata={"help": "Any instruct chat model id or local directory."}
    )
    compress_revision: str | None = field(
        default="main", metadata={"help": "Its Hub revision (part of the cache key)."}
    )
    compress_template: str = field(
        default=PAPER_TEMPLATE, metadata={"help": "User message; '{original_caption}' is replaced by the caption."}
    )
    compress_system_prompt: str | None = field(
        default=None, metadata={"help": "System message; None keeps the chat template's default."}
    )
    compress_max_words: int = field(default=50, metadata={"help": "Words kept of each compressed caption."})
    compress_max_new_tokens: int = field(default=128, metadata={"help": "Tokens generated at most (50 words ≈ 100)."})
    compress_repetition_penalty: float = field(
        default=1.05, metadata={"help": "Stated explicitly (Qwen2.5's generation_config.json also sets 1.05)."}
    )
    compress_batch_size: int = field(default=32, metadata={"help": "Captions per generate call."})
    compress_dtype: str = field(default="bfloat16", metadata={"help": "Weights dtype of the compression model."})
    compress_device: str | None = field(default=None, metadata={"help": "e.g. 'cuda:0'; None: CUDA if available."})
    compress_cache: str | None = field(
        default=None,
        metadata={"help": "The JSONL cache of raw outputs; None: <output_dir>/cache/caption_compression.jsonl. "
                  "Share it between recipes that compress the same captions (e.g. Janus and LlamaGen sets)."},
    )
    max_clip_tokens: int = field(default=77, metadata={"help": "CLIP context a prompt must fit, SOT/EOT included."})
    # ---- encode
    codec_model: str = field(
        default="deepseek-community/Janus-Pro-1B",
        metadata={"help": "Checkpoint of a registered backbone whose VQ encodes the images (its model_type picks "
                  "the adapter), or a standalone VQ directory with `codec_backbone`."},
    )
    codec_revision: str | None = field(default=None, metadata={"help": "Hub revision of `codec_model`."})
    codec_backbone: str | None = field(
        default=None, metadata={"help": "Model type ('janus', 'llamagen') when `codec_model` is a VQ directory."}
    )
    encode_batch_size: int = field(default=32, metadata={"help": "Images per VQ encoder call."})
    encode_device: str | None = field(default=None, metadata={"help": "Device of the VQ; None: CUDA if available."})
    # ---- publish
    output_dir: str = field(
        default="outputs/data/blip3o_15k_janus",
        metadata={"help": "The curated set (`save_to_disk`, what `dataset_name` points at), its manifest and card; "
                  "stage folders go to <output_dir>/stages."},
    )
    name: str | None = field(default=None, metadata={"help": "The set's title on its card; None: output_dir's name."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Also push to this Hub dataset id."})
    hub_private: bool = field(default=False, metadata={"help": "Make the pushed dataset private."})
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        self.mix = _mapping(self.mix, "mix")
        self.source_shards = _mapping(self.source_shards, "source_shards")
        if not self.mix:
            raise ValueError("mix must name at least one source.")
        if self.on_shortfall not in SHORTFALL_POLICIES:
            raise ValueError(f"on_shortfall={self.on_shortfall!r}; choose from {SHORTFALL_POLICIES}.")
        unknown = sorted(set(self.leakage_sets) - set(LEAKAGE_SETS))
        if unknown:
            raise ValueError(f"leakage_sets {unknown} unknown; choose from {LEAKAGE_SETS}.")
        if self.image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format={self.image_format!r}; use 'jpeg' or 'png'.")
        if min(self.num_proc, self.compress_batch_size, self.encode_batch_size) < 1:
            raise ValueError("num_proc, compress_batch_size and encode_batch_size must be >= 1.")
        self.compression()  # checks the compression settings now, before anything runs

    def shard_map(self) -> dict[str, tuple[str, ...]]:
        return {k: tuple(v) for k, v in (self.source_shards or SOURCE_SHARDS).items()}

    def compression(self) -> CompressionSettings:
        return CompressionSettings(
            backend=self.compress_backend,
            model=self.compress_model,
            revision=self.compress_revision,
            template=self.compress_template,
            system_prompt=self.compress_system_prompt,
            max_new_tokens=self.compress_max_new_tokens,
            repetition_penalty=self.compress_repetition_penalty,
            max_words=self.compress_max_words,
            max_clip_tokens=self.max_clip_tokens,
        )


__all__ = ["CurationArguments", "LEAKAGE_SETS", "PAPER_MIX", "PAPER_TOTAL"]
