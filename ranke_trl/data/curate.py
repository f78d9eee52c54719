"""Curate the paper's training set (Appendix H) in one command:

    python -m ranke_trl.data.curate --recipe recipes/data/blip3o_15k.yaml [--key value ...]

Stages, each saved under `<output_dir>/stages/<stage>` and skipped when its settings' hash matches (`stages.py`):

1. **ingest** (`shards.py`): the shards of the sources the mix needs, `source` from the shard name, images
   centre-cropped and resized to the backbone's resolution;
2. **filter** (`filters.py`): undecodable images, short captions, exact duplicates, captions equal to an evaluation
   prompt (GenEval, HPSv2 benchmark, COCO-30K); each drop counted;
3. **stratify** (`stratify.py`): the mix's counts per source, a seeded permutation per source; a shortfall is
   handled by `on_shortfall` here, before any model call;
4. **compress** (`compress.py`): the captions of the chosen rows to visual tags by an instruct LLM, with a resumable
   cache;
5. **encode** (`encode.py`): ground-truth codes of each image by the backbone's VQ, through the adapter registry;
6. **publish** (`publish.py`): `<output_dir>` as a `save_to_disk` dataset with `curation_manifest.json` and a card
   (`README.md`), optionally pushed to the Hub.

Columns: `prompt`, `original_caption`, `source`, `key`, `image`, `gt_codes`, `tags_truncated`, `clip_truncated`,
`tags_fallback`. Train on it with `dataset_name: <output_dir>` (recipes/janus_clip.yaml).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Sequence

from datasets import Dataset

from .arguments import CurationArguments
from .compress import (
    FLAGS, CaptionCache, clip_token_counter, compress_captions, make_backend, postprocess_tags, settings_record,
)
from .filters import filter_rows, matches_eval_prompt
from .publish import MANIFEST, push_dataset, write_outputs
from .stages import StageStore
from .stratify import allocate, requested_counts, select_rows


def _counts(dataset: Dataset, column: str = "source") -> dict[str, int]:
    return dict(Counter(dataset.select_columns([column])[column]))


def _codec_fingerprint(codec) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(codec.module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class Curation:
    """One curation run of `CurationArguments`; `run()` does every stage and returns the published `Dataset`.

    `backend` (any object with `generate(conversations) -> texts`) and `codec` (a `VQCodec`) replace the model and
    VQ the recipe names, e.g. in tests; otherwise both are loaded only if a stage needs them.
    """

    def __init__(self, args: CurationArguments, backend=None, codec=None, command: str | None = None,
                 log: Callable[[str], None] = print):
        self.args, self.backend, self.log = args, backend, log
        self._codec, self._codec_type = codec, None
        self.command = command or "python -m ranke_trl.data.curate (Python API)"
        self.store = StageStore(os.path.join(args.output_dir, "stages"), log)
        self.manifest: dict = {}
        self.eval_sets_root: str | None = None
        self.requested = requested_counts(args.mix, args.total)  # rows asked of each source, in mix order
        self.sources = [name for name, count in self.requested.items() if count > 0]

    # ------------------------------------------------------------------------------------------------ pieces
    def codec(self):
        if self._codec is None:
            from .encode import load_codec

            a = self.args
            self.log(f"[curate] loading the VQ of {a.codec_model}")
            self._codec, self._codec_type = load_codec(a.codec_model, a.codec_revision, a.codec_backbone,
                                                       a.encode_device)
        return self._codec

    def codec_identity(self) -> dict:
        a = self.args
        if self._codec is not None and self._codec_type is None:  # a codec object passed in: its weights
            codec = self._codec
            return {"model": "<VQCodec passed to Curation>", "weights_sha256": _codec_fingerprint(codec),
                    "image_size": codec.image_size, "num_tokens": codec.num_tokens}
        return {"model": a.codec_model, "revision": a.codec_revision, "backbone": a.codec_backbone}

    def image_size(self) -> int:
        return self.args.image_size or self.codec().image_size

    def eval_prompts(self) -> dict[str, list[str]]:
        """The leakage filter's evaluation prompts, from `eval_sets_dir` or a snapshot made into the output dir."""
        from ..evaluation.eval_sets import HPS_SUBSETS, SNAPSHOT_RECORD, eval_set_prompts, snapshot_eval_sets

        sets = list(self.args.leakage_sets)
        if not sets:
            return {}
        root = self.args.eval_sets_dir
        if root is None:
            root = os.path.join(self.args.output_dir, "eval_sets")
            if not os.path.isfile(os.path.join(root, SNAPSHOT_RECORD)):
                self.log(f"[curate] copying the evaluation sets {sets} into {root}")
                snapshot_eval_sets(root, sets)
        hps = [s for s in HPS_SUBSETS if any(os.path.isfile(os.path.join(root, "hps", *sub, f"{s}.json"))
                                             for sub in ((), ("benchmark",)))]
        self.eval_sets_root = root
        return {name: eval_set_prompts(name, root, hps) for name in sets}

    # ------------------------------------------------------------------------------------------------ stages
    def ingest(self):
        from .shards import ingest, list_shards

        a = self.args
        revision, shards = list_shards(a.source_dataset, self.sources, a.source_revision, a.shard_map())
        self.manifest["source"] = {
            "dataset": a.source_dataset, "requested_revision": a.source_revision, "revision": revision,
            "shards": {s.file: {"source": s.source, "bytes": s.size} for s in shards},
        }
        # an unset image_size is the codec's: hashed by the codec's identity, so a rerun need not load it
        settings = {"dataset": a.source_dataset, "revision": revision, "shards": [(s.file, s.size) for s in shards],
                    "image_size": a.image_size or {"codec": self.codec_identity()}, "image_format": a.image_format,
                    "jpeg_quality": a.jpeg_quality}
        cache = os.path.join(self.store.root, ".ingest_cache")  # from_generator's arrow files, until saved

        def build():
            size = self.image_size()
            dataset = ingest(shards, size, a.image_format, a.jpeg_quality, a.download_shards, a.num_proc, cache)
            return dataset, {"rows": _counts(dataset), "image_size": size}

        try:
            return self.store.run("ingest", settings, None, build)
        finally:
            shutil.rmtree(cache, ignore_errors=True)

    def filter(self, ingested, eval_prompts: dict[str, list[str]]):
        from ..evaluation.eval_sets import prompts_sha256

        a = self.args
        settings = {"min_caption_words": a.min_caption_words,
                    "eval_sets": {name: prompts_sha256(prompts) for name, prompts in eval_prompts.items()}}

        def build():
            columns = ingested.dataset.select_columns(["source", "caption", "image_sha256"])[:]
            kept, dropped, leaks = filter_rows(columns["source"], columns["caption"], columns["image_sha256"],
                                               eval_prompts, a.min_caption_words)
            dataset = ingested.dataset.select(kept)
            return dataset, {"dropped": dropped, "eval_leaks": leaks, "available": _counts(dataset)}

        return self.store.run("filter", settings, ingested.hash, build)

    def stratify(self, filtered, requested: dict[str, int]):
        a = self.args
        allocation = allocate(requested, filtered.stats["available"], a.on_shortfall)  # raises before any model
        for note in allocation.notes:
            self.log(f"[curate] {note}")
        settings = {"requested": requested, "seed": a.seed, "on_shortfall": a.on_shortfall}

        def build():
            sources = filtered.dataset.select_columns(["source"])["source"]
            dataset = filtered.dataset.select(select_rows(sources, allocation, a.seed))
            return dataset, {"requested": allocation.requested, "available": allocation.available,
                             "taken": allocation.taken, "notes": allocation.notes}

        return self.store.run("stratify", settings, filtered.hash, build)

    def compress(self, stratified, eval_prompts: dict[str, list[str]]):
        a = self.args
        settings = settings_record(a.compression())
        cache_path = a.compress_cache or os.path.join(a.output_dir, "cache", "caption_compression.jsonl")

        def build():
            backend = self.backend or make_backend(a.compression(), a.compress_dtype, a.compress_device)
            captions = stratified.dataset.select_columns(["caption"])["caption"]
            outputs, counts = compress_captions(captions, a.compression(), backend, CaptionCache(cache_path),
                                                a.compress_batch_size, a.show_progress)
            count_tokens = clip_token_counter()
            rows = [postprocess_tags(o, c, a.compress_max_words, count_tokens, a.max_clip_tokens)
                    for o, c in zip(outputs, captions)]
            dataset = stratified.dataset.rename_column("caption", "original_caption")
            dataset = dataset.add_column("prompt", [prompt for prompt, _ in rows])
            for flag in FLAGS:
                dataset = dataset.add_column(flag, [flags[flag] for _, flags in rows])
            prompts = [prompt for prompt, _ in rows]
            stats = {**counts, "cache": cache_path, "flags": {f: sum(r[1][f] for r in rows) for f in FLAGS},
                     "prompts_matching_an_eval_prompt": sum(matches_eval_prompt(prompts, eval_prompts)),
                     "resolved_revision": getattr(backend, "resolved_revision", None)}
            return dataset, stats

        return self.store.run("compress", settings, stratified.hash, build)

    def encode(self, compressed):
        from .encode import add_gt_codes, codec_record

        a = self.args
        settings = {"codec": self.codec_identity()}

        def build():
            codec = self.codec()
            if a.image_size not in (None, codec.image_size):
                raise ValueError(f"image_size={a.image_size} but the codec encodes {codec.image_size} px images; "
                                 "leave image_size unset to use the codec's.")
            dataset = add_gt_codes(compressed.dataset, codec, "image", a.encode_batch_size, a.show_progress)
            return dataset, codec_record(codec, a.codec_model, self._codec_type or "<given>", a.codec_revision)

        return self.store.run("encode", settings, compressed.hash, build)

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> Dataset:
        a = self.args
        self.log(f"[curate] requested rows: {self.requested}")
        eval_prompts = self.eval_prompts()
        ingested = self.ingest()
        filtered = self.filter(ingested, eval_prompts)
        stratified = self.stratify(filtered, self.requested)
        compressed = self.compress(stratified, eval_prompts)
        encoded = self.encode(compressed)
        self.manifest = self._manifest(eval_prompts, ingested, filtered, stratified, compressed, encoded)
        write_outputs(encoded.dataset, self.manifest, a.output_dir)
        self.log(f"[curate] wrote {len(encoded.dataset)} rows, {MANIFEST} and README.md to {a.output_dir}")
        if a.push_to_hub:
            push_dataset(encoded.dataset, self.manifest, a.push_to_hub, a.hub_private)
            self.log(f"[curate] pushed to https://huggingface.co/datasets/{a.push_to_hub}")
        from datasets import load_from_disk

        return load_from_disk(a.output_dir)

    def _manifest(self, eval_prompts, ingested, filtered, stratified, compressed, encoded) -> dict:
        from dataclasses import asdict

        import datasets
        import torch
        import transformers

        from .. import __version__
        from ..evaluation.eval_sets import EVAL_SET_SOURCES, prompts_sha256

        a = self.args
        compress = {**settings_record(a.compression()), "batch_size": a.compress_batch_size, "dtype": a.compress_dtype,
                    **{k: compressed.stats.get(k) for k in ("flags", "resolved_revision", "cache",
                                                            "prompts_matching_an_eval_prompt")}}
        return {
            "name": a.name or os.path.basename(os.path.normpath(a.output_dir)),
            "command": self.command,
            "rows": len(encoded.dataset),
            "seed": a.seed,
            "source": self.manifest.get("source") or {"dataset": a.source_dataset, "revision": None},
            "ingest": {"image_size": ingested.stats["image_size"], "image_format": a.image_format,
                       "jpeg_quality": a.jpeg_quality, "rows": ingested.stats["rows"]},
            "filter": {"min_caption_words": a.min_caption_words, "dropped": filtered.stats["dropped"],
                       "eval_leaks": filtered.stats["eval_leaks"]},
            "stratify": {"seed": a.seed, "on_shortfall": a.on_shortfall, **stratified.stats},
            "compress": compress,
            "encode": encoded.stats,
            "eval_sets": {name: {"source": EVAL_SET_SOURCES[name]["source"], "copy": self.eval_sets_root,
                                 "count": len(prompts), "sha256": prompts_sha256(prompts)}
                          for name, prompts in eval_prompts.items()},
            "stage_hashes": {name: stage.hash for name, stage in (
                ("ingest", ingested), ("filter", filtered), ("stratify", stratified), ("compress", compressed),
                ("encode", encoded))},
            "recipe": asdict(a),
            "versions": {"ranke_trl": __version__, "datasets": datasets.__version__,
                         "transformers": transformers.__version__, "torch": torch.__version__},
        }


def curate(args: CurationArguments, backend=None, codec=None, command: str | None = None) -> Dataset:
    """Run every stage of `args` (see the module docstring); returns the published dataset."""
    return Curation(args, backend=backend, codec=codec, command=command).run()


def main(argv: Sequence[str] | None = None, prog: Sequence[str] = ("python", "-m", "ranke_trl.data.curate")) -> int:
    """`python -m ranke_trl.data.curate` and `ranke-trl curate`: `--recipe FILE` plus `--key value` overrides.

    A bad recipe prints one named line and exits with status 2; `prog` is recorded in the manifest's command.
    """
    from ..console import named_setup_errors
    from ..recipes import RecipeParser

    argv = list(sys.argv[1:] if argv is None else argv)
    with named_setup_errors():
        (args,) = RecipeParser((CurationArguments,)).parse_args_and_config(argv)
    curate(args, command=shlex.join([*prog, *argv]))
    return 0


__all__ = ["Curation", "curate", "main"]


if __name__ == "__main__":
    sys.exit(main())
