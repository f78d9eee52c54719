"""What decoder co-evolution costs: RankE against Std. RL for the same number of policy steps.

Each mode runs in its own subprocess (so peak memory is measured per mode) on the same model, data, reward and
schedule. Prints wall time and peak memory of both and their ratios. Peak memory is the process's peak RSS on CPU,
and `torch.cuda.max_memory_allocated` on a GPU. The paper reports 1.05x time and 56/33 GB = 1.70x memory.

    python benchmarks/decoder_overhead.py                        # tiny config, 8 policy steps, CPU
    python benchmarks/decoder_overhead.py --config mid --steps 8
    python benchmarks/decoder_overhead.py --memory_options      # also RankE with each memory-saving option
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/shapes.py, also when imported by path
from shapes import MODEL_SHAPES  # noqa: E402

CONFIGS = MODEL_SHAPES["janus"]
MEMORY_OPTIONS = {
    "ema_on_cpu": ["ema_device=cpu"],
    "ema_bf16": ["ema_dtype=bfloat16"],
    "policy_grad_ckpt": ["activation_checkpointing=true"],
}


def worker(config: str, mode: str, steps: int, overrides: list[str]) -> dict:
    import torch

    from ranke_trl import RankEConfig, RankEGRPOTrainer
    from ranke_trl.rewards import CLIPReward
    from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_processor
    from shapes_world import make_split

    size = CONFIGS[config]["image_size"]
    model = build_tiny_janus(seed=0, **CONFIGS[config])
    extra = {}
    for item in overrides:
        key, value = item.split("=", 1)
        extra[key] = {"true": True, "false": False}.get(value, value)
    args = RankEConfig(
        output_dir=tempfile.mkdtemp(),
        bf16=False,
        per_device_train_batch_size=16,
        num_generations=8,
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
        reward_funcs=[CLIPReward.tiny()],  # resizes any image to its 64 px input
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


def run_mode(config, mode, steps, overrides):
    cmd = [sys.executable, __file__, "--worker", mode, "--config", config, "--steps", str(steps)]
    cmd += [f"--set={o}" for o in overrides]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--memory_options", action="store_true", help="also measure RankE with each memory option")
    parser.add_argument("--worker", choices=["std_rl", "ranke"], help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.config, args.worker, args.steps, args.set)))
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
