"""The paper's table in ShapesWorld: Base, SFT, Std. RL, Decoder-only, RankE (and ablations), equal seeds, data and
compute, scored by CLIP score, ShapesFID, ShapesEval, token KL to ground truth and codebook entropy.

Every row is a recipe file (`recipes/shapes_experiment/*.yaml`) that states all its settings, read by the library's
recipe parser (`ranke_trl.recipes.RecipeParser`). Its keys are those of `ExperimentRowArguments` (the row's name,
mode, seeds, steps and evaluation), `RecipeArguments` (policy, prompts, rewards) and, by the row's `mode`:

- `base`: nothing more; the pretrained policy is evaluated once;
- `sft`: `ImageTokenSFTConfig`: next-token cross-entropy on the training images' codes, `num_train_steps` steps
  per evaluation interval;
- `grpo`: `RankEConfig`: a `RankEGRPOTrainer` run.

A run of a row (one per seed) overrides only `seed` (and, for `grpo`, `data_seed` and a temporary `output_dir`), as
`--key value` overrides of its recipe. Metrics are measured on fixed validation prompts with fixed per-image seeds
(`evaluation.WorldEvaluator`) before training and every `eval_every` steps. Each evaluation point also keeps:

- `heldout_rec_l1`: the decoder's reconstruction error (mean L1 in [-1, 1] pixels) on a fixed held-out batch of
  world images (`held_out_images`: test-split scenes, never trained on), in every mode, so a decoder that drifts from
  the pre-training manifold shows (the trainer's own `decoder/heldout_rec_l1` uses the last rows of its training set);
- for a grpo row with a decoder phase, the trainer's Stage 2 metrics of the phases since the previous point, as
  `decoder/<name>` (`summarise_decoder_phases`): the loss terms, `rank_weight_ess`, `rec_l1`, `steps_this_phase`...
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import torch
import yaml
from transformers import AutoProcessor, JanusForConditionalGeneration, TrainerCallback

from ranke_trl.corpus import image_to_tensor
from ranke_trl.data import load_prompt_dataset
from ranke_trl.decoder import reconstruction_error
from ranke_trl.policy import make_policy
from ranke_trl.recipes import RecipeArguments, RecipeError, RecipeParser
from ranke_trl.rewards import load_reward

from .data import make_split
from .evaluation import METRICS, WorldEvaluator
from .pretrain import shapes_cache_dir, shapes_policy_path

ROW_MODES = ("base", "sft", "grpo")
#: size of the fixed held-out batch of the reconstruction error (`heldout_rec_l1`)
HELD_OUT_IMAGES = 32
#: the rows `examples/shapes_experiment.py --quick` runs
MAIN_ROWS = ["Base", "SFT", "Std. RL", "Decoder-only", "RankE"]


@dataclass
class ExperimentRowArguments:
    """What a row of the table is and how it is evaluated; a row recipe must state every field."""

    row: str = field(metadata={"help": "The row's name in the table, e.g. 'RankE'."})
    mode: str = field(metadata={"help": f"How the row trains: one of {ROW_MODES}."})
    seeds: list[int] = field(metadata={"help": "One run per seed: the run's `seed` (and, for grpo, `data_seed`)."})
    steps: int = field(metadata={"help": "Policy optimiser steps per run (0 for base); a grpo row's max_steps."})
    eval_every: int = field(metadata={"help": "Evaluate before training and every this many steps."})
    num_eval_prompts: int = field(metadata={"help": "Validation prompts, one image each (ShapesFID needs ~256)."})
    eval_seed: int = field(metadata={"help": "Fixes the validation prompts and, with the run's seed, the noise."})
    eval_guidance_scale: float = field(metadata={"help": "CFG scale of the evaluation images."})
    eval_temperature: float = field(metadata={"help": "Sampling temperature of the evaluation images."})
    eval_top_k: int = field(metadata={"help": "Top-k of the evaluation images; 0 disables it."})
    eval_top_p: float = field(metadata={"help": "Nucleus threshold of the evaluation images; 1 disables it."})


def _row_types(mode: str) -> tuple:
    from ranke_trl import RankEConfig
    from ranke_trl.sft import ImageTokenSFTConfig

    extra = {"base": (), "sft": (ImageTokenSFTConfig,), "grpo": (RankEConfig,)}
    return (ExperimentRowArguments, RecipeArguments, *extra[mode])


def read_row_file(path: str) -> dict:
    """A row recipe as a mapping: to pick its dataclasses by `mode`, and to record it with the results."""
    if not os.path.isfile(path):
        raise RecipeError(f"Recipe file not found: {path}")
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    if not isinstance(recipe, dict) or recipe.get("mode") not in ROW_MODES:
        raise RecipeError(f"{path} must be a YAML mapping whose `mode` is one of {ROW_MODES}.")
    return recipe


def row_overrides(mode: str, seeds=None, steps: int | None = None, eval_every: int | None = None) -> list[str]:
    """`--key value` overrides that change a row's seeds, steps or evaluation interval in every key that states
    them (`steps` is also a grpo row's `max_steps`; `eval_every` also its `logging_steps`, and an sft row's
    `num_train_steps`). A base row takes only the seeds."""
    argv = [] if seeds is None else ["--seeds", *map(str, seeds)]
    if mode == "base":  # trains nothing: its steps and interval stay as stated
        return argv
    if steps is not None:
        argv += ["--steps", str(steps)] + (["--max_steps", str(steps)] if mode == "grpo" else [])
    if eval_every is not None:
        also = {"grpo": "--logging_steps", "sft": "--num_train_steps"}[mode]
        argv += ["--eval_every", str(eval_every), also, str(eval_every)]
    return argv


@dataclass(frozen=True)
class ExperimentRow:
    """A row: its recipe file, its mode, the overrides every run of it gets and its `ExperimentRowArguments`."""

    path: str
    mode: str
    overrides: tuple[str, ...] = ()
    args: ExperimentRowArguments | None = None

    @property
    def name(self) -> str:
        return self.args.row

    def parse(self, seed: int, output_dir: str | None = None) -> tuple:
        """`(ExperimentRowArguments, RecipeArguments[, ImageTokenSFTConfig | RankEConfig])` of the run with `seed`."""
        run = [] if self.mode == "base" else ["--seed", str(seed)]
        if self.mode == "grpo":
            run += ["--data_seed", str(seed), "--output_dir", output_dir or tempfile.gettempdir()]
        argv = ["--recipe", self.path, *self.overrides, *run]
        parsed = RecipeParser(_row_types(self.mode)).parse_args_and_config(argv)
        _check_row(self.path, *parsed)
        return parsed


def _check_row(path: str, args: ExperimentRowArguments, script_args: RecipeArguments, train_args=None) -> None:
    problems = []
    if args.mode not in ROW_MODES:
        problems.append(f"mode must be one of {ROW_MODES}")
    if script_args.model_name_or_path != "shapes":
        problems.append("model_name_or_path must be 'shapes' (the prepared world's policy)")
    if args.mode != "base" and (args.eval_every < 1 or args.steps % args.eval_every):
        problems.append("steps must be a multiple of eval_every >= 1")
    if args.mode == "sft" and train_args.num_train_steps != args.eval_every:
        problems.append("num_train_steps (SFT steps per evaluation interval) must equal eval_every")
    if args.mode == "grpo" and train_args.max_steps != args.steps:
        problems.append("max_steps must equal steps")
    if problems:
        raise RecipeError(f"Experiment row {path}: " + "; ".join(problems) + ".")


def load_row(path: str, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentRow:
    """Read and check a row recipe, with `--key value` overrides for every run of it (see `row_overrides`)."""
    row = ExperimentRow(path, read_row_file(path)["mode"], tuple(overrides))
    return replace(row, args=row.parse(seed=0)[0])


@functools.lru_cache(maxsize=4)
def held_out_images(seed: int, num_images: int = HELD_OUT_IMAGES) -> torch.Tensor:
    """(num_images, 3, 64, 64) in [-1, 1]: fixed test-split world images, for `heldout_rec_l1`."""
    return torch.stack([image_to_tensor(im, 64) for im in make_split("test", num_images, seed=seed)["image"]])


def summarise_decoder_phases(phases: list[dict[str, float]]) -> dict[str, float]:
    """The Stage 2 metrics of several decoder phases (each as `RankEGRPOTrainer.run_decoder_phase` returns them) as
    `decoder/<name>`: running totals (`phases`, `decoder_steps`) at their latest value, per-phase counts
    (`nonfinite_skipped`, `unscored_rollouts`) summed, everything else the mean over the phases that logged it."""
    from ranke_trl.trainer import _RUNNING_TOTALS, _WINDOW_COUNTS

    summary = {}
    for key in dict.fromkeys(k for phase in phases for k in phase):
        values = [phase[key] for phase in phases if key in phase]
        if key in _RUNNING_TOTALS:
            summary[f"decoder/{key}"] = values[-1]
        elif key in _WINDOW_COUNTS:
            summary[f"decoder/{key}"] = sum(values)
        else:
            summary[f"decoder/{key}"] = statistics.fmean(values)
    return summary


class _EvalCallback(TrainerCallback):
    """Evaluates every `every` steps, with the trainer's decoder phases since the previous evaluation.

    Added after the trainer's own callbacks, so a step's decoder phase has run when this one's `on_step_end` fires.
    """

    def __init__(self, trainer, evaluate, every):
        self.trainer, self.evaluate, self.every = trainer, evaluate, every
        self.phases: list[dict[str, float]] = []
        self.seen = 0.0

    def take_phases(self) -> dict[str, float]:
        """`summarise_decoder_phases` of the phases since the last call (empty without a decoder phase)."""
        summary, self.phases = summarise_decoder_phases(self.phases), []
        return summary

    def on_step_end(self, args, state, control, **kwargs):
        latest = self.trainer.last_decoder_metrics
        if latest.get("phases", 0.0) > self.seen:  # a decoder phase ran at this step
            self.phases.append(latest)
            self.seen = latest["phases"]
        if state.global_step % self.every == 0:
            self.evaluate(state.global_step, self.trainer.codec, self.take_phases())


def _load_base(cache_dir):
    path = shapes_policy_path(cache_dir)
    return JanusForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def _train_prompts(script_args: RecipeArguments, seed: int):
    return load_prompt_dataset(script_args.dataset_name, split=script_args.dataset_split,
                               config=script_args.dataset_config, prompt_column=script_args.prompt_column,
                               max_samples=script_args.max_train_samples, seed=seed)


def run_row(row: ExperimentRow, seed: int, evaluator: WorldEvaluator, cache_dir) -> dict:
    """Train one row with one seed; returns {"final": metrics, "curve": [...], "samples": images}.

    Each curve point holds the step, the evaluator's metrics, `heldout_rec_l1` and (grpo rows with a decoder phase,
    after step 0) the `decoder/<name>` Stage 2 metrics since the previous point."""
    from ranke_trl import RankEGRPOTrainer
    from ranke_trl.sft import ImageTokenSFT

    args = row.args
    torch.manual_seed(seed)
    model, processor = _load_base(cache_dir)
    policy = make_policy(model, processor.tokenizer)
    curve: list[dict] = []
    samples = None

    held_out = held_out_images(args.eval_seed)

    def evaluate(step: int, codec, stage2: dict[str, float] | None = None) -> None:
        nonlocal samples
        metrics, samples = evaluator(model, policy, codec, seed)
        curve.append({"step": step, **metrics, "heldout_rec_l1": reconstruction_error(codec, held_out),
                      **(stage2 or {})})

    evaluate(0, policy.codec(model))  # Base's only point; every trained row's start
    if row.mode == "sft":
        _, script_args, sft_config = row.parse(seed)
        train = _train_prompts(script_args, seed)
        sft = ImageTokenSFT(policy, model, sft_config)
        codes = sft.codec.encode(torch.stack([image_to_tensor(im, 64) for im in train["image"]]))
        for step in range(args.eval_every, args.steps + 1, args.eval_every):
            sft.train(list(train["prompt"]), codes)
            evaluate(step, sft.codec)
    elif row.mode == "grpo":
        with tempfile.TemporaryDirectory(prefix="shapes-exp-") as output_dir:
            _, script_args, config = row.parse(seed, output_dir)
            train = _train_prompts(script_args, seed)
            common = {"batch_size": script_args.reward_batch_size, "dtype": script_args.reward_dtype}
            rewards = [load_reward(name, cache_dir=cache_dir, **common) for name in script_args.reward_funcs]
            trainer = RankEGRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=train,
                                       processing_class=processor)
            callback = _EvalCallback(trainer, evaluate, args.eval_every)
            trainer.add_callback(callback)
            trainer.train()
        if curve[-1]["step"] != args.steps:
            evaluate(args.steps, trainer.codec, callback.take_phases())
    final = {k: v for k, v in curve[-1].items() if k != "step"}
    return {"final": final, "curve": curve, "samples": samples}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


_WORKER: dict = {}


def _init_worker(cache_dir, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    _WORKER.update(cache_dir=cache_dir, evaluators={})


def _evaluator(args: ExperimentRowArguments) -> WorldEvaluator:
    """This process's evaluator for the row's evaluation settings, built once (before any run is seeded)."""
    key = (args.num_eval_prompts, args.eval_guidance_scale, args.eval_temperature, args.eval_top_k, args.eval_top_p,
           args.eval_seed)
    if key not in _WORKER["evaluators"]:
        _WORKER["evaluators"][key] = WorldEvaluator(
            _WORKER["cache_dir"], args.num_eval_prompts, guidance_scale=args.eval_guidance_scale,
            temperature=args.eval_temperature, top_k=args.eval_top_k, top_p=args.eval_top_p, seed=args.eval_seed,
        )
    return _WORKER["evaluators"][key]


def _run_job(job: tuple[ExperimentRow, int]) -> tuple[str, int, dict]:
    row, seed = job
    evaluator = _evaluator(row.args)
    start = time.perf_counter()
    result = run_row(row, seed, evaluator, _WORKER["cache_dir"])
    result["seconds"] = time.perf_counter() - start
    return row.name, seed, result


def run_experiment(rows: list[ExperimentRow], out_dir: str, cache_dir=None, workers: int = 1) -> dict:
    """Run every row over its seeds; write `results.json`, `results.md` and PNG figures to `out_dir`.

    `rows` come from `load_row`, in table order. With `workers > 1` the (row, seed) runs are spread over that many
    spawned processes, each with `torch.get_num_threads() // workers` threads; every run is seeded on its own, so
    the results do not depend on it.
    """
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"Two experiment rows share a name: {names}.")
    cache_dir = shapes_cache_dir(cache_dir)
    shapes_policy_path(cache_dir)  # prepares a missing world once, here, rather than in every worker
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(row, seed) for row in rows for seed in row.args.seeds]
    done: dict[tuple[str, int], dict] = {}

    def report(name, seed, result):
        done[(name, seed)] = result
        metrics = " ".join(f"{k}={result['final'][k]:.3f}" for k in METRICS)
        print(f"[{len(done)}/{len(jobs)}] {name} seed {seed}: {result['seconds']:.0f}s {metrics}", flush=True)

    if workers <= 1:
        _init_worker(cache_dir, None)
        for job in jobs:
            report(*_run_job(job))
    else:
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(cache_dir, threads)) as pool:
            for future in as_completed([pool.submit(_run_job, job) for job in jobs]):
                report(*future.result())
    runs: dict[str, list[dict]] = {}
    for row, seed in jobs:
        runs.setdefault(row.name, []).append(done[(row.name, seed)])
    table = {}
    for name, results in runs.items():
        keys = results[0]["final"].keys()
        table[name] = {k: _mean_std([r["final"][k] for r in results]) for k in keys}
    payload = {
        "recipes": {row.name: {"file": row.path, "overrides": list(row.overrides), "settings": read_row_file(row.path)}
                    for row in rows},
        "rows": {n: {k: {"mean": m, "std": s} for k, (m, s) in v.items()} for n, v in table.items()},
        "curves": {n: [r["curve"] for r in rs] for n, rs in runs.items()},
        "seeds": {n: len(rs) for n, rs in runs.items()},
        "seconds": {n: sum(r["seconds"] for r in rs) for n, rs in runs.items()},
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=2)
    markdown = markdown_table(payload)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown + "\n")
    write_figures(runs, out_dir)
    return payload


def markdown_table(payload: dict) -> str:
    """The paper's layout: one row per mode, mean ± std over seeds (n seeds in brackets)."""
    heads = {"clip_score": "CLIP ↑", "shapes_fid": "ShapesFID ↓", "shapes_eval": "ShapesEval ↑",
             "shift/token_kl_bits": "token KL (bits) ↓", "shift/entropy_bits": "entropy (bits)",
             "shapes_fid_content": "content FID ↓", "unreadable_shapes": "unreadable ↓",
             "heldout_rec_l1": "held-out rec. L1 ↓"}
    families = sorted({k for row in payload["rows"].values() for k in row if k.startswith("shapes_eval/")})
    cols = [c for c in heads if any(c in row for row in payload["rows"].values())] + families
    lines = ["| run | " + " | ".join(heads[c] if c in heads else c.split("/", 1)[1] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for name, row in payload["rows"].items():
        cells = [f"{row[c]['mean']:.3f} ± {row[c]['std']:.3f}" if c in row else "–" for c in cols]
        lines.append(f"| {name} (n={payload['seeds'][name]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_curve_figures(curves: dict[str, list[list[dict]]], out_dir: str) -> list[str]:
    """Reward-proxy, ShapesFID and ShapesEval curves, and KL and entropy curves (the paper's Fig. 6).

    `curves` maps a row to one curve per seed (`results.json`'s "curves"); a row with a single point (Base) is
    drawn as a level line, rows with several seeds as mean ± std bands, single-seed ablation rows dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab20").colors
    paths = []
    for filename, keys in [("quality_curves.png", ["clip_score", "shapes_fid", "shapes_eval"]),
                           ("shift_curves.png", ["shift/token_kl_bits", "shift/entropy_bits"])]:
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4))
        for ax, key in zip(axes, keys):
            for index, (name, runs) in enumerate(curves.items()):
                if len(runs[0]) < 2:  # an untrained row (Base): a level line
                    ax.axhline(statistics.fmean(run[-1][key] for run in runs), color="grey", ls="--", label=name)
                    continue
                steps = [point["step"] for point in runs[0]]
                stats = [_mean_std([run[i][key] for run in runs]) for i in range(len(steps))]
                style = {"ls": "-", "lw": 1.8} if len(runs) > 1 else {"ls": "--", "lw": 1.0}
                color = palette[(2 * index) % 20 if index < 10 else (2 * index + 1) % 20]
                ax.plot(steps, [m for m, _ in stats], marker="o", markersize=2.5, color=color,
                        label=f"{name} (n={len(runs)})", **style)
                if len(runs) > 1:  # mean ± std over seeds
                    ax.fill_between(steps, [m - sd for m, sd in stats], [m + sd for m, sd in stats], color=color,
                                    alpha=0.15)
            ax.set_title(key)
            ax.set_xlabel("policy step")
        axes[0].legend(fontsize=6.5)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, filename))
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def write_figures(runs: dict[str, list[dict]], out_dir: str) -> list[str]:
    """The curve figures (`write_curve_figures`) and a grid of samples by mode, for matched prompts and seeds."""
    from torchvision.utils import save_image

    paths = write_curve_figures({name: [r["curve"] for r in results] for name, results in runs.items()}, out_dir)
    grid = torch.cat([results[0]["samples"] for results in runs.values()])
    paths.append(os.path.join(out_dir, "samples_by_mode.png"))
    save_image(grid, paths[-1], nrow=8, padding=2, pad_value=1.0)
    with open(os.path.join(out_dir, "samples_by_mode.txt"), "w") as f:
        f.write("rows, top to bottom: " + ", ".join(runs) + "\n")
    return paths
