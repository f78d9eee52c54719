"""Rollout throughput: RankE's samplers (eager, static, compiled) against a baseline, and against this machine's floor.

Same settings everywhere (CFG, temperature 1, no top-k/top-p). For each config it prints image tokens per second of
each `--sampler` and of the baseline, after checking that all produce identical codes under greedy decoding, and
the fraction of this machine's floor each sampler reaches:

- FLOPs per generated token: `torch.utils.flop_counter.FlopCounterMode` on one decoding step of the static sampler
  (all rows, `[cond; uncond]` with CFG, a cache of the static length), divided by the images in the batch. It counts
  matmuls (projections, MLP, code embedding and head) and attention (torch's SDPA formula, registered for the fused
  CPU kernel too), over the whole static cache the step computes. The prompt's prefill runs once per image and is
  not counted.
- Sustained matmul throughput: a square fp32 (or `--dtype`) matmul of the model's width, `n x n @ n x n`
  (2 n^3 FLOPs), repeated; the median time, measured in the same run and the same threads.
- Floor tokens/s = sustained FLOP/s / FLOPs per token; fraction = a sampler's tokens/s / floor. The floor is
  compute only: at a small batch a decoding step's matmuls are thin (rows x width @ width x width), so reading the
  weights can bound the speed before the arithmetic does.

Samplers (`SamplingArguments.sampler`): "eager", the dynamic-cache loop (`JanusPolicy.sample`, LlamaGen's
`generate_images`); "static", a preallocated `StaticCache` with fixed shapes per step; "compiled", "static" with the
decoding step compiled by `torch.compile` (inductor on a CPU, CUDA graphs on a GPU; the compile happens in the
untimed warm-up). Baselines:

- `--backbone janus`: transformers' own `JanusForConditionalGeneration.generate(generation_mode="image")`.
- `--backbone llamagen`: the model's own loop without a KV cache, `generate_images(use_cache=False)`, which re-runs
  the whole `[caption | codes so far]` forward for every code (`--no_baseline` skips it at large configs).

    python benchmarks/rollout_throughput.py                                # Janus, tiny and mid configs, CPU
    python benchmarks/rollout_throughput.py --backbone llamagen            # LlamaGen, tiny and mid configs, CPU
    python benchmarks/rollout_throughput.py --configs mid proportional --sampler eager static compiled
    python benchmarks/rollout_throughput.py --device cuda --configs mid --batch 16
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen, build_tiny_t5_tokenizer
from ranke_trl.policy import JanusPolicy
from ranke_trl.policy.llamagen import LlamaGenPolicy
from ranke_trl.policy.static_sampler import StaticCacheSampler
from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/shapes.py, also when imported by path
from shapes import MODEL_SHAPES as CONFIGS  # noqa: E402  (model sizes per backbone, shared by all benchmarks)

BASELINES = {"janus": "HF generate", "llamagen": "no KV cache"}
SAMPLER_CHOICES = ("eager", "static", "compiled")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time(fns: dict, device, repeats: int) -> dict:
    """Median seconds per call of each function; after one warm-up call each (where "compiled" compiles), the
    functions take turns, so a change in the machine's load falls on all of them alike."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def sustained_matmul_flops(n: int, device, dtype, seconds: float = 1.0, min_repeats: int = 5) -> float:
    """FLOP/s of an `n x n @ n x n` matmul (2 n^3 FLOPs): the median over repeats lasting about `seconds`."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):  # warm-up
        a @ b
    times, start = [], time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < seconds:
        _sync(device)
        tick = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - tick)
    return 2 * n**3 / statistics.median(times)


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode's table has the CUDA attention kernels but not the fused CPU one; count it with torch's own formula.
ATTENTION_ON_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def decode_step_flops(policy, model, prompts, guidance_scale: float) -> int:
    """FLOPs of one decoding step of the static sampler on `prompts` (every row, CFG included), by FlopCounterMode.

    Attention is counted over the whole static cache (prompt bucket + N codes), which the step computes (masked);
    the eager loop attends to the prompt and the codes so far, about half of that on average.
    """
    sampler = StaticCacheSampler(policy.cached_decoder(model), policy.num_image_tokens)
    counted = []

    def counting_step(*args):
        with FlopCounterMode(display=False, custom_mapping=ATTENTION_ON_CPU) as counter:
            StaticCacheSampler._decode_step(sampler, *args)
        counted.append(counter.get_total_flops())
        raise _Counted  # one step is enough

    sampler._decode_step = counting_step
    try:
        sampler.sample(prompts, guidance_scale=guidance_scale, do_sample=False)
    except _Counted:
        pass
    return counted[0]


class _Counted(Exception):
    pass


def build(backbone: str, config_name: str, device: str, dtype: torch.dtype):
    """`(model, policy, baseline)`: `baseline(model, prompts, guidance_scale, do_sample)` draws codes (B, N)."""
    if backbone == "janus":
        model = build_tiny_janus(seed=0, **CONFIGS[backbone][config_name]).to(device=device, dtype=dtype).eval()
        policy = JanusPolicy(build_tiny_janus_tokenizer(), model)

        def baseline(model, prompts, guidance_scale, do_sample):
            return model.generate(
                input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, generation_mode="image",
                do_sample=do_sample, guidance_scale=guidance_scale, top_k=0, temperature=1.0,
            )  # fmt: skip

    else:
        model = build_tiny_llamagen(seed=0, **CONFIGS[backbone][config_name]).to(device=device, dtype=dtype).eval()
        policy = LlamaGenPolicy(build_tiny_t5_tokenizer(), model)

        def baseline(model, prompts, guidance_scale, do_sample):
            return model.generate_images(
                input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, guidance_scale=guidance_scale,
                do_sample=do_sample, top_k=0, top_p=1.0, temperature=1.0, use_cache=False,
            )  # fmt: skip

    return model, policy, baseline


@torch.no_grad()
def run(backbone: str, config_name: str, batch: int, guidance_scale: float, repeats: int, device: str, dtype,
        samplers=("eager",), with_baseline: bool = True) -> dict:  # fmt: skip
    model, policy, baseline = build(backbone, config_name, device, dtype)
    prompts = policy.encode_prompts([f"prompt number {i}" for i in range(batch)], device=device)
    single = policy.encode_prompts(["a red circle"], device=device)
    tokens = batch * policy.num_image_tokens

    greedy = {name: policy.sample_codes(model, single, sampler=name, guidance_scale=guidance_scale, do_sample=False)
              for name in samplers}  # fmt: skip
    reference = policy.sample(model, single, guidance_scale=guidance_scale, do_sample=False)
    same = {name: torch.equal(codes, reference) for name, codes in greedy.items()}
    if with_baseline:
        same[BASELINES[backbone]] = torch.equal(reference, baseline(model, single, guidance_scale, do_sample=False))

    width = model.config.text_config.hidden_size
    flops_per_token = decode_step_flops(policy, model, prompts, guidance_scale) / batch
    floor = sustained_matmul_flops(width, device, dtype) / flops_per_token
    print(f"{backbone} {config_name}: {policy.num_image_tokens} codes x {batch} images, width {width}; "
          f"{flops_per_token / 1e6:.1f} MFLOP per token; sustained {width}^3 matmul "
          f"{floor * flops_per_token / 1e9:.1f} GFLOP/s -> floor {floor:.1f} tok/s; "
          f"greedy codes identical to eager: {same}")  # fmt: skip

    results = {"greedy_identical": same, "flops_per_token": flops_per_token, "floor_tokens_per_s": floor}
    fns = {name: functools.partial(policy.sample_codes, model, prompts, sampler=name, guidance_scale=guidance_scale,
                                   temperature=1.0, top_k=0, top_p=1.0) for name in samplers}  # fmt: skip
    if with_baseline:
        fns[BASELINES[backbone]] = functools.partial(baseline, model, prompts, guidance_scale, do_sample=True)
    for name, seconds in _time(fns, device, repeats).items():
        results[name] = tokens / seconds
        versus = f" | {samplers[0]} is {results[samplers[0]] / results[name]:.2f}x it" if name not in samplers else ""
        print(f"  {name:>11}: {tokens / seconds:10.1f} tok/s | {tokens / seconds / floor:6.1%} of the floor{versus}")
    return results


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="janus", choices=list(CONFIGS))
    parser.add_argument("--configs", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid", "proportional"])
    parser.add_argument("--sampler", nargs="+", default=["eager"], choices=SAMPLER_CHOICES,
                        help="Samplers to time (SamplingArguments.sampler); the first is compared to the baseline.")
    parser.add_argument("--no_baseline", action="store_true", help="Skip the baseline (slow at large configs).")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance_scale", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"device={args.device} dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} cpus={os.cpu_count()} load average={load}")  # fmt: skip
    return {
        name: run(args.backbone, name, args.batch, args.guidance_scale, args.repeats, args.device,
                  getattr(torch, args.dtype), tuple(args.sampler), not args.no_baseline)  # fmt: skip
        for name in args.configs
    }


if __name__ == "__main__":
    main()
