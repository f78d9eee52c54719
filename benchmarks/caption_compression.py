"""Caption-compression throughput (captions/s) through the curation's own path: `compress_captions` with the
transformers backend (chat template, left padding, batches sorted by length, greedy `generate`) and a fresh cache.

    python benchmarks/caption_compression.py                                 # the tiny random Qwen2, CPU
    python benchmarks/caption_compression.py --num_layers 28                 # Qwen2.5-7B's depth, hidden 32
    python benchmarks/caption_compression.py --model Qwen/Qwen2.5-7B-Instruct --dtype bfloat16 --device cuda \\
        --captions 512 --batch_size 64                                       # the real model, on a GPU

Captions are synthetic, 40 to 120 words (BLIP3o-60k's long captions). The tiny model never emits EOS, so every
caption costs `max_new_tokens` decoding steps: an upper bound for a model that stops after its tags. The threads,
the machine's load and the per-step time are printed with the result; `--num_layers 28` at hidden 32 measures the
per-step dispatch cost of a 28-layer model, whose compute is negligible.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time


def synthetic_captions(count: int, seed: int = 0) -> list[str]:
    from ranke_trl.data.tiny_chat import TINY_CHAT_WORDS

    words = [w for w in TINY_CHAT_WORDS if w.isalpha()]
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(40, 120))) + "." for _ in range(count)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="A chat model id or directory; default: the tiny random Qwen2.")
    parser.add_argument("--num_layers", type=int, default=2, help="Layers of the tiny model.")
    parser.add_argument("--captions", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: torch's choice.")
    args = parser.parse_args(argv)

    import torch

    from ranke_trl.data.compress import CaptionCache, CompressionSettings, TransformersChatBackend, compress_captions
    from ranke_trl.data.tiny_chat import build_tiny_chat_model

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            tiny, tokenizer = build_tiny_chat_model(num_layers=args.num_layers)
            model = os.path.join(tmp, "tiny_chat")
            tiny.save_pretrained(model)
            tokenizer.save_pretrained(model)
        settings = CompressionSettings(model=model, max_new_tokens=args.max_new_tokens)
        backend = TransformersChatBackend(settings, dtype=args.dtype, device=args.device)
        cache = CaptionCache(os.path.join(tmp, "cache.jsonl"))
        warm = synthetic_captions(args.batch_size, seed=1)
        start = time.perf_counter()
        compress_captions(warm, settings, backend, cache, args.batch_size, show_progress=False)
        warm_s = time.perf_counter() - start
        captions = synthetic_captions(args.captions)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        outputs, _ = compress_captions(captions, settings, backend, cache, args.batch_size, show_progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tokenizer = backend.tokenizer
        new_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs)
    batches = -(-args.captions // args.batch_size)
    result = {
        "model": args.model or f"tiny random Qwen2 (hidden 32, {args.num_layers} layers)",
        "device": args.device, "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "captions": args.captions, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "mean_caption_words": sum(len(c.split()) for c in captions) / len(captions),
        "warmup_batch_s": round(warm_s, 2), "seconds": round(seconds, 2),
        "captions_per_s": round(args.captions / seconds, 2),
        "new_tokens_per_s": round(new_tokens / seconds, 1),
        "ms_per_batch_step": round(1000 * seconds / (batches * args.max_new_tokens), 2),
    }
    print(f"caption compression: {result['model']} on {args.device} ({args.dtype}), {result['torch_threads']} torch "
          f"threads, {result['cpu_cores']} cores, load average {result['load_average']}")
    print(f"{args.captions} captions (mean {result['mean_caption_words']:.0f} words), batches of {args.batch_size}, "
          f"max_new_tokens {args.max_new_tokens}; warm-up batch {warm_s:.2f} s")
    print(f"{result['captions_per_s']} captions/s, {result['new_tokens_per_s']} new tokens/s, "
          f"{result['ms_per_batch_step']} ms per decoding step of a batch ({seconds:.2f} s in all)")
    return result


if __name__ == "__main__":
    main()
