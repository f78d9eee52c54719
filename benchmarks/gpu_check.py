"""GPU check: RankE at a real backbone's shapes (random weights, bf16) on one GPU, in a few minutes.

Backbones: Janus-Pro-1B (`--backbone janus`, the default; 384 px, 24x24 codes), or LlamaGen-XL (`--backbone
llamagen`: the 775M GPT-XL, the frozen flan-t5-xl caption encoder it holds and VQ-16; `--image_size 256`, stage 1,
16x16 codes, or `512`, stage 2, 32x32 codes; shared/LLAMAGEN.md).

No download: the model is built from the published config with random weights (prompts go through a tiny tokenizer
whose ids fit the real vocabulary), the CLIP reward is a random ViT-L-14 and LPIPS a random VGG-16, so every tensor
has its real shape and cost. Prints:

1. Rollout throughput, image tokens/s of the sampler RankE rolls out with, for 16 prompts x 8 samples (CFG doubles
   the rows), against a baseline, and whether both give the same codes under greedy decoding (exactly so in fp32; in
   bf16 their attention paths round differently, so greedy paths may part after a tie).
   - Janus: our KV-cached CFG sampler against `generate(generation_mode="image")`, on all rows.
   - LlamaGen: the model's own KV-cached loop (`generate_images`, which the adapter calls) against the same loop
     without a KV cache (`use_cache=False`, quadratic), on the first 8 rows only (the baseline alone would take
     minutes at 512 px).
   The sampler is `--sampler` (default: "compiled", the static-cache sampler with its decoding step compiled, on a
   GPU; "eager" with --tiny); with another than "eager" the eager sampler's tokens/s is printed too. Beside them:
   the H200 roofline of the same sampling (`cost_model.rollout_roofline`): each of the N decoding steps reads the
   generation weights (bf16) and the KV cache so far (2 x layers x width x bf16 per token per row, over the
   2 x images CFG rows) at 4.8 TB/s, or does its FLOPs at 989 TFLOP/s, whichever takes longer; tokens/s = images x
   N / the sum of the steps. For Janus-Pro-1B at 128 images x 2 rows the KV cache dominates (it grows to ~31 GB).
2. RankE steps (policy phase + decoder phase), the last one reported: seconds and peak accelerator memory of each
   phase.
3. The decoder-overhead ratios: RankE step time / its policy phase alone (the Std. RL step), and the peak memory of
   the step / that of its policy phase; beside them, cost_model.py's projection for the same shapes and schedule
   (on an H200, and at the paper's per-device schedule).

    python benchmarks/gpu_check.py                                   # cuda, Janus-Pro-1B shapes, bf16
    python benchmarks/gpu_check.py --gradient_checkpointing --decoder_gradient_checkpointing --ema_device cpu
    python benchmarks/gpu_check.py --backbone llamagen --image_size 256
    python benchmarks/gpu_check.py --backbone llamagen --image_size 512 --gradient_checkpointing
    python benchmarks/gpu_check.py --tiny [--backbone llamagen]      # tiny shapes on CPU, seconds (tests)

On one H200 the whole check (Janus-Pro-1B, compiled sampler) is meant to take under 8 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from transformers import TrainerCallback

from ranke_trl import RankEConfig, RankEGRPOTrainer
from ranke_trl.data import load_prompt_dataset
from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen, build_tiny_llamagen_processor
from ranke_trl.policy import JanusPolicy
from ranke_trl.policy.llamagen import LlamaGenPolicy
from ranke_trl.rewards import CLIPReward
from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_processor, build_tiny_janus_tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/cost_model.py, also when imported by path
import cost_model  # noqa: E402

GiB = 2**30
# Per scale: rollout benchmark (prompts x samples), RankE step (per-device batch x accumulation, group size G),
# decoder batch. The full scale draws 16 prompts x 8 samples per optimiser step, as the rollout benchmark does.
SCALES = {
    "full": dict(prompts=16, samples=8, per_device=16, accumulation=8, generations=8, decoder_batch=8),
    "tiny": dict(prompts=2, samples=4, per_device=4, accumulation=2, generations=4, decoder_batch=4),
}
# Per backbone: the guidance scale (each model's own default), and the rollout rows the baseline sampler runs on at
# full scale (None: all of them).
GUIDANCE_SCALES = {"janus": 5.0, "llamagen": 7.5}
BASELINE_ROWS = {"janus": None, "llamagen": 8}


def janus_pro_1b_config():
    """Janus-Pro-1B's published configuration (1.87B parameters), built by hand: transformers' `JanusConfig()`
    defaults carry Janus-Pro-1B's vision and VQ settings but a 7B Llama text config."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    text = LlamaConfig(
        vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=16384, rms_norm_eps=1e-6,
    )
    vision = JanusVisionConfig(  # SigLIP-L, 384 px, patch 16 -> 24x24 = 576 image tokens
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=384, patch_size=16,
        projection_dim=2048, num_image_tokens=576,
    )
    vq = JanusVQVAEConfig(  # VQ-16: codebook 16384 x 8, 16x downsampling, 24x24 codes
        embed_dim=8, num_embeddings=16384, base_channels=128, channel_multiplier=[1, 1, 2, 2, 4], latent_channels=256,
        num_res_blocks=2, num_patches=24, projection_dim=2048, image_token_embed_dim=2048,
    )
    tokenizer = build_tiny_janus_tokenizer()
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))


def llamagen_xl_config(image_size: int = 256):
    """LlamaGen-XL's configuration (the library's `LlamaGenConfig` defaults: GPT-XL, flan-t5-xl, VQ-16) at 256 px
    (stage 1, 16x16 codes) or 512 px (stage 2, 32x32 codes)."""
    from ranke_trl.models.llamagen import LlamaGenConfig
    from ranke_trl.models.llamagen.configuration_llamagen import CAPTION_MAX_LENGTH

    if image_size not in (256, 512):
        raise ValueError(f"LlamaGen-XL T2I was trained at 256 and 512 px, not {image_size}.")
    grid = image_size // 16
    return LlamaGenConfig(
        image_grid_size=grid,
        vq_config={"num_patches": grid},
        text_config={"max_position_embeddings": CAPTION_MAX_LENGTH + grid * grid},
    )


def build_model(backbone: str, tiny: bool, device: torch.device, image_size: int = 256):
    """The policy with random weights: tiny (fp32) or the real shapes (bf16, built on `device`)."""
    if tiny:
        return (build_tiny_janus if backbone == "janus" else build_tiny_llamagen)(seed=0).to(device)
    torch.manual_seed(0)
    if backbone == "llamagen":
        from ranke_trl.models.llamagen import LlamaGenForImageGeneration

        with torch.device(device):
            model = LlamaGenForImageGeneration._from_config(llamagen_xl_config(image_size), dtype=torch.bfloat16)
        return model.eval()  # prompts: the tiny T5 tokenizer, whose ids fit flan-t5-xl's 32128-entry vocabulary
    from transformers import JanusForConditionalGeneration

    with torch.device(device):
        model = JanusForConditionalGeneration._from_config(janus_pro_1b_config(), dtype=torch.bfloat16)
    tokenizer = build_tiny_janus_tokenizer()  # byte-level ids fit the 102400-entry vocabulary
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    gen.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids("<begin_of_image>")}
    gen._from_model_config = False
    return model.eval()


def build_processor(backbone: str):
    """The tiny processor of the backbone (its ids fit the real vocabulary)."""
    return build_tiny_janus_processor() if backbone == "janus" else build_tiny_llamagen_processor()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _baseline_sampler(backbone: str, model, rows, guidance_scale: float, do_sample: bool) -> torch.LongTensor:
    """Codes (B, N) from the baseline: Janus's HF `generate(mode="image")`, or LlamaGen's loop without a KV cache."""
    if backbone == "janus":
        return model.generate(input_ids=rows.input_ids, attention_mask=rows.attention_mask, generation_mode="image",
                              do_sample=do_sample, guidance_scale=guidance_scale, top_k=0, temperature=1.0)
    return model.generate_images(input_ids=rows.input_ids, attention_mask=rows.attention_mask,
                                 guidance_scale=guidance_scale, do_sample=do_sample, top_k=0, top_p=1.0,
                                 temperature=1.0, use_cache=False)


def rollout_throughput(backbone: str, model, device, prompts: int, samples: int, guidance_scale: float,
                       baseline_rows: int | None = None, sampler: str = "eager") -> dict:
    """Image tokens/s of the rollout sampler (`sampler`: eager | static | compiled) on `prompts x samples` rows and of
    the baseline on the first `baseline_rows` of them (None: all), the speedup on those rows, and a greedy agreement
    check on one prompt; with a sampler other than eager, the eager sampler's tokens/s too."""
    policy = (JanusPolicy(build_tiny_janus_tokenizer(), model) if backbone == "janus"
              else LlamaGenPolicy(build_processor(backbone), model))  # fmt: skip
    baseline = {"janus": "hf_generate", "llamagen": "no_kv_cache"}[backbone]
    texts = [f"prompt number {i}: a photo of object {i}" for i in range(prompts) for _ in range(samples)]
    batch = policy.encode_prompts(texts, device=device)
    compared = batch if baseline_rows is None else policy.encode_prompts(texts[:baseline_rows], device=device)
    single = policy.encode_prompts(["a red circle"], device=device)

    def ours(rows, which=sampler):
        return policy.sample_codes(model, rows, sampler=which, guidance_scale=guidance_scale, temperature=1.0,
                                   top_k=0, top_p=1.0)

    def theirs(rows):
        return _baseline_sampler(backbone, model, rows, guidance_scale, do_sample=True)

    def timed(fn, rows):
        _sync(device)
        start = time.perf_counter()
        codes = fn(rows)
        _sync(device)
        assert codes.shape == (rows.input_ids.size(0), policy.num_image_tokens), codes.shape
        return time.perf_counter() - start

    with torch.no_grad():
        greedy_ours = policy.sample_codes(model, single, sampler=sampler, guidance_scale=guidance_scale,
                                          do_sample=False)
        greedy_baseline = _baseline_sampler(backbone, model, single, guidance_scale, do_sample=False)
        theirs(single)  # warm-up: kernels, allocator
        ours(batch), ours(compared)  # warm-up, and the compiled sampler's compilation at these batch sizes
        seconds = {"ours": timed(ours, batch), baseline: timed(theirs, compared)}
        ours_compared = seconds["ours"] if compared is batch else timed(ours, compared)
        if sampler != "eager":
            seconds["eager"] = timed(lambda rows: ours(rows, "eager"), batch)
    tokens, compared_tokens = (rows.input_ids.size(0) * policy.num_image_tokens for rows in (batch, compared))
    results = {
        "sampler": sampler,
        "rollout_rows": len(texts),
        "greedy_codes_identical": bool(torch.equal(greedy_ours, greedy_baseline)),
        "ours_tokens_per_s": tokens / seconds["ours"],
        f"{baseline}_tokens_per_s": compared_tokens / seconds[baseline],
        f"speedup_vs_{baseline}": seconds[baseline] / ours_compared,
    }
    if "eager" in seconds:
        results["eager_tokens_per_s"] = tokens / seconds["eager"]
    if compared is not batch:
        results["baseline_rows"] = compared.input_ids.size(0)
    return results


def projection(backbone: str, tiny: bool, image_size: int, step: dict, rows: int, tokens_per_s: float) -> dict:
    """cost_model.py's figures for these shapes: the H200 rollout roofline, and the time and memory ratios at this
    check's schedule (16 rollouts x 8 accumulated micro-batches, then the derived T_D = 128 / 8 = 16 decoder steps;
    `SCALES`) and the paper's per-device one (16 rollouts, T_D = 2)."""
    scale = SCALES["tiny" if tiny else "full"]
    config = "tiny" if tiny else ("real512" if image_size == 512 else "real")
    here = cost_model.Settings(rollouts=scale["per_device"], group_size=scale["generations"],
                               decoder_batch=scale["decoder_batch"], accumulation=scale["accumulation"])
    units = cost_model.count_units(backbone, config, here)
    hw = cost_model.H200
    out = {"h200_rollout_roofline_tokens_per_s": cost_model.rollout_roofline(units, rows, hw)}
    out["rollout_fraction_of_roofline"] = tokens_per_s / out["h200_rollout_roofline_tokens_per_s"]
    for name, settings in (("this_schedule", here), ("paper_schedule", cost_model.Settings())):
        std, ranke = (cost_model.step_cost(units, settings, ranke=r) for r in (False, True))
        out[f"projected_time_ratio_{name}"] = ranke.time(hw) / std.time(hw)
        out[f"projected_memory_ratio_{name}"] = ranke.peak_bytes() / std.peak_bytes()
    if step["policy_peak_gib"] is not None:
        out["measured_memory_ratio"] = max(step["policy_peak_gib"], step["decoder_peak_gib"]) / step["policy_peak_gib"]
    out["measured_time_ratio"] = step["decoder_overhead_ratio"]
    return out


class _StepProfile(TrainerCallback):
    """Seconds and peak memory of each optimiser step, split into the policy phase and the decoder phase."""

    def __init__(self, trainer, device):
        self.device, self.steps = device, []
        original = trainer.run_decoder_phase

        def timed_decoder_phase():
            _sync(device)
            self.current["policy_peak"] = _peak_gib(device)
            self.current["policy_s"] = time.perf_counter() - self.current["start"]
            _reset_peak(device)
            out = original()
            _sync(device)
            self.current["decoder_s"] = time.perf_counter() - self.current["start"] - self.current["policy_s"]
            self.current["decoder_peak"] = _peak_gib(device)
            return out

        trainer.run_decoder_phase = timed_decoder_phase  # DecoderPhaseCallback calls it after each policy step

    def on_step_begin(self, args, state, control, **kwargs):
        _sync(self.device)
        _reset_peak(self.device)
        self.current = {"start": time.perf_counter()}

    def on_step_end(self, args, state, control, **kwargs):
        _sync(self.device)
        self.current["step_s"] = time.perf_counter() - self.current["start"]
        self.steps.append(self.current)


def _random_vgg16_file(folder: str) -> str:
    """torchvision's VGG-16 `features.*` with random weights, as LPIPS's backbone file (no download)."""
    from torchvision.models import vgg16

    path = os.path.join(folder, "vgg16_random.pth")
    torch.save({f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}, path)
    return path


def ranke_steps(backbone: str, model, device, tiny: bool, steps: int, options: dict, workdir: str) -> dict:
    """Train `steps` RankE steps and report the last: time and peak memory of its policy and decoder phases."""
    scale = SCALES["tiny" if tiny else "full"]
    if tiny:
        reward = CLIPReward.tiny(device=device)
    else:
        import open_clip

        clip = open_clip.create_model("ViT-L-14", pretrained=None)
        reward = CLIPReward(model_name="ViT-L-14", pretrained=None, model=clip, device=device, dtype=torch.bfloat16)
    args = RankEConfig(
        output_dir=os.path.join(workdir, "run"), report_to=[], save_strategy="no", logging_steps=1, log_images_steps=0,
        bf16=not tiny, use_cpu=device.type == "cpu", seed=0, max_steps=steps, learning_rate=1e-6,
        per_device_train_batch_size=scale["per_device"], gradient_accumulation_steps=scale["accumulation"],
        num_generations=scale["generations"], decoder_batch_size=scale["decoder_batch"], decoder_bf16=not tiny,
        lpips_weights_path=_random_vgg16_file(workdir), dataloader_num_workers=0,
        guidance_scale=GUIDANCE_SCALES[backbone], **options,
    )
    dataset = load_prompt_dataset("tiny", max_samples=scale["per_device"] * scale["accumulation"] * steps, seed=0)
    trainer = RankEGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                               processing_class=build_processor(backbone))
    profile = _StepProfile(trainer, device)
    trainer.add_callback(profile)
    trainer.train()
    last = profile.steps[-1]
    return {
        "rollouts_per_step": scale["per_device"] * scale["accumulation"],
        "step_s": last["step_s"],
        "policy_phase_s": last["policy_s"],
        "decoder_phase_s": last["decoder_s"],
        "policy_peak_gib": last["policy_peak"],
        "decoder_peak_gib": last["decoder_peak"],
        "decoder_overhead_ratio": last["step_s"] / last["policy_s"],
    }


def _print(results: dict) -> None:
    for key, value in results.items():
        shown = "n/a (CPU)" if value is None else f"{value:.4g}" if isinstance(value, float) else value
        print(f"  {key:<28} {shown}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="janus", choices=list(GUIDANCE_SCALES),
                        help="janus: Janus-Pro-1B; llamagen: LlamaGen-XL (GPT-XL + flan-t5-xl + VQ-16).")
    parser.add_argument("--image_size", type=int, default=None, choices=[256, 512],
                        help="LlamaGen-XL only: 256 (stage 1, the default) or 512 px (stage 2).")
    parser.add_argument("--tiny", action="store_true", help="Tiny shapes (64 px) on CPU, for tests.")
    parser.add_argument("--device", default=None, help="Default: cuda when available (CPU with --tiny).")
    parser.add_argument("--steps", type=int, default=2, help="RankE steps; the last is reported (the first warms up).")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Checkpoint the policy's layers.")
    parser.add_argument("--decoder_gradient_checkpointing", action="store_true", help="Checkpoint the VQ decoder.")
    parser.add_argument("--ema_device", default=None, help="Where the EMA teacher decoder lives, e.g. 'cpu'.")
    parser.add_argument("--ema_dtype", default=None, help="EMA teacher dtype, e.g. 'bfloat16'.")
    parser.add_argument("--sampler", default=None, choices=["eager", "static", "compiled"],
                        help="Rollout sampler (default: compiled on a GPU, eager with --tiny).")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    if not args.tiny and device.type != "cuda":
        raise SystemExit("The full-scale check needs a GPU (about 2B random weights in bf16). Use --tiny on CPU.")
    if args.image_size is not None and (args.backbone != "llamagen" or args.tiny):
        raise SystemExit("--image_size chooses LlamaGen-XL's resolution (--backbone llamagen, not --tiny).")
    image_size = args.image_size or 256
    scale = SCALES["tiny" if args.tiny else "full"]
    guidance_scale = GUIDANCE_SCALES[args.backbone]
    baseline_rows = None if args.tiny else BASELINE_ROWS[args.backbone]
    sampler = args.sampler or ("eager" if args.tiny else "compiled")
    options = {k: getattr(args, k) for k in ("gradient_checkpointing", "decoder_gradient_checkpointing",
                                              "ema_device", "ema_dtype")}
    options["sampler"] = sampler

    model = build_model(args.backbone, args.tiny, device, image_size)
    full_name = "Janus-Pro-1B" if args.backbone == "janus" else f"LlamaGen-XL {image_size} px"
    results = {"scale": f"tiny {args.backbone}" if args.tiny else f"{full_name} (random weights, bf16)",
               "device": str(device), "parameters_billions": sum(p.numel() for p in model.parameters()) / 1e9}
    print(f"RankE GPU check: {results['scale']} on {device}")
    print(f"Rollouts: {scale['prompts']} prompts x {scale['samples']} samples, CFG {guidance_scale:g}")
    results.update(rollout_throughput(args.backbone, model, device, scale["prompts"], scale["samples"],
                                      guidance_scale, baseline_rows, sampler))  # fmt: skip
    _print(results)
    print(f"RankE: {args.steps} steps, the last one reported; options {options}")
    with tempfile.TemporaryDirectory() as workdir:
        step = ranke_steps(args.backbone, model, device, args.tiny, args.steps, options, workdir)
    _print(step)
    results.update(step, options=options)
    print("Projection (benchmarks/cost_model.py; paper: 1.05x time, 1.70x memory)")
    projected = projection(args.backbone, args.tiny, image_size, step, results["rollout_rows"],
                           results["ours_tokens_per_s"])
    _print(projected)
    results.update(projected)
    return results


if __name__ == "__main__":
    main()
