"""Rollout throughput: our KV-cached CFG sampler against `JanusForConditionalGeneration.generate(mode="image")`.

Same model, prompts and settings (CFG, temperature 1, no top-k/top-p). Prints image tokens per second for both and
their ratio, after checking that both produce identical codes under greedy decoding.

    python benchmarks/rollout_throughput.py                # tiny and mid configs, CPU
    python benchmarks/rollout_throughput.py --device cuda --configs mid --batch 16
"""

from __future__ import annotations

import argparse
import time

import torch

from ranke_trl.policy import JanusPolicy
from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_tokenizer

CONFIGS = {
    "tiny": dict(image_size=64, patch_size=8, hidden_size=64, num_layers=2),  # 8x8 codes
    "mid": dict(image_size=256, patch_size=16, hidden_size=256, num_layers=4),  # 16x16 codes
}


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


def run(config_name: str, batch: int, guidance_scale: float, repeats: int, device: str, dtype: torch.dtype):
    model = build_tiny_janus(seed=0, **CONFIGS[config_name]).to(device=device, dtype=dtype).eval()
    policy = JanusPolicy(build_tiny_janus_tokenizer(), model)
    prompts = policy.encode_prompts([f"prompt number {i}" for i in range(batch)], device=device)
    single = policy.encode_prompts(["a red circle"], device=device)

    ours_greedy = policy.sample(model, single, guidance_scale=guidance_scale, do_sample=False)
    hf_greedy = model.generate(
        input_ids=single.input_ids, attention_mask=single.attention_mask, generation_mode="image",
        do_sample=False, guidance_scale=guidance_scale, top_k=0,
    )
    same = torch.equal(ours_greedy, hf_greedy)

    def ours():
        policy.sample(model, prompts, guidance_scale=guidance_scale, temperature=1.0)

    def hf():
        model.generate(
            input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, generation_mode="image",
            do_sample=True, guidance_scale=guidance_scale, top_k=0, temperature=1.0,
        )

    tokens = batch * policy.num_image_tokens
    t_ours, t_hf = _time(ours, device, repeats), _time(hf, device, repeats)
    print(
        f"{config_name:>5} | {policy.num_image_tokens:4d} codes x {batch} images | greedy codes identical: {same} | "
        f"ours {tokens / t_ours:10.1f} tok/s | HF generate {tokens / t_hf:10.1f} tok/s | ratio {t_hf / t_ours:.2f}x"
    )
    return same, t_hf / t_ours


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--guidance_scale", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device={args.device} dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()}")
    for name in args.configs:
        run(name, args.batch, args.guidance_scale, args.repeats, args.device, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
