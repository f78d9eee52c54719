"""The paper's table in ShapesWorld: Base, SFT, Std. RL, Decoder-only, RankE (and ablations), equal seeds, data and
compute, scored by CLIP score, ShapesFID, ShapesEval, token KL to ground truth and codebook entropy.

Every row is a recipe file (`recipes/shapes_experiment/*.yaml`) that states all its settings, read by the library's
recipe parser (`ranke_trl.recipes.RecipeParser`). Its keys are those of `ExperimentRowArguments` (the row's name,
mode, seeds, steps and evaluation), `RecipeArguments` (policy, prompts, rewards) and, by the row's `mode`:

- `base`: nothing more; the pretrained policy is evaluated once;
- `sft`: `ImageTokenSFTConfig`: next-token cross-entropy on the training images' codes, `num_train_steps` steps
  per evaluation interval;
- `grpo`: `RankEConfig`: a `RankEGRPOTrainer` run;
- `absorb`: `RankEConfig` with `train_policy: false` plus `policy_from: <grpo row>`: the isolated M-step. That row's
  final policy of the same seed (saved in its run folder) is frozen and Stage 2 alone adapts the decoder to its codes.

`shapes_backbone: llamagen` (the ShapesWorld plugin's key) picks the world's LlamaGen policy instead of its Janus.

A run of a row (one per seed) overrides only `seed` (and, for `grpo`/`absorb`, `data_seed`, its `output_dir` and its
checkpointing), as `--key value` overrides of its recipe. Runs live in `<out_dir>/runs/<row-slug>/seed_<n>/`: a run
writes `result.json` (atomically) the moment it finishes, keeps its evaluation curve and checkpoints (one per
evaluation point) while it runs, and a rerun skips finished runs and continues unfinished grpo runs from their newest
complete checkpoint (`run_experiment`). Metrics are measured on fixed validation prompts with fixed per-image seeds
(`evaluation.WorldEvaluator`) before training and every `eval_every` steps. Each evaluation point also keeps:

- `heldout_rec_l1`: the decoder's reconstruction error (mean L1 in [-1, 1] pixels) on a fixed held-out batch of
  world images (`held_out_images`: test-split scenes, never trained on), in every mode, so a decoder that drifts from
  the pre-training manifold shows (the trainer's own `decoder/heldout_rec_l1` uses the last rows of its training set);
- for a grpo row with a decoder phase, the trainer's Stage 2 metrics of the phases since the previous point, as
  `decoder/<name>` (`summarise_decoder_phases`): the loss terms, `rank_weight_ess`, `rec_l1`, `steps_this_phase`...
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import torch
import yaml
from transformers import TrainerCallback

from ranke_trl.checkpointing import (checkpoint_step, last_complete_checkpoint, write_dir_atomically,
                                     write_file_atomically)

from ranke_trl.corpus import image_to_tensor
from ranke_trl.data import load_prompt_dataset
from ranke_trl.decoder import reconstruction_error
from ranke_trl.policy import make_policy
from ranke_trl.recipes import RecipeArguments, RecipeError, RecipeParser, build_rbp_rewards, build_rewards

from .data import make_split
from .evaluation import METRICS, WorldEvaluator, decoder_swap, world_decoder
from .pretrain import shapes_cache_dir, shapes_policy_path

ROW_MODES = ("base", "sft", "grpo", "absorb")
TRAINER_MODES = ("grpo", "absorb")
#: size of the fixed held-out batch of the reconstruction error (`heldout_rec_l1`)
HELD_OUT_IMAGES = 32
#: the rows `examples/shapes_experiment.py --quick` runs
MAIN_ROWS = ["Base", "SFT", "Std. RL", "Decoder-only", "RankE"]
#: the metrics of the paired-difference and decoder-swap tables in results.md (results.json keeps every metric)
REPORTED = ["render/l1", "render/ssim_distance", "render/off_palette", "clip_score", "shapes_fid", "shapes_eval",
            "shift/token_kl_bits"]


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


@dataclass
class AbsorptionArguments:
    """What an `absorb` row adapts the decoder to."""

    policy_from: str = field(metadata={"help": "absorb rows: the grpo row whose final policy (same seed, same output "
                                               "folder, run first) is frozen; Stage 2 alone adapts the decoder to "
                                               "its codes."})


#: the extra recipe dataclasses, parsed into `script_args.extensions[name]` as `ranke_trl.recipes.parse_recipe` does
_EXTENSIONS = {"shapes_world_policy": lambda mode: True, "absorption": lambda mode: mode == "absorb"}


def _row_types(mode: str) -> tuple:
    from ranke_trl import RankEConfig
    from ranke_trl.sft import ImageTokenSFTConfig

    from .plugin import WorldPolicyArguments

    extra = {"base": (), "sft": (ImageTokenSFTConfig,), "grpo": (RankEConfig,), "absorb": (RankEConfig,)}
    extensions = {"shapes_world_policy": WorldPolicyArguments, "absorption": AbsorptionArguments}
    return (ExperimentRowArguments, RecipeArguments, *extra[mode]), {
        name: cls for name, cls in extensions.items() if _EXTENSIONS[name](mode)}


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
        argv += ["--steps", str(steps)] + (["--max_steps", str(steps)] if mode in TRAINER_MODES else [])
    if eval_every is not None:
        also = {"grpo": "--logging_steps", "absorb": "--logging_steps", "sft": "--num_train_steps"}[mode]
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

    @property
    def policy_from(self) -> str | None:
        """The grpo row whose final policy an absorb row freezes (None for other modes)."""
        return resolved_settings(self).get("policy_from") if self.mode == "absorb" else None

    def parse(self, seed: int, output_dir: str | None = None, run: tuple[str, ...] = ()) -> tuple:
        """`(ExperimentRowArguments, RecipeArguments[, ImageTokenSFTConfig | RankEConfig])` of the run with `seed`;
        the plugin's `WorldPolicyArguments` (and an absorb row's `AbsorptionArguments`) are in
        `script_args.extensions`. `run`: the runner's own overrides (checkpointing), after the row's."""
        seeded = [] if self.mode == "base" else ["--seed", str(seed)]
        if self.mode in TRAINER_MODES:
            seeded += ["--data_seed", str(seed), "--output_dir", output_dir or tempfile.gettempdir()]
        argv = ["--recipe", self.path, *self.overrides, *seeded, *run]
        types, extensions = _row_types(self.mode)
        parsed = RecipeParser((*types, *extensions.values())).parse_args_and_config(argv)
        parsed, extra = tuple(parsed[:len(types)]), parsed[len(types):]
        parsed[1].extensions = dict(zip(extensions, extra))
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
    if args.mode in TRAINER_MODES and train_args.max_steps != args.steps:
        problems.append("max_steps must equal steps")
    if args.mode == "absorb" and (train_args.train_policy or not train_args.train_decoder):
        problems.append("an absorb row freezes its policy and trains its decoder: train_policy false, "
                        "train_decoder true")
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


def _load_policy(path: str):
    """`(model, processor)` of a world policy folder, by its backbone (`ranke_trl.policy.load_policy_model`)."""
    from types import SimpleNamespace

    from ranke_trl.policy import load_policy_model

    model, processor = load_policy_model(path, SimpleNamespace(model_init_kwargs=None, trust_remote_code=False))
    return model.eval(), processor


def _backbone(script_args: RecipeArguments) -> str:
    chosen = script_args.extensions.get("shapes_world_policy")
    return chosen.shapes_backbone if chosen is not None else "janus"


def _train_prompts(script_args: RecipeArguments, seed: int):
    return load_prompt_dataset(script_args.dataset_name, split=script_args.dataset_split,
                               config=script_args.dataset_config, prompt_column=script_args.prompt_column,
                               max_samples=script_args.max_train_samples, seed=seed)


def _write_json(path: str, payload) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)

    write_file_atomically(path, write)


def _checkpointing(every: int) -> tuple[str, ...]:
    """The runner's overrides of a trainer row: a checkpoint at every evaluation point, the two newest kept."""
    return ("--save_strategy", "steps", "--save_steps", str(every), "--save_total_limit", "2")


def run_row(row: ExperimentRow, seed: int, evaluator: WorldEvaluator, cache_dir, run_dir: str | None = None,
            policy_dir: str | None = None) -> dict:
    """Train one row with one seed; returns {"final": metrics, "curve": [...], "samples": images} (and, for a
    trainer row with a decoder phase, "decoder_swap": {"D0": metrics, "co-evolved": metrics}).

    Each curve point holds the step, the evaluator's metrics, `heldout_rec_l1` and (trainer rows with a decoder
    phase, after step 0) the `decoder/<name>` Stage 2 metrics since the previous point.

    `run_dir` (None: a temporary folder) keeps a trainer row's evaluation curve (`curve.json`, rewritten at every
    point), its checkpoints (`checkpoints/`, one per evaluation point) and its final policy (`policy/`); a run
    started again with the same `run_dir` continues from its newest complete checkpoint, with the curve up to it.
    `policy_dir`: the frozen policy of an absorb row (its `policy_from` row's `policy/`).
    """
    if run_dir is None:
        with tempfile.TemporaryDirectory(prefix="shapes-exp-") as folder:
            return run_row(row, seed, evaluator, cache_dir, folder, policy_dir)
    from ranke_trl import RankEGRPOTrainer
    from ranke_trl.sft import ImageTokenSFT

    args = row.args
    checkpoints = os.path.join(run_dir, "checkpoints")
    parsed = row.parse(seed, checkpoints, _checkpointing(args.eval_every) if row.mode in TRAINER_MODES else ())
    script_args = parsed[1]
    torch.manual_seed(seed)
    if row.mode == "absorb":
        if policy_dir is None or not os.path.isdir(policy_dir):
            raise FileNotFoundError(f"Row {args.row!r} (absorb) needs the final policy of its policy_from row, seed "
                                    f"{seed}, at {policy_dir}: run that row first into the same output folder.")
        model, processor = _load_policy(policy_dir)
    else:
        model, processor = _load_policy(shapes_policy_path(cache_dir, backbone=_backbone(script_args)))
    policy = make_policy(model, getattr(processor, "tokenizer", processor))
    curve_path = os.path.join(run_dir, "curve.json")
    curve: list[dict] = []
    samples = None
    held_out = held_out_images(args.eval_seed)

    def evaluate(step: int, codec, stage2: dict[str, float] | None = None) -> None:
        nonlocal samples
        metrics, samples = evaluator(model, policy, codec, seed)
        curve.append({"step": step, **metrics, "heldout_rec_l1": reconstruction_error(codec, held_out),
                      **(stage2 or {})})
        if row.mode in TRAINER_MODES:
            _write_json(curve_path, curve)

    resume = None
    if row.mode in TRAINER_MODES:
        config = parsed[2]
        train = _train_prompts(script_args, seed)
        rewards = build_rewards(script_args, cache_dir=cache_dir)
        trainer = RankEGRPOTrainer(model=model, reward_funcs=rewards, args=config, train_dataset=train,
                                   processing_class=processor,
                                   rbp_reward_funcs=build_rbp_rewards(script_args, cache_dir=cache_dir))
        resume = last_complete_checkpoint(checkpoints, trainer._checkpoint_files())
        if resume is not None and os.path.isfile(curve_path):  # the points up to the checkpoint; later ones again
            with open(curve_path, encoding="utf-8") as f:
                curve = [point for point in json.load(f) if point["step"] <= checkpoint_step(resume)]
    if not curve:
        evaluate(0, policy.codec(model))  # Base's only point; every trained row's start
    if row.mode == "sft":
        train = _train_prompts(script_args, seed)
        sft = ImageTokenSFT(policy, model, parsed[2])
        codes = sft.codec.encode(torch.stack([image_to_tensor(im, 64) for im in train["image"]]))
        for step in range(args.eval_every, args.steps + 1, args.eval_every):
            sft.train(list(train["prompt"]), codes)
            evaluate(step, sft.codec)
    result = {}
    if row.mode in TRAINER_MODES:
        callback = _EvalCallback(trainer, evaluate, args.eval_every)
        trainer.add_callback(callback)
        trainer.train(resume_from_checkpoint=resume)
        if curve[-1]["step"] != args.steps:
            evaluate(args.steps, trainer.codec, callback.take_phases())
        if trainer.decoder_phase is not None:  # the final codes through D0 and through the co-evolved decoder
            codes = evaluator.sample_codes(model, policy, seed)
            result["decoder_swap"] = decoder_swap(codes, evaluator.prompts, evaluator.metadata,
                                                  {"D0": world_decoder(cache_dir), "co-evolved": trainer.codec},
                                                  scorer=evaluator.scorer)
        write_dir_atomically(os.path.join(run_dir, "policy"),
                             lambda tmp: (model.save_pretrained(tmp), processor.save_pretrained(tmp)))
    final = {k: v for k, v in curve[-1].items() if k != "step"}
    return {"final": final, "curve": curve, "samples": samples, **result}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# --- the runs' folders: one per (row, seed), finished when it holds result.json ------------------------------------


def row_slug(name: str) -> str:
    """A row's folder name: 'Std. RL' -> 'std-rl'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_folder(out_dir: str, row: str, seed: int) -> str:
    return os.path.join(out_dir, "runs", row_slug(row), f"seed_{seed}")


def resolved_settings(row: ExperimentRow) -> dict:
    """The row's recipe with its overrides applied, without `seeds` (adding a seed changes no run)."""
    settings = dict(read_row_file(row.path))
    overridden: dict[str, list] = {}
    key = None
    for token in row.overrides:
        if token.startswith("--"):
            key = token[2:]
            overridden[key] = []
        else:
            overridden[key].append(yaml.safe_load(token))
    for key, values in overridden.items():  # `--key a` sets a scalar unless the recipe states a list there
        settings[key] = values if len(values) != 1 or isinstance(settings.get(key), list) else values[0]
    settings.pop("seeds", None)
    return settings


def settings_hash(row: ExperimentRow) -> str:
    """sha256 of `resolved_settings`: a run's result holds it, so results of a changed recipe never mix."""
    text = json.dumps(resolved_settings(row), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_same_settings(row: ExperimentRow, folder: str, stored: str) -> None:
    if stored != settings_hash(row):
        raise RecipeError(
            f"Row {row.name!r}: {folder} was run with other settings than {row.path} (with this invocation's "
            f"overrides) now states. Use a new --output_dir, or --rerun {row.name!r} to discard its runs there.")


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


def _run_job(job: tuple) -> tuple[str, int, dict]:
    """One run, its result written to its folder (atomically) the moment it finishes."""
    row, seed, folder, policy_dir, keep_checkpoints = job
    os.makedirs(folder, exist_ok=True)
    started = os.path.join(folder, "run.json")
    if os.path.isfile(started):  # an unfinished run: continue it only under the same settings
        with open(started, encoding="utf-8") as f:
            _check_same_settings(row, folder, json.load(f)["settings_hash"])
    else:
        _write_json(started, {"row": row.name, "seed": seed, "settings_hash": settings_hash(row)})
    start = time.perf_counter()
    result = run_row(row, seed, _evaluator(row.args), _WORKER["cache_dir"], folder, policy_dir)
    samples = result.pop("samples")
    write_file_atomically(os.path.join(folder, "samples.pt"), lambda tmp: torch.save(samples, tmp))
    result.update(row=row.name, seed=seed, settings_hash=settings_hash(row), seconds=time.perf_counter() - start)
    _write_json(os.path.join(folder, "result.json"), result)
    if not keep_checkpoints:
        shutil.rmtree(os.path.join(folder, "checkpoints"), ignore_errors=True)
    return row.name, seed, result


def _finished(row: ExperimentRow, out_dir: str, seed: int) -> dict | None:
    """The run's result if it finished (checked to have the row's current settings), else None."""
    folder = run_folder(out_dir, row.name, seed)
    path = os.path.join(folder, "result.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    _check_same_settings(row, folder, result["settings_hash"])
    result["samples"] = torch.load(os.path.join(folder, "samples.pt"))
    return result


def run_experiment(rows: list[ExperimentRow], out_dir: str, cache_dir=None, workers: int = 1, *,
                   run_rows: list[str] | None = None, rerun: list[str] = (), paired: list = (),
                   keep_checkpoints: bool = False) -> dict:
    """Run every row over its seeds; write `results.json`, `results.md` and PNG figures to `out_dir`.

    `rows` come from `load_row`, in table order; `run_rows` names the ones to run (None: all; []: only rebuild the
    report). Each run's folder (`run_folder`) gets its `result.json` the moment it finishes; finished runs are
    skipped, unfinished grpo and absorb runs continue from their newest complete checkpoint, a result of other
    settings than the row's recipe now states is refused (`rerun` names rows whose runs are discarded first).
    Absorb rows run after every other row, since they read their `policy_from` row's finished runs. Checkpoints are
    deleted once a run finishes unless `keep_checkpoints`. The report is rebuilt from every finished run of `rows`,
    with the paired differences of the `paired` row pairs `(A, B)` (A − B per seed, `paired_differences`).

    With `workers > 1` the runs are spread over that many spawned processes, each with
    `torch.get_num_threads() // workers` threads; every run is seeded on its own, so the results do not depend on it.
    """
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"Two experiment rows share a name: {names}.")
    unknown = sorted({name for pair in paired for name in pair} - set(names))
    if unknown:
        raise ValueError(f"paired names rows {unknown} that are not among the experiment's rows {names}.")
    cache_dir = shapes_cache_dir(cache_dir)
    os.makedirs(out_dir, exist_ok=True)
    by_name = {row.name: row for row in rows}
    for name in rerun:
        shutil.rmtree(os.path.join(out_dir, "runs", row_slug(by_name[name].name)), ignore_errors=True)
    # every finished run, each checked against its row's settings before anything runs
    finished = {(row.name, seed): _finished(row, out_dir, seed) for row in rows for seed in row.args.seeds}
    todo = [row for row in rows if run_rows is None or row.name in run_rows]
    waves: list[list[tuple]] = [[], []]  # absorb rows after the rows whose policies they freeze
    for row in todo:
        if row.mode == "absorb" and row.policy_from not in by_name:
            raise RecipeError(f"Row {row.name!r}: policy_from {row.policy_from!r} is not one of the rows {names}.")
        for seed in row.args.seeds:
            if finished[(row.name, seed)] is not None:
                print(f"{row.name} seed {seed}: finished, skipped ({run_folder(out_dir, row.name, seed)})", flush=True)
                continue
            source = run_folder(out_dir, row.policy_from, seed) if row.mode == "absorb" else None
            job = (row, seed, run_folder(out_dir, row.name, seed),
                   source and os.path.join(source, "policy"), keep_checkpoints)
            waves[row.mode == "absorb"].append(job)
    jobs = waves[0] + waves[1]
    if jobs:
        _run_jobs(waves, cache_dir, workers, len(jobs), by_name, out_dir)
    return write_report(rows, out_dir, paired)


def _run_jobs(waves, cache_dir, workers, total, by_name, out_dir) -> None:
    shapes_policy_path(cache_dir)  # prepares a missing world once, here, rather than in every worker
    count = 0

    def report(name, seed, result):
        nonlocal count
        count += 1
        metrics = " ".join(f"{k}={result['final'][k]:.3f}" for k in METRICS if k in result["final"])
        print(f"[{count}/{total}] {name} seed {seed}: {result['seconds']:.0f}s {metrics}", flush=True)

    def check_sources(wave):
        for row, seed, *_ in wave:
            if row.mode == "absorb" and _finished(by_name[row.policy_from], out_dir, seed) is None:
                raise RuntimeError(f"Row {row.name!r} seed {seed} freezes the final policy of {row.policy_from!r} "
                                   f"seed {seed}, which has not finished in {out_dir}: run that row first (add it "
                                   "to --rows).")

    if workers <= 1:
        _init_worker(cache_dir, None)
        for wave in waves:
            check_sources(wave)
            for job in wave:
                report(*_run_job(job))
        return
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                             initargs=(cache_dir, threads)) as pool:
        for wave in waves:
            check_sources(wave)
            for future in as_completed([pool.submit(_run_job, job) for job in wave]):
                report(*future.result())


def write_report(rows: list[ExperimentRow], out_dir: str, paired: list = ()) -> dict:
    """`results.json`, `results.md` and the figures, from every finished run of `rows` in `out_dir`."""
    runs: dict[str, list[dict]] = {}
    for row in rows:
        finished = [(seed, _finished(row, out_dir, seed)) for seed in row.args.seeds]
        if any(result is not None for _, result in finished):
            runs[row.name] = [result for _, result in finished if result is not None]
    table = {}
    for name, results in runs.items():
        keys = dict.fromkeys(k for r in results for k in r["final"])  # the union: a metric may miss in a seed
        table[name] = {k: [r["final"][k] for r in results if k in r["final"]] for k in keys}
    by_seed = {name: {r["seed"]: r["final"] for r in results} for name, results in runs.items()}
    comparisons = {f"{a} − {b}": paired_differences(by_seed.get(a, {}), by_seed.get(b, {})) for a, b in paired}
    swaps = {}
    for name, results in runs.items():
        with_swap = {r["seed"]: r["decoder_swap"] for r in results if "decoder_swap" in r}
        if with_swap:
            swaps[name] = {decoder: {k: {"mean": m, "std": s, "n": len(v)} for k, v in _per_metric(
                [swap[decoder] for swap in with_swap.values()]).items() for m, s in [_mean_std(v)]}
                for decoder in ("D0", "co-evolved")}
            comparisons[f"{name}: co-evolved − D0 (same codes)"] = paired_differences(
                {seed: swap["co-evolved"] for seed, swap in with_swap.items()},
                {seed: swap["D0"] for seed, swap in with_swap.items()})
    payload = {
        "recipes": {row.name: {"file": row.path, "overrides": list(row.overrides), "settings": read_row_file(row.path),
                               "settings_hash": settings_hash(row)} for row in rows if row.name in runs},
        "rows": {n: {k: {"mean": m, "std": s, "n": len(v)} for k, v in t.items() for m, s in [_mean_std(v)]}
                 for n, t in table.items()},
        "curves": {n: [r["curve"] for r in rs] for n, rs in runs.items()},
        "seeds": {n: len(rs) for n, rs in runs.items()},
        "run_seeds": {n: [r["seed"] for r in rs] for n, rs in runs.items()},
        "seconds": {n: sum(r["seconds"] for r in rs) for n, rs in runs.items()},
        "paired": comparisons,
        "decoder_swap": swaps,
    }
    _write_json(os.path.join(out_dir, "results.json"), payload)
    markdown = "\n\n".join(filter(None, [markdown_table(payload), paired_markdown(payload),
                                         swap_markdown(payload)])) if runs else f"No finished runs in {out_dir} yet."
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown + "\n")
    if runs:
        write_figures(runs, out_dir)
    return payload


def _per_metric(finals: list[dict]) -> dict[str, list[float]]:
    return {k: [f[k] for f in finals if k in f] for k in dict.fromkeys(k for f in finals for k in f)}


# --- paired statistics ---------------------------------------------------------------------------------------------


def paired_summary(differences: list[float]) -> dict:
    """Mean, standard deviation `sd`, two-sided 95% t-interval `ci95` and the minimum detectable effect at 80% power
    (α = 0.05, two-sided) `mde80 = (t_0.975,n-1 + t_0.8,n-1) · sd / √n` of per-seed paired differences; the three
    are None for a single seed. Quantiles from scipy's Student t."""
    from scipy.stats import t

    n = len(differences)
    mean = statistics.fmean(differences)
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci95": None, "mde80": None}
    sd = statistics.stdev(differences)
    se = sd / math.sqrt(n)
    half = t.ppf(0.975, n - 1) * se
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half],
            "mde80": (t.ppf(0.975, n - 1) + t.ppf(0.8, n - 1)) * se}


def paired_differences(a: dict[int, dict], b: dict[int, dict]) -> dict[str, dict]:
    """Per metric, `paired_summary` of `a[seed][metric] - b[seed][metric]` over the seeds (and metrics) both hold:
    `a` and `b` map a seed to a run's metrics."""
    seeds = sorted(set(a) & set(b))
    keys = dict.fromkeys(k for s in seeds for k in a[s] if k in b[s])
    return {k: paired_summary([a[s][k] - b[s][k] for s in seeds if k in a[s] and k in b[s]]) for k in keys}


def paired_markdown(payload: dict) -> str:
    """One table per comparison: the `REPORTED` metrics' mean difference, 95% CI and MDE (80% power)."""
    sections = []
    for name, metrics in payload.get("paired", {}).items():
        shown = [k for k in REPORTED if k in metrics]
        if not shown:
            continue
        n = max(metrics[k]["n"] for k in shown)
        label = f"(n={n}, single seed)" if n == 1 else f"(n={n} paired seeds)"
        lines = [f"**{name}** {label}", "", "| metric | n | mean diff. | 95% CI | MDE (80% power) |",
                 "|---|---|---|---|---|"]
        for k in shown:
            s = metrics[k]
            ci = "–" if s["ci95"] is None else f"[{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]"
            mde = "–" if s["mde80"] is None else f"{s['mde80']:.4f}"
            lines.append(f"| {k} | {s['n']} | {s['mean']:.4f} | {ci} | {mde} |")
        sections.append("\n".join(lines))
    return "\n\n".join(["## Paired differences (per seed, A − B)", *sections]) if sections else ""


def swap_markdown(payload: dict) -> str:
    """The decoder swap: each run's final codes through D0 and through its co-evolved decoder, mean ± std."""
    swaps = payload.get("decoder_swap", {})
    if not swaps:
        return ""
    cols = [k for k in REPORTED if any(k in d for s in swaps.values() for d in s.values())]
    lines = ["## Decoder swap (the same final codes, two decoders)", "",
             "| run | decoder | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, decoders in swaps.items():
        for decoder, metrics in decoders.items():
            cells = [f"{metrics[c]['mean']:.4f} ± {metrics[c]['std']:.4f}" if c in metrics else "–" for c in cols]
            lines.append(f"| {name} (n={payload['seeds'][name]}) | {decoder} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(payload: dict) -> str:
    """The paper's layout: one row per mode, mean ± std over seeds (n seeds in brackets; a metric measured in fewer
    of the row's seeds says its own n). Rows run with one seed are listed below the table as descriptive only."""
    heads = {"clip_score": "CLIP ↑", "shapes_fid": "ShapesFID ↓", "shapes_eval": "ShapesEval ↑",
             "shift/token_kl_bits": "token KL (bits) ↓", "shift/entropy_bits": "entropy (bits)",
             "shapes_fid_content": "content FID ↓", "unreadable_shapes": "unreadable ↓",
             "heldout_rec_l1": "held-out rec. L1 ↓", "render/l1": "render L1 ↓",
             "render/ssim_distance": "render 1−SSIM ↓", "render/off_palette": "off-palette ↓"}
    families = sorted({k for row in payload["rows"].values() for k in row if k.startswith("shapes_eval/")})
    cols = [c for c in heads if any(c in row for row in payload["rows"].values())] + families
    lines = ["| run | " + " | ".join(heads[c] if c in heads else c.split("/", 1)[1] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]

    def cell(entry: dict, seeds: int) -> str:
        fewer = f" (n={entry['n']})" if entry.get("n", seeds) != seeds else ""
        return f"{entry['mean']:.3f} ± {entry['std']:.3f}{fewer}"

    for name, row in payload["rows"].items():
        seeds = payload["seeds"][name]
        cells = [cell(row[c], seeds) if c in row else "–" for c in cols]
        lines.append(f"| {name} (n={seeds}) | " + " | ".join(cells) + " |")
    single = [name for name in payload["rows"] if payload["seeds"][name] == 1]
    if single:
        lines += ["", "(n=1, single seed), descriptive only: " + ", ".join(single)]
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
