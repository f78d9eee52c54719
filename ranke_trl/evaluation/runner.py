"""Evaluate a trained system in one command (METHOD.md, "Evaluation protocol" and "Diagnostics").

    accelerate launch examples/evaluate.py --recipe recipes/eval_coco.yaml
    ranke-trl eval --recipe recipes/eval_tiny.yaml --max_prompts 8

`evaluate(EvalArguments)` loads a policy (and optionally another decoder), generates `images_per_prompt` images for
every prompt of a prompt set, streams each batch through the chosen metrics and forgets it, then writes
`<output_dir>/results.json` (`results.write_results`) and `<output_dir>/results.md`.

- Processes take every `num_processes`-th prompt. Each prompt is sampled with its own generator, seeded from
  `(seed, subset, index)` (`eval_sets.prompt_seed`), so its images depend neither on the number of processes nor
  on `batch_size`. The policy's sampler takes one generator per image row.
- Metric states (CLIP sums, FID feature moments, HPS scores, code histograms) are reduced across processes at the
  end; nothing else is exchanged, so processes with fewer prompts never wait inside the loop.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from torchvision.utils import save_image
from tqdm.auto import tqdm

from ranke_trl.data import default_split
from ranke_trl.diagnostics import CodeHistogram, ShiftDiagnostics
from ranke_trl.policy import VQCodec, load_policy_model, make_policy
from ranke_trl.rewards import load_reward
from ranke_trl.sampling import SamplingArguments, describe_sampling, load_sampling

from .clip_score import CLIPScoreMetric
from .eval_sets import PROMPT_SETS, get_prompt_set, iter_image_batches, load_eval_prompts, open_dataset, prompt_seed
from .fid import FIDMetric
from .geneval import GenEvalWriter, read_geneval_results
from .hps_benchmark import PAPER_SUBSETS, summarize_hps
from .metrics_registry import EVAL_METRICS, get_metric
from .results import read_results, results_table, write_results

METRICS = ("clip_score", "fid", "hps", "geneval", "shift")
TINY_CLIP = "tiny-clip"  # a random tiny CLIP (ranke_trl.tiny), for offline tests and smoke runs only
DTYPES = ("float32", "bfloat16", "float16")
GENEVAL_COMMAND = (
    "cd <geneval clone> && python evaluation/evaluate_images.py {images} --outfile {results} "
    "--model-path <detector_dir>; then join the scores: ranke-trl eval --recipe <this recipe> "
    "--metrics geneval --geneval_results {results}"
)


@dataclass
class EvalArguments(SamplingArguments):
    """Settings of one evaluation run; every field is a recipe key (`recipes/eval_*.yaml`).

    The sampling settings (`guidance_scale`, `temperature`, `top_k`, `top_p`) are `SamplingArguments`: those left
    unset take the values saved with the evaluated run (`sampling_config.json` in a RankE output directory), else
    the library defaults; `evaluate` prints which.
    """

    # ------------------------------------------------------------------ system
    policy_name_or_path: str | None = field(
        default=None, metadata={"help": "Policy: a Hub id or local directory, e.g. a RankE output_dir."}
    )
    decoder_name_or_path: str | None = field(
        default=None, metadata={"help": "A VQ tokenizer of the policy's backbone replacing its own (Hub id or directory)."}
    )
    decoder_subfolder: str | None = field(
        default=None, metadata={"help": "Subfolder of decoder_name_or_path, e.g. 'decoder' in a RankE output_dir."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the policy."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run model code from the Hub repository."})
    dtype: str = field(default="float32", metadata={"help": f"Policy and decoder dtype, one of {DTYPES}."})
    prompt_template: str | None = field(
        default=None, metadata={"help": "Template with a `{prompt}` slot; default: the backbone's chat format."}
    )
    # ------------------------------------------------------------------ prompts
    prompt_set: str = field(
        default="dataset",
        metadata={"help": "A registered prompt set: 'dataset', 'hps', 'geneval', or a plugin's (ShapesWorld: 'shapes')."},
    )
    prompt_dataset: str | None = field(
        default=None, metadata={"help": "For prompt_set 'dataset': a Hub id, local dataset, folder or data file."}
    )
    prompt_dataset_config: str | None = field(default=None, metadata={"help": "Configuration of prompt_dataset."})
    prompt_split: str | None = field(
        default=None, metadata={"help": "Split; default 'train', or a registered set's own ('test' for shapes)."}
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column of prompt_dataset holding the prompts."})
    max_prompts: int | None = field(default=None, metadata={"help": "Keep the first N prompts (per HPS subset)."})
    hps_benchmark_dir: str | None = field(
        default=None, metadata={"help": "Local copy of zhwang/HPDv2's benchmark/*.json; None downloads them."}
    )
    hps_subsets: list[str] = field(
        default_factory=lambda: list(PAPER_SUBSETS), metadata={"help": "HPSv2 benchmark subsets to evaluate."}
    )
    geneval_metadata: str | None = field(
        default=None, metadata={"help": "For prompt_set 'geneval': GenEval's evaluation_metadata.jsonl."}
    )
    dataset_seed: int = field(
        default=0, metadata={"help": "Seed of generated prompt sets and reference datasets (e.g. ShapesWorld's)."}
    )
    # ------------------------------------------------------------------ sampling
    seed: int = field(default=0, metadata={"help": "Base seed; each prompt's seed is derived from it and its index."})
    images_per_prompt: int = field(default=1, metadata={"help": "Images per prompt (GenEval's protocol: 4)."})
    batch_size: int = field(
        default=16, metadata={"help": "Images decoded and scored per step on each process (at least one prompt's)."}
    )
    do_sample: bool = field(default=True, metadata={"help": "Sample; False takes the most likely code (greedy)."})
    # ------------------------------------------------------------------ metrics
    metrics: list[str] = field(
        default_factory=lambda: ["clip_score", "fid"],
        metadata={"help": f"Any of {METRICS}, or a plugin's (`register_metric`; ShapesWorld: 'shapes')."},
    )
    scorer_batch_size: int = field(default=32, metadata={"help": "Images per CLIP / HPS forward."})
    clip_model_name: str = field(
        default="ViT-L-14", metadata={"help": f"open_clip model of the CLIP score; '{TINY_CLIP}' for tests."}
    )
    clip_pretrained: str | None = field(
        default="openai", metadata={"help": "CLIP weights: an open_clip tag, 'hf-hub:...', or a local file/dir."}
    )
    clip_force_quick_gelu: bool | None = field(
        default=None, metadata={"help": "QuickGELU; None: on for the 'openai' tag. Set true for OpenAI weight files."}
    )
    hps_version: str = field(default="v2.1", metadata={"help": "HPS version, 'v2.0' or 'v2.1'."})
    hps_checkpoint: str | None = field(
        default=None, metadata={"help": "Local HPS checkpoint file; None downloads it from xswu/HPSv2."}
    )
    hps_model: str = field(default="ViT-H-14", metadata={"help": f"HPS architecture; '{TINY_CLIP}' for tests."})
    reference_dataset: str | None = field(
        default=None,
        metadata={"help": "Real images for FID and the shift diagnostics: a source as prompt_dataset (a registered "
                  "dataset such as 'shapes' included)."},
    )
    reference_dataset_config: str | None = field(default=None, metadata={"help": "Configuration of reference_dataset."})
    reference_split: str | None = field(
        default=None, metadata={"help": "Split; default 'train', or a registered dataset's own ('test' for shapes)."}
    )
    reference_image_column: str = field(default="image", metadata={"help": "Column holding the reference images."})
    max_reference_images: int | None = field(default=None, metadata={"help": "Keep the first N reference images."})
    fid_feature_extractor: str = field(
        default="inception", metadata={"help": "'inception' (2048-d, standard) or 'tiny' (TinyFIDExtractor, tests)."}
    )
    inception_weights: str | None = field(
        default=None, metadata={"help": "Local pt_inception-2015-12-05-6726825d.pth; None downloads it."}
    )
    fid_reference_stats: str | None = field(
        default=None,
        metadata={"help": "FID real statistics (.safetensors): loaded if the file exists, else computed from "
                  "reference_dataset and saved there."},
    )
    shift_reference_histogram: str | None = field(
        default=None,
        metadata={"help": "Ground-truth code histogram (.safetensors): loaded if the file exists, else counted from "
                  "reference_dataset and saved there."},
    )
    shift_smoothing: float = field(default=1.0, metadata={"help": "Additive smoothing of the token KL's counts."})
    geneval_output_dir: str | None = field(
        default=None, metadata={"help": "Where the GenEval export goes; default <output_dir>/geneval."}
    )
    geneval_results: str | None = field(
        default=None,
        metadata={"help": "The official evaluator's results.jsonl, joined into the results. With metrics [geneval], "
        "nothing is generated: the scores join <output_dir>/results.json."},
    )
    save_images: bool = field(default=False, metadata={"help": "Also write every image to <output_dir>/images/."})
    # ------------------------------------------------------------------ output
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where results.json and results.md go."})
    run_name: str | None = field(default=None, metadata={"help": "Row name in tables; default the policy's name."})

    def __post_init__(self):
        registered = {name: get_metric(name) for name in self.metrics if name not in METRICS}  # loads plugins
        if None in registered.values() or not self.metrics:
            known = [*METRICS, *sorted(EVAL_METRICS)]
            raise ValueError(f"metrics {self.metrics} must be a non-empty subset of {known}.")
        if self.policy_name_or_path is None and not self.join_only:
            raise ValueError("Set policy_name_or_path to a Hub id or a local directory (e.g. a RankE output_dir).")
        prompt_set = get_prompt_set(self.prompt_set)  # a ValueError naming the known sets
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown dtype {self.dtype!r}; choose from {list(DTYPES)}.")
        if self.fid_feature_extractor not in ("inception", "tiny"):
            raise ValueError(f"fid_feature_extractor is 'inception' or 'tiny', not {self.fid_feature_extractor!r}.")
        if min(self.images_per_prompt, self.batch_size, self.scorer_batch_size) < 1:
            raise ValueError("images_per_prompt, batch_size and scorer_batch_size must all be >= 1.")
        if self.prompt_set == "dataset" and self.prompt_dataset is None and not self.join_only:
            raise ValueError("prompt_set 'dataset' needs prompt_dataset (a Hub id, local dataset, folder or file).")
        if self.prompt_set == "geneval" and self.geneval_metadata is None:
            raise ValueError("prompt_set 'geneval' needs geneval_metadata (GenEval's evaluation_metadata.jsonl).")
        if "hps" in self.metrics and self.prompt_set != "hps":
            raise ValueError("The 'hps' metric scores the HPSv2 benchmark: set prompt_set: hps.")
        if "geneval" in self.metrics and not prompt_set.geneval_metadata and not self.join_only:
            known = sorted(name for name, entry in PROMPT_SETS.items() if entry.geneval_metadata)
            raise ValueError(f"The 'geneval' export needs prompts with GenEval metadata: prompt_set one of {known}.")
        for metric, stats in (("fid", self.fid_reference_stats), ("shift", self.shift_reference_histogram)):
            if metric in self.metrics and self.reference_dataset is None and not _is_file(stats):
                key = "fid_reference_stats" if metric == "fid" else "shift_reference_histogram"
                raise ValueError(f"'{metric}' needs real images: set reference_dataset, or {key} to an existing file.")
        for entry in registered.values():
            if entry.check is not None:
                entry.check(self)

    @property
    def join_only(self) -> bool:
        """Only join GenEval's scores into existing results: nothing to generate."""
        return self.metrics == ["geneval"] and self.geneval_results is not None


class TinyFIDExtractor(nn.Module):
    """FID features for offline smoke runs: 8x8 average pooling, then a fixed random projection 192 -> 16.

    (B, 3, H, W) in [0, 1] -> (B, 16). Its FID is not comparable with Inception FID; unlike a random-weight
    Inception (FID ≈ 0 for anything), its features move with the pixels, so the whole FID path is exercised.
    """

    num_features = 16
    name = "TinyFIDExtractor (8x8 avg pool, fixed random projection 192->16, seed 0)"

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("projection", torch.randn(3 * 8 * 8, self.num_features, generator=generator))

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images01.float(), 8).flatten(1) @ self.projection


def load_system(args: EvalArguments, device) -> tuple[nn.Module, object, VQCodec]:
    """`(model, policy, codec)`: the policy in eval mode on `device`, and the VQ that renders its codes."""
    init_kwargs = {"dtype": args.dtype} | ({"revision": args.revision} if args.revision else {})
    init = SimpleNamespace(model_init_kwargs=init_kwargs, trust_remote_code=args.trust_remote_code)
    model, processor = load_policy_model(args.policy_name_or_path, init)
    model.to(device).eval()
    policy = make_policy(model, processor, args.prompt_template)
    if args.decoder_name_or_path is None:
        return model, policy, policy.codec(model)
    subfolder = {"subfolder": args.decoder_subfolder} if args.decoder_subfolder else {}
    codec = policy.load_codec(args.decoder_name_or_path, dtype=getattr(torch, args.dtype), **subfolder)
    codec.module.to(device).eval()
    if (codec.codebook_size, codec.num_tokens) != (policy.codebook_size, policy.num_image_tokens):
        raise ValueError(
            f"The decoder {args.decoder_name_or_path} has {codec.codebook_size} codes and {codec.num_tokens} tokens "
            f"per image, the policy {policy.codebook_size} and {policy.num_image_tokens}; use the decoder trained "
            "with this policy (a RankE output_dir with decoder_subfolder: decoder)."
        )
    policy.attach_codec_module(model, None)  # the policy's own VQ is replaced; free it
    return model, policy, codec


def sample_prompt_codes(policy, model, records, args: EvalArguments, device) -> torch.LongTensor:
    """Codes (len(records) * images_per_prompt, N) in [0, K), prompt-major, drawn in one batch.

    Each image has its own generator, seeded from its prompt's seed and its index within the prompt, so an image
    depends only on (seed, prompt, index): not on the batch size or the number of processes.
    """
    prompts = [record.prompt for record in records for _ in range(args.images_per_prompt)]
    generators = [
        torch.Generator(device=device).manual_seed(prompt_seed(args.seed, record) + j)
        for record in records
        for j in range(args.images_per_prompt)
    ]
    return policy.sample_codes(
        model, policy.encode_prompts(prompts, device), sampler=args.sampler, guidance_scale=args.guidance_scale,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, do_sample=args.do_sample,
        generator=generators,
    )


def _load_scorer(kind: str, args: EvalArguments, device):
    """The CLIP (`kind="clip"`) or HPS reward model that scores images, loaded once; `TINY_CLIP` gives random ones."""
    common = {"device": device, "batch_size": args.scorer_batch_size}
    if kind == "clip":
        if args.clip_model_name == TINY_CLIP:
            return load_reward("tiny_clip", **common)
        return load_reward("clip", model_name=args.clip_model_name, pretrained=args.clip_pretrained,
                           force_quick_gelu=args.clip_force_quick_gelu, **common)
    if args.hps_model == TINY_CLIP:
        from ranke_trl.tiny import build_tiny_clip

        return load_reward("hps", version=args.hps_version, model=build_tiny_clip(seed=1), **common)
    return load_reward("hps", version=args.hps_version, checkpoint=args.hps_checkpoint, model_name=args.hps_model,
                       **common)


def _is_file(path: str | None) -> bool:
    return path is not None and os.path.isfile(path)


def _reduce_fid_side(fid: FIDMetric, accelerator: Accelerator, side: str) -> None:
    # torchmetrics keeps feature sums; summing them over processes gives the statistics of all images.
    metric = fid.metric
    for name in (f"{side}_features_sum", f"{side}_features_cov_sum", f"{side}_features_num_samples"):
        setattr(metric, name, accelerator.reduce(getattr(metric, name), reduction="sum"))
    metric._computed = None


class MetricSuite:
    """The chosen metrics of one run: `prepare_references()`, `update(...)` per batch, then `compute()`; a plugin's
    metrics (`metrics_registry.register_metric`) answer the same three calls."""

    def __init__(self, args: EvalArguments, codec: VQCodec, accelerator: Accelerator):
        self.args, self.codec, self.accelerator = args, codec, accelerator
        device, chosen = accelerator.device, set(args.metrics)
        self.clip = self.hps = self.fid = self.histogram = self.shift = self.geneval = None
        self.hps_scores: list[tuple[str, float]] = []  # (subset, score) of this process's images
        if "clip_score" in chosen:
            self.clip = CLIPScoreMetric(_load_scorer("clip", args, device))
        if "hps" in chosen:
            self.hps = _load_scorer("hps", args, device)
        if "fid" in chosen:
            tiny = args.fid_feature_extractor == "tiny"
            self.fid = FIDMetric(TinyFIDExtractor() if tiny else None, args.inception_weights, device=device)
            self.fid.metric.sync_on_compute = self.fid.metric._to_sync = False  # reduced explicitly in compute()
        if "shift" in chosen:
            self.histogram = CodeHistogram(codec.codebook_size)
        if "geneval" in chosen:
            folder = Path(args.geneval_output_dir or Path(args.output_dir) / "geneval")
            if folder.is_dir() and any(folder.iterdir()):
                raise FileExistsError(f"{folder} holds an earlier GenEval export; delete it or set geneval_output_dir.")
            self.geneval = GenEvalWriter(folder)
        self.reference_meta: dict = {}
        # A plugin's metrics (`register_metric`), driven through the same three calls as the built-in ones.
        self.registered = {name: get_metric(name).factory(args, codec, accelerator)
                           for name in args.metrics if name not in METRICS}

    # ------------------------------------------------------------------------------------------ references
    def prepare_references(self) -> None:
        """Load FID's real statistics and the ground-truth code histogram from their files, or compute them."""
        args = self.args
        fid_file = self.fid is not None and _is_file(args.fid_reference_stats)
        gt_file = self.histogram is not None and _is_file(args.shift_reference_histogram)
        if fid_file:
            self.fid.load_reference(args.fid_reference_stats)
            self.reference_meta["fid"] = {"statistics_file": args.fid_reference_stats}
        gt = None
        if gt_file:
            gt = CodeHistogram.load(args.shift_reference_histogram, self.codec.codebook_size)
            self.reference_meta["shift"] = {"histogram_file": args.shift_reference_histogram}
        need_fid, need_gt = self.fid is not None and not fid_file, self.histogram is not None and not gt_file
        if need_fid or need_gt:
            counted = self._read_reference_images(need_fid, need_gt)
            gt = counted if need_gt else gt
        if self.histogram is not None:
            self.shift = ShiftDiagnostics(gt.counts, self.codec.codebook_size, args.shift_smoothing)
        for metric in self.registered.values():
            metric.prepare_references()

    def _read_reference_images(self, fid: bool, gt: bool) -> CodeHistogram | None:
        """One pass over the reference images, each process its share: FID real features and/or gt codes."""
        args, accel = self.args, self.accelerator
        split = args.reference_split or default_split(args.reference_dataset)
        dataset = open_dataset(args.reference_dataset, split, args.reference_dataset_config,
                               num_rows=args.max_reference_images, seed=args.dataset_seed)
        histogram = CodeHistogram(self.codec.codebook_size) if gt else None
        size = self.codec.image_size  # real images at the generated resolution, so both sides are compared alike
        indices = range(accel.process_index, len(dataset), accel.num_processes)
        batches = iter_image_batches(dataset, args.reference_image_column, indices, size, args.batch_size)
        for pixels in tqdm(batches, desc="Reference images", disable=not accel.is_main_process):
            if fid:
                self.fid.update_real((pixels + 1) / 2)
            if gt:
                histogram.update(self.codec.encode(pixels.to(accel.device)))
        source = {"dataset": args.reference_dataset, "split": split, "column": args.reference_image_column,
                  "num_images": len(dataset), "preprocess": f"short side to {size} px (bicubic, antialiased), "
                  "centre crop"}
        if fid:
            _reduce_fid_side(self.fid, accel, "real")
            self.reference_meta["fid"] = source
            if args.fid_reference_stats and accel.is_main_process:
                Path(args.fid_reference_stats).parent.mkdir(parents=True, exist_ok=True)
                self.fid.save_reference(args.fid_reference_stats)  # the next runs load these statistics
        if gt:
            histogram.counts = accel.reduce(histogram.counts.to(accel.device), reduction="sum").cpu()
            self.reference_meta["shift"] = source
            if args.shift_reference_histogram and accel.is_main_process:
                Path(args.shift_reference_histogram).parent.mkdir(parents=True, exist_ok=True)
                histogram.save(args.shift_reference_histogram)
        return histogram

    # ------------------------------------------------------------------------------------------ per batch
    def update(self, records: list, codes: torch.LongTensor, images01: torch.Tensor) -> None:
        """Score one batch: `codes` (B, N) and `images01` (B, 3, H, W) in [0, 1], `images_per_prompt` per record."""
        per = self.args.images_per_prompt
        prompts = [record.prompt for record in records for _ in range(per)]
        if self.clip is not None:
            self.clip.update(images01, prompts)
        if self.hps is not None:
            scores = self.hps(prompts=prompts, completions=images01)
            self.hps_scores += [(records[i // per].subset, score) for i, score in enumerate(scores)]
        if self.fid is not None:
            self.fid.update_fake(images01)
        if self.histogram is not None:
            self.histogram.update(codes)
        for j, record in enumerate(records):
            own = images01[j * per : (j + 1) * per]
            if self.geneval is not None:
                self.geneval.add(record.index, record.metadata, own)
            if self.args.save_images:
                for k, image in enumerate(own):
                    path = Path(self.args.output_dir) / "images" / f"{record.name}_{k:02d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_image(image, path)
        for metric in self.registered.values():
            metric.update(records, codes, images01)

    # ------------------------------------------------------------------------------------------ results
    def compute(self) -> tuple[dict, dict]:
        """`(metrics, meta)` over all processes' images; every process gets the same values."""
        accel, metrics, meta = self.accelerator, {}, {}
        if self.clip is not None:
            total = torch.tensor([self.clip.score_sum, self.clip.num_images], dtype=torch.float64, device=accel.device)
            score_sum, count = accel.reduce(total, reduction="sum").tolist()
            metrics["clip_score"] = score_sum / count
            meta["clip_score"] = {**self.clip.description, "num_images": int(count)}
        if self.fid is not None:
            _reduce_fid_side(self.fid, accel, "fake")
            metrics["fid"] = self.fid.compute()
            meta["fid"] = {**self.fid.description, "reference": self.reference_meta["fid"]}
        if self.hps is not None:
            by_subset = defaultdict(list)
            for subset, score in gather_object(self.hps_scores):
                by_subset[subset].append(score)
            metrics.update(summarize_hps({s: by_subset[s] for s in self.args.hps_subsets if s in by_subset}))
            meta["hps"] = {"version": self.hps.version, "checkpoint": self.hps.checkpoint,
                           "model": self.args.hps_model, "scale": "raw cosine, as hpsv2.score and the paper's Table 3",
                           "num_images": {s: len(v) for s, v in by_subset.items()}}
        if self.shift is not None:
            counts = accel.reduce(self.histogram.counts.to(accel.device), reduction="sum").cpu()
            metrics.update(self.shift.from_counts(counts))
            meta["shift"] = {**self.shift.description, "reference": self.reference_meta["shift"],
                             "num_policy_codes": int(counts.sum())}
        if self.geneval is not None:
            # Absolute paths: the evaluator runs from the GenEval clone.
            images, results = self.geneval.out_dir.resolve(), Path(self.args.output_dir).resolve() / "geneval.jsonl"
            meta["geneval"] = {"export_dir": str(images), "images_per_prompt": self.args.images_per_prompt,
                               "evaluator": GENEVAL_COMMAND.format(images=images, results=results)}
        for name, metric in self.registered.items():
            own, own_meta = metric.compute()
            clash = sorted((own.keys() & metrics.keys()) | (own_meta.keys() & meta.keys()))
            if clash:
                raise ValueError(f"The metric {name!r} reports {clash}, as another chosen metric does; choose one.")
            metrics.update(own)
            meta.update(own_meta)
        return metrics, meta


def _prompt_source(args: EvalArguments) -> str | None:
    sources = {"dataset": args.prompt_dataset, "geneval": args.geneval_metadata, "hps": args.hps_benchmark_dir}
    return sources.get(args.prompt_set, args.prompt_dataset)  # a plugin's set reads prompt_dataset, if it needs one


def _run_meta(args: EvalArguments, num_prompts: int, num_processes: int) -> dict:
    sampling = {key: getattr(args, key) for key in ("seed", "images_per_prompt", "guidance_scale", "temperature",
                                                     "top_k", "top_p", "do_sample", "dtype")}
    sampling["seed_derivation"] = "numpy SeedSequence([seed, crc32(subset) or 0, prompt index]) per prompt"
    return {
        "prompts": {"prompt_set": args.prompt_set, "source": _prompt_source(args), "num_prompts": num_prompts},
        "sampling": sampling,
        "num_processes": num_processes,
        "settings": asdict(args),  # the whole recipe, so a results file says how to reproduce it
    }


def _finish(args: EvalArguments, run_name: str | None, metrics: dict, meta: dict, is_main: bool) -> dict:
    """The results dict; the main process also writes results.json and results.md and prints the table."""
    run_name = run_name or args.run_name or Path(str(args.policy_name_or_path).rstrip("/")).name
    if not is_main:
        return {"run_name": run_name, "metrics": metrics, "meta": meta}
    results = write_results(Path(args.output_dir) / "results.json", run_name, metrics, meta)
    table = results_table([results])
    (Path(args.output_dir) / "results.md").write_text(table, encoding="utf-8")
    print(table)
    return results


def _join_geneval(args: EvalArguments, metrics: dict, meta: dict) -> None:
    metrics.update(read_geneval_results(args.geneval_results))
    meta["geneval"] = {**meta.get("geneval", {}), "results_file": str(args.geneval_results),
                       "scorer": "official GenEval evaluator (djghosh13/geneval), summary as summary_scores.py"}


def evaluate(args: EvalArguments, accelerator: Accelerator | None = None) -> dict:
    """Run one evaluation and return its results (`{"run_name", "metrics", "meta"}`) on every process.

    The main process writes `<output_dir>/results.json` and `results.md`, and prints the table.
    """
    accelerator = accelerator or Accelerator()
    if args.join_only:  # the official GenEval evaluator ran on an earlier export: add its scores, generate nothing
        existing = Path(args.output_dir) / "results.json"
        previous = read_results(existing) if existing.is_file() else {"metrics": {}, "meta": {}}
        metrics, meta = dict(previous["metrics"]), dict(previous["meta"])
        _join_geneval(args, metrics, meta)
        return _finish(args, args.run_name or previous.get("run_name"), metrics, meta, accelerator.is_main_process)

    records = load_eval_prompts(
        args.prompt_set, source=_prompt_source(args),
        split=args.prompt_split, config=args.prompt_dataset_config, column=args.prompt_column,
        max_prompts=args.max_prompts, hps_subsets=args.hps_subsets, seed=args.dataset_seed,
    )
    if not records:
        raise ValueError(f"The prompt set {args.prompt_set!r} holds no prompts; check its source and max_prompts.")
    sources = args.resolve_sampling(load_sampling(args.policy_name_or_path))
    if accelerator.is_main_process:
        print(f"Sampling: {describe_sampling(args.sampling_settings(), sources)}")
    device = accelerator.device
    model, policy, codec = load_system(args, device)
    suite = MetricSuite(args, codec, accelerator)
    suite.prepare_references()
    accelerator.wait_for_everyone()  # every process has checked the output folders before any writes to them

    local = records[accelerator.process_index :: accelerator.num_processes]
    per_step = max(1, args.batch_size // args.images_per_prompt)
    progress = tqdm(total=len(local) * args.images_per_prompt, desc="Generating (this process's share)", unit="img",
                    disable=not accelerator.is_main_process)
    for start in range(0, len(local), per_step):
        chunk = local[start : start + per_step]
        codes = sample_prompt_codes(policy, model, chunk, args, device)
        with torch.no_grad():
            images01 = codec.decode_images(codes)
        suite.update(chunk, codes, images01)
        progress.update(len(codes))
    progress.close()

    metrics, meta = suite.compute()
    if args.geneval_results:
        _join_geneval(args, metrics, meta)
    meta.update(_run_meta(args, len(records), accelerator.num_processes))
    results = _finish(args, None, metrics, meta, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    return results
