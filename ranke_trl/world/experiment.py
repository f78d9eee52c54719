"""The paper's table in ShapesWorld: Base, SFT, Std. RL, Decoder-only, RankE (and ablations), equal seeds, data and
compute, scored by CLIP score, ShapesFID, ShapesEval, token KL to ground truth and codebook entropy.

Every GRPO row is a `RankEGRPOTrainer` run on the same pretrained world (`prepare_shapes_world`), differing only in
its `RankEConfig` overrides; the SFT row spends the same number of optimiser steps on next-token cross-entropy.
Metrics are measured on a fixed validation prompt set with fixed per-image seeds, every `eval_every` steps.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

import torch
from transformers import AutoProcessor, JanusForConditionalGeneration, TrainerCallback

from ..corpus import image_to_tensor
from ..diagnostics import CodeHistogram, ShiftDiagnostics
from ..evaluation.clip_score import clip_score_from_cosine
from ..policy import make_policy
from .data import make_split
from .pretrain import load_shapes_fid, shapes_cache_dir, shapes_clip_reward, shapes_policy_path
from .scenes import Scene, ShapeSpec, render_scene
from .shapes_eval import ShapesEval, shapes_eval_reward, summarize
from .vocab import KINDS, SIZES

# name -> (how the row trains, which reward, RankEConfig overrides)
ROWS: dict[str, tuple[str, str, dict]] = {
    "Base": ("none", "shapes_clip", {}),
    "SFT": ("sft", "shapes_clip", {}),
    "Std. RL": ("grpo", "shapes_clip", {"train_decoder": False}),
    "Decoder-only": ("grpo", "shapes_clip", {"train_policy": False}),
    "RankE": ("grpo", "shapes_clip", {}),
    "Std. RL (black-box)": ("grpo", "shapes_eval", {"train_decoder": False}),
    "RankE (black-box)": ("grpo", "shapes_eval", {"lambda_rbp": 0.0}),
    "w/o L_rec": ("grpo", "shapes_clip", {"lambda_rec": 0.0}),
    "w/o L_RankGAN": ("grpo", "shapes_clip", {"lambda_gan": 0.0}),
    "w/o L_cons": ("grpo", "shapes_clip", {"lambda_cons": 0.0}),
    "w/o L_rbp": ("grpo", "shapes_clip", {"lambda_rbp": 0.0}),
    "uniform GAN": ("grpo", "shapes_clip", {"rank_gan_temperature": math.inf}),
    "RankE, decoder lr 1e-5": ("grpo", "shapes_clip", {"decoder_learning_rate": 1e-5}),  # the library default
}
MAIN_ROWS = ["Base", "SFT", "Std. RL", "Decoder-only", "RankE"]
METRICS = ["clip_score", "shapes_fid", "shapes_eval", "shift/token_kl_bits", "shift/entropy_bits"]
# Diagnostics that split ShapesFID into what is drawn and how it is rendered (see `rerender_detected`).
DIAGNOSTICS = ["shapes_fid_content", "unreadable_shapes"]


def rerender_detected(images01: torch.Tensor, shapes_eval: ShapesEval) -> tuple[torch.Tensor, float]:
    """Clean renders of the scenes ShapesEval reads in `images01`, and the fraction of objects it could not read.

    Each detected object whose kind is recognised is drawn again with the world's renderer: same kind and colour,
    the size nearest its bounding box, at its bounding-box centre. ShapesFID on these re-renders measures *what* a
    model draws (content) with rendering quality removed; objects of unknown kind (blobs, smears) are left out and
    counted instead, a measure of rendering failures.
    """
    renders, unreadable, total = [], 0, 0
    for image in images01:
        shapes = []
        for found in shapes_eval.detect(image):
            total += 1
            if found.kind not in KINDS:
                unreadable += 1
                continue
            x0, y0, x1, y1 = found.bbox
            side = max(x1 - x0, y1 - y0) + 1
            size = min(SIZES, key=lambda name: abs(SIZES[name] - side))
            shapes.append(ShapeSpec(found.kind, found.color, size, round((x0 + x1) / 2), round((y0 + y1) / 2)))
        renders.append(torch.from_numpy(render_scene(Scene(tuple(shapes), {}))).permute(2, 0, 1))
    return torch.stack(renders).float() / 255, unreadable / max(1, total)


@dataclass
class ExperimentSettings:
    """Budget of one experiment: the defaults make the README table, `QUICK` a ~10 min check on two cores.

    The policy learning rate is scaled up from the paper's 1e-6 (a 1B model) for a 4-layer, 128-wide policy; the
    decoder learning rate was set equal to it before any result was seen, and the library default (1e-5) is run
    as its own row. All choices here are ours: the paper has no such world.
    """

    steps: int = 200  # GRPO optimiser steps per run (the SFT row spends as many steps on cross-entropy)
    eval_every: int = 25  # evaluate on the validation prompts every this many steps, and before training
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # of the main rows (MAIN_ROWS)
    ablation_seeds: list[int] = field(default_factory=lambda: [0])  # of every other row
    num_eval_prompts: int = 256  # ShapesFID's features are 128-d: fewer samples than this biases it badly
    num_train_prompts: int = 2048
    rollouts_per_step: int = 32  # 4 prompts x num_generations
    num_generations: int = 8
    learning_rate: float = 1e-4
    decoder_learning_rate: float = 1e-4
    guidance_scale: float = 3.0
    rows: list[str] = field(default_factory=lambda: list(ROWS))
    workers: int = 1  # runs in parallel processes, each with torch threads / workers


QUICK = ExperimentSettings(steps=100, eval_every=25, seeds=[0], rows=list(MAIN_ROWS))


class WorldEvaluator:
    """Scores a policy + decoder on fixed validation prompts: metric name -> value (see `METRICS`)."""

    def __init__(self, cache_dir, num_prompts: int, guidance_scale: float, seed: int = 1234):
        data = make_split("validation", num_prompts, seed=seed)
        self.prompts, self.metadata = list(data["prompt"]), list(data["metadata"])
        self.real = torch.stack([image_to_tensor(im, 64) for im in data["image"]])
        self.clip = shapes_clip_reward(cache_dir)
        self.fid = load_shapes_fid(cache_dir)
        self.shapes_eval = ShapesEval()
        self.guidance_scale, self.seed = guidance_scale, seed
        self.shift = None

    @torch.no_grad()
    def __call__(self, model, policy, codec, seed: int = 0) -> tuple[dict[str, float], torch.Tensor]:
        """Metrics and the first 8 images; `seed` (the run's seed) offsets the per-image sampling seeds, so runs with
        the same seed see the same noise in every mode and runs with different seeds see different noise."""
        if self.shift is None:  # ground-truth codes of the validation images, with this world's frozen encoder
            counts = CodeHistogram(codec.codebook_size).update(codec.encode(self.real)).counts
            self.shift = ShiftDiagnostics(counts, codec.codebook_size)
        device = next(codec.module.parameters()).device
        generators = [torch.Generator(device=device).manual_seed(self.seed + 100_003 * seed + i) for i in range(len(self.prompts))]
        codes = policy.sample(model, policy.encode_prompts(self.prompts, device), guidance_scale=self.guidance_scale,
                              top_p=0.9, generator=generators)
        images = ((codec.decode(codes).float() + 1) / 2).clamp(0, 1)
        cos = self.clip.score(images, self.prompts)
        self.fid.reset_fake()
        self.fid.update_fake(images)
        shapes_fid = self.fid.compute()
        evaluated = self.shapes_eval.evaluate_batch(list(images), self.metadata)
        rerendered, unreadable = rerender_detected(images, self.shapes_eval)
        self.fid.reset_fake()
        self.fid.update_fake(rerendered)
        content_fid = self.fid.compute()
        summary = summarize(evaluated)
        metrics = {
            "clip_score": float(clip_score_from_cosine(cos).mean()),
            "shapes_fid": shapes_fid,
            "shapes_eval": summary["overall"],
            "shapes_fid_content": content_fid,
            "unreadable_shapes": unreadable,
            **{f"shapes_eval/{k}": v for k, v in summary["per_family"].items()},
            **self.shift(codes),
        }
        return metrics, images[:8].cpu()


class _EvalCallback(TrainerCallback):
    def __init__(self, evaluate, every):
        self.evaluate, self.every = evaluate, every

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.evaluate(state.global_step)


def _load_base(cache_dir):
    path = shapes_policy_path(cache_dir)
    return JanusForConditionalGeneration.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def run_row(name: str, seed: int, settings: ExperimentSettings, evaluator: WorldEvaluator, cache_dir) -> dict:
    """Train one row with one seed; returns {"final": metrics, "curve": [...], "samples": images}."""
    from .. import RankEConfig, RankEGRPOTrainer
    from ..sft import ImageTokenSFT, ImageTokenSFTConfig

    kind, reward_name, overrides = ROWS[name]
    torch.manual_seed(seed)
    model, processor = _load_base(cache_dir)
    policy = make_policy(model, processor.tokenizer)
    train = make_split("train", settings.num_train_prompts, seed=seed)
    curve: list[dict] = []
    samples = None

    def evaluate(step: int, codec) -> None:
        nonlocal samples
        metrics, samples = evaluator(model, policy, codec, seed)
        curve.append({"step": step, **metrics})

    evaluate(0, policy.codec(model))  # Base's only point; every trained row's start
    if kind == "sft":
        sft = ImageTokenSFT(policy, model, ImageTokenSFTConfig(
            num_train_steps=settings.eval_every, batch_size=settings.rollouts_per_step,
            learning_rate=settings.learning_rate, seed=seed, show_progress=False))
        codes = sft.codec.encode(torch.stack([image_to_tensor(im, 64) for im in train["image"]]))
        for step in range(settings.eval_every, settings.steps + 1, settings.eval_every):
            sft.train(list(train["prompt"]), codes)
            evaluate(step, sft.codec)
    elif kind == "grpo":
        reward = shapes_clip_reward(cache_dir) if reward_name == "shapes_clip" else shapes_eval_reward
        config = dict(
            bf16=False, seed=seed, data_seed=seed, max_steps=settings.steps,
            per_device_train_batch_size=settings.rollouts_per_step, num_generations=settings.num_generations,
            learning_rate=settings.learning_rate, decoder_learning_rate=settings.decoder_learning_rate,
            guidance_scale=settings.guidance_scale, lambda_lpips=0.0, report_to=[], save_strategy="no",
            logging_steps=settings.eval_every, log_images_steps=0, disable_tqdm=True, decoder_batch_size=8,
            lr_scheduler_type="constant",
        )
        if reward_name == "shapes_eval":  # a black-box reward has no gradient to back-propagate
            config["lambda_rbp"] = 0.0
        with tempfile.TemporaryDirectory(prefix="shapes-exp-") as output_dir:
            args = RankEConfig(output_dir=output_dir, **{**config, **overrides})
            trainer = RankEGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=train,
                                       processing_class=processor)
            trainer.add_callback(_EvalCallback(lambda step: evaluate(step, trainer.codec), settings.eval_every))
            trainer.train()
        if curve[-1]["step"] != settings.steps:
            evaluate(settings.steps, trainer.codec)
    final = {k: v for k, v in curve[-1].items() if k != "step"}
    return {"final": final, "curve": curve, "samples": samples}


def world_eval_report(before: dict[str, float], after: dict[str, float], out_dir: str) -> str:
    """Write `world_eval.json` (metrics before and after training) to `out_dir`; returns a printable table."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "world_eval.json")
    with open(path, "w") as f:
        json.dump({"before": before, "after": after}, f, indent=2)
    keys = [k for k in METRICS if k in after] + sorted(k for k in after if k.startswith("shapes_eval/"))
    lines = [f"ShapesWorld evaluation ({path}):", f"  {'metric':<32} {'before':>10} {'after':>10}"]
    lines += [f"  {k:<32} {before[k]:>10.4g} {after[k]:>10.4g}" for k in keys]
    return "\n".join(lines)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


_WORKER: dict = {}


def _init_worker(settings: ExperimentSettings, cache_dir, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    _WORKER.update(settings=settings, cache_dir=cache_dir)
    _WORKER["evaluator"] = WorldEvaluator(cache_dir, settings.num_eval_prompts, settings.guidance_scale)


def _run_job(job: tuple[str, int]) -> tuple[str, int, dict]:
    name, seed = job
    start = time.perf_counter()
    result = run_row(name, seed, _WORKER["settings"], _WORKER["evaluator"], _WORKER["cache_dir"])
    result["seconds"] = time.perf_counter() - start
    return name, seed, result


def run_experiment(settings: ExperimentSettings, out_dir: str, cache_dir=None) -> dict:
    """Run every row over its seeds; write `results.json`, `results.md` and PNG figures to `out_dir`.

    With `settings.workers > 1` the (row, seed) runs are spread over that many spawned processes, each with
    `torch.get_num_threads() // workers` threads; every run is seeded on its own, so the results do not depend on it.
    """
    unknown = [name for name in settings.rows if name not in ROWS]
    if unknown:
        raise ValueError(f"Unknown experiment rows {unknown}; choose from {list(ROWS)}.")
    cache_dir = shapes_cache_dir(cache_dir)
    shapes_policy_path(cache_dir)  # prepares a missing world once, here, rather than in every worker
    os.makedirs(out_dir, exist_ok=True)
    jobs = [(name, seed) for name in settings.rows for seed in (settings.seeds if name in MAIN_ROWS else settings.ablation_seeds)]
    done: dict[tuple[str, int], dict] = {}

    def report(name, seed, result):
        done[(name, seed)] = result
        metrics = " ".join(f"{k}={result['final'][k]:.3f}" for k in METRICS)
        print(f"[{len(done)}/{len(jobs)}] {name} seed {seed}: {result['seconds']:.0f}s {metrics}", flush=True)

    if settings.workers <= 1:
        _init_worker(settings, cache_dir, None)
        for job in jobs:
            report(*_run_job(job))
    else:
        threads = max(1, torch.get_num_threads() // settings.workers)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(settings.workers, mp_context=context, initializer=_init_worker,
                                 initargs=(settings, cache_dir, threads)) as pool:
            for future in as_completed([pool.submit(_run_job, job) for job in jobs]):
                report(*future.result())
    runs: dict[str, list[dict]] = {}
    for name, seed in jobs:
        runs.setdefault(name, []).append(done[(name, seed)])
    table = {}
    for name, results in runs.items():
        keys = results[0]["final"].keys()
        table[name] = {k: _mean_std([r["final"][k] for r in results]) for k in keys}
    payload = {
        "settings": asdict(settings),
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
             "shapes_fid_content": "content FID ↓", "unreadable_shapes": "unreadable ↓"}
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
