"""Rollout throughput: the sampler RankE rolls out with, against a baseline sampler on the same model and prompts.

Same settings on both sides (CFG, temperature 1, no top-k/top-p). Prints image tokens per second for both and their
ratio, after checking that both produce identical codes under greedy decoding.

- `--backbone janus`: our KV-cached CFG sampler (`JanusPolicy.sample`) against transformers' own
  `JanusForConditionalGeneration.generate(generation_mode="image")`.
- `--backbone llamagen`: the sampler is the model's own KV-cached CFG loop, `generate_images` (which
  `LlamaGenPolicy.sample` calls), so there is no other implementation of it to race. The baseline is the same loop
  without a KV cache, `generate_images(use_cache=False)`, which re-runs the whole `[caption | codes so far]` forward
  for every code: the ratio is what the cache saves.

    python benchmarks/rollout_throughput.py                                # Janus, tiny and mid configs, CPU
    python benchmarks/rollout_throughput.py --backbone llamagen            # LlamaGen, tiny and mid configs, CPU
    python benchmarks/rollout_throughput.py --device cuda --configs mid --batch 16
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen, build_tiny_t5_tokenizer
from ranke_trl.policy import JanusPolicy
from ranke_trl.policy.llamagen import LlamaGenPolicy
from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/shapes.py, also when imported by path
from shapes import MODEL_SHAPES as CONFIGS  # noqa: E402  (model sizes per backbone, shared by all benchmarks)

BASELINES = {"janus": "HF generate", "llamagen": "no KV cache"}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats):
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


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
def run(backbone: str, config_name: str, batch: int, guidance_scale: float, repeats: int, device: str, dtype):
    model, policy, baseline = build(backbone, config_name, device, dtype)
    prompts = policy.encode_prompts([f"prompt number {i}" for i in range(batch)], device=device)
    single = policy.encode_prompts(["a red circle"], device=device)

    ours_greedy = policy.sample(model, single, guidance_scale=guidance_scale, do_sample=False)
    same = torch.equal(ours_greedy, baseline(model, single, guidance_scale, do_sample=False))

    def ours():
        policy.sample(model, prompts, guidance_scale=guidance_scale, temperature=1.0, top_k=0, top_p=1.0)

    def theirs():
        baseline(model, prompts, guidance_scale, do_sample=True)

    tokens = batch * policy.num_image_tokens
    t_ours, t_base = _time(ours, device, repeats), _time(theirs, device, repeats)
    print(
        f"{backbone:>8} {config_name:>4} | {policy.num_image_tokens:4d} codes x {batch} images | "
        f"greedy codes identical: {same} | ours {tokens / t_ours:10.1f} tok/s | "
        f"{BASELINES[backbone]} {tokens / t_base:10.1f} tok/s | ratio {t_base / t_ours:.2f}x"
    )
    return same, t_base / t_ours


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="janus", choices=list(CONFIGS))
    parser.add_argument("--configs", nargs="+", default=["tiny", "mid"], choices=["tiny", "mid"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance_scale", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"device={args.device} dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}")
    return {
        name: run(args.backbone, name, args.batch, args.guidance_scale, args.repeats, args.device,
                  getattr(torch, args.dtype))  # fmt: skip
        for name in args.configs
    }


if __name__ == "__main__":
    main()
