"""What decoder co-evolution costs: RankE against Std. RL for the same number of policy steps.

Each mode runs in its own subprocess (so peak memory is measured per mode) on the same model, data, reward and
schedule. Prints wall time and peak memory of both and their ratios. Peak memory is the process's peak RSS on CPU,
and `torch.cuda.max_memory_allocated` on a GPU. The paper reports 1.05x time and 56/33 GB = 1.70x memory.

    python benchmarks/decoder_overhead.py                        # tiny config, 8 policy steps, CPU
    python benchmarks/decoder_overhead.py --config mid --steps 8
    python benchmarks/decoder_overhead.py --memory_options      # also RankE with each memory-saving option
    python benchmarks/decoder_overhead.py --config proportional --steps 2   # the real policy:decoder cost ratio
    python benchmarks/decoder_overhead.py --config proportional --curve --steps 2   # RankE step vs codes, G

`--config proportional` (benchmarks/shapes.py) keeps Janus-Pro-1B's layer shape, codebook and 576 codes with one
layer, a quarter-width VQ-16 and a 2+1-layer ViT-L/14 CLIP, so its time and memory ratios are the real model's
cost ratio, measured. `--curve` measures one RankE step (time, peak memory) at 64, 256 and 576 codes per image
(128, 256, 384 px; G = 8) and at G = 4, 8, 16 (576 codes; 2 prompts per step, so 2G rollouts), and writes a
markdown table and a plot to docs/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/shapes.py, also when imported by path
from shapes import MODEL_SHAPES, STEP_SHAPES  # noqa: E402

CONFIGS = MODEL_SHAPES["janus"]
MEMORY_OPTIONS = {
    "ema_on_cpu": ["ema_device=cpu"],
    "ema_bf16": ["ema_dtype=bfloat16"],
    "policy_grad_ckpt": ["activation_checkpointing=true"],
}


def worker(config: str, mode: str, steps: int, overrides: list[str], tokens: int | None = None,
           group_size: int = 8) -> dict:
    import torch

    from ranke_trl import RankEConfig, RankEGRPOTrainer
    from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_processor
    from shapes import build_reward
    from shapes_world import make_split

    shape = dict(CONFIGS[config])
    if tokens is not None:
        shape["image_size"] = shape["patch_size"] * math.isqrt(tokens)
    size = shape["image_size"]
    model = build_tiny_janus(seed=0, **shape)
    extra = dict(STEP_SHAPES.get(config, {}))
    for item in overrides:
        key, value = item.split("=", 1)
        extra[key] = {"true": True, "false": False}.get(value, value)
    args = RankEConfig(
        output_dir=tempfile.mkdtemp(),
        bf16=False,
        per_device_train_batch_size=2 * group_size,  # 2 prompts per step
        num_generations=group_size,
        max_steps=steps,
        train_decoder=(mode == "ranke"),
        policy_steps_per_phase=1,
        decoder_steps_per_phase=1,
        decoder_batch_size=8,
        lambda_lpips=0.0,  # LPIPS backbone weights are not available offline
        report_to=[],
        save_strategy="no",
        logging_steps=steps,
        log_images_steps=0,
        disable_tqdm=True,
        **extra,
    )
    trainer = RankEGRPOTrainer(
        model=model,
        reward_funcs=[build_reward(config)],  # CLIPReward.tiny() (resizes to 64 px) but at "proportional"
        args=args,
        train_dataset=make_split("train", 64, image_size=size),
        processing_class=build_tiny_janus_processor(),
    )
    if trainer.corpus is not None:
        trainer.corpus_codes()  # encode the corpus outside the timed region: it happens once per run
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": elapsed, "peak_bytes": peak, "memory_kind": "cuda_max_allocated" if cuda else "peak_rss"}


def baseline() -> dict:
    """Peak RSS of a worker process before it builds anything (torch, transformers, TRL and ranke_trl imported)."""
    import ranke_trl  # noqa: F401
    from ranke_trl import RankEGRPOTrainer  # noqa: F401

    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_mode(config, mode, steps, overrides, tokens=None, group_size=8, env=None):
    """Run one mode in a fresh process; `env` adds to the environment (e.g. OMP_NUM_THREADS)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--config", config, "--steps", str(steps),
           "--group_size", str(group_size)]
    cmd += [f"--set={o}" for o in overrides] + ([f"--tokens={tokens}"] if tokens else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} worker failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_rss(threads: int | None = None) -> float:
    """Peak RSS in bytes of a worker that has imported everything and built nothing."""
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    return run_mode("tiny", "baseline", 0, [], env=env)["peak_bytes"]


CURVE_TOKENS, CURVE_GROUPS = (64, 256, 576), (4, 8, 16)


def curve(config: str, steps: int, out_dir: str) -> list[dict]:
    """RankE step time and peak memory against codes per image (G = 8) and group size (576 codes)."""
    rows = []
    points = [(n, 8) for n in CURVE_TOKENS] + [(576, g) for g in CURVE_GROUPS if g != 8]
    for tokens, group in points:
        result = run_mode(config, "ranke", steps, [], tokens=tokens, group_size=group)
        rows.append({"tokens": tokens, "group_size": group, "seconds": result["seconds"] / steps,
                     "peak_gib": result["peak_bytes"] / 1024**3})
        print(f"  {tokens:4d} codes, G={group:2d}: {rows[-1]['seconds']:8.2f} s per RankE step, "
              f"peak {rows[-1]['peak_gib']:.2f} GiB", flush=True)
    write_curve(rows, config, steps, out_dir)
    return rows


def write_curve(rows: list[dict], config: str, steps: int, out_dir: str) -> None:
    """docs/benchmarks/cost_curves.md (table, with growth against linear) and cost_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    load = "/".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [f"RankE step at `--config {config}` ({steps} steps averaged, {os.environ.get('OMP_NUM_THREADS', 'all')}"
             f" threads, load {load}). Growth is each figure over the smallest point's, beside the growth of the "
             "varied quantity (linear scaling would match it).", "",
             "| codes | G | rollouts | s / step | peak GiB | time growth | memory growth | linear |", "|---|---|---|---|---|---|---|---|"]
    series = {"codes": [r for r in rows if r["group_size"] == 8],
              "group": sorted([r for r in rows if r["tokens"] == 576], key=lambda r: r["group_size"])}
    for name, key in (("codes", "tokens"), ("group", "group_size")):
        first = series[name][0]
        for r in series[name]:
            lines.append(f"| {r['tokens']} | {r['group_size']} | {2 * r['group_size']} | {r['seconds']:.2f} | "
                         f"{r['peak_gib']:.2f} | {r['seconds'] / first['seconds']:.2f}x | "
                         f"{r['peak_gib'] / first['peak_gib']:.2f}x | {r[key] / first[key]:.2f}x |")
    with open(os.path.join(out_dir, "cost_curves.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, name, key, label in ((axes[0], "codes", "tokens", "codes per image (G = 8)"),
                                 (axes[1], "group", "group_size", "group size G (576 codes)")):
        xs = [r[key] for r in series[name]]
        ax.plot(xs, [r["seconds"] for r in series[name]], "o-", label="s / RankE step")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds")
        twin = ax.twinx()
        twin.plot(xs, [r["peak_gib"] for r in series[name]], "s--", color="tab:red", label="peak GiB")
        twin.set_ylabel("peak GiB")
        ax.set_ylim(bottom=0)  # from zero: growth reads off the plot
        twin.set_ylim(bottom=0)
    fig.suptitle(f"RankE step cost at --config {config} (CPU)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "cost_curves.png"), dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=["tiny", "mid", "proportional"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--memory_options", action="store_true", help="also measure RankE with each memory option")
    parser.add_argument("--curve", action="store_true", help="RankE step cost vs codes and group size (item 5)")
    parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks"))
    parser.add_argument("--worker", choices=["std_rl", "ranke", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--group_size", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "baseline":
        print(json.dumps(baseline()))
        return
    if args.worker:
        print(json.dumps(worker(args.config, args.worker, args.steps, args.set, args.tokens, args.group_size)))
        return
    if args.curve:
        curve(args.config, args.steps, args.out_dir)
        return
    std = run_mode(args.config, "std_rl", args.steps, [])
    ranke = run_mode(args.config, "ranke", args.steps, [])
    gib = 1024**3
    print(f"config={args.config} policy_steps={args.steps} schedule: T_pi=1, T_D=1, decoder batch 8 ({std['memory_kind']})")
    print(f"  Std. RL : {std['seconds']:8.2f} s   peak {std['peak_bytes'] / gib:6.3f} GiB")
    print(f"  RankE   : {ranke['seconds']:8.2f} s   peak {ranke['peak_bytes'] / gib:6.3f} GiB")
    print(f"  ratio RankE / Std. RL: time {ranke['seconds'] / std['seconds']:.2f}x, "
          f"memory {ranke['peak_bytes'] / std['peak_bytes']:.2f}x   (paper: 1.05x time, 1.70x memory)")
    if args.memory_options:
        for name, overrides in MEMORY_OPTIONS.items():
            result = run_mode(args.config, "ranke", args.steps, overrides)
            saved = (ranke["peak_bytes"] - result["peak_bytes"]) / gib
            print(f"  RankE + {name:<17}: {result['seconds']:8.2f} s   peak {result['peak_bytes'] / gib:6.3f} GiB "
                  f"(saves {saved:+.3f} GiB)")


if __name__ == "__main__":
    main()
