"""GPU check: RankE at the real Janus-Pro-1B shapes (random weights, bf16) on one GPU, in a few minutes.

No download: the model is built from Janus-Pro-1B's published config with random weights, the CLIP reward is a
random ViT-L-14 and LPIPS a random VGG-16, so every tensor has its real shape and cost. Prints:

1. Rollout throughput, image tokens/s: our KV-cached CFG sampler against `generate(generation_mode="image")`, for
   16 prompts x 8 samples (CFG doubles the rows); and whether both give the same codes under greedy decoding
   (exactly so in fp32; in bf16 their attention paths round differently, so greedy paths may part after a tie).
2. RankE steps (policy phase + decoder phase), the last one reported: seconds and peak accelerator memory of each
   phase.
3. The decoder-overhead ratio: RankE step time / its policy phase alone (the Std. RL step).

    python benchmarks/gpu_check.py                                   # cuda, Janus-Pro-1B shapes, bf16
    python benchmarks/gpu_check.py --gradient_checkpointing --decoder_gradient_checkpointing --ema_device cpu
    python benchmarks/gpu_check.py --tiny                            # tiny shapes on CPU, seconds (tests)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from transformers import TrainerCallback

from ranke_trl import RankEConfig, RankEGRPOTrainer
from ranke_trl.data import load_prompt_dataset
from ranke_trl.policy import JanusPolicy
from ranke_trl.rewards import CLIPReward
from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_processor, build_tiny_janus_tokenizer

GiB = 2**30
# Per scale: rollout benchmark (prompts x samples), RankE step (per-device batch x accumulation, group size G),
# decoder batch. The full scale draws 16 prompts x 8 samples per optimiser step, as the rollout benchmark does.
SCALES = {
    "full": dict(prompts=16, samples=8, per_device=16, accumulation=8, generations=8, decoder_batch=8),
    "tiny": dict(prompts=2, samples=4, per_device=4, accumulation=2, generations=4, decoder_batch=4),
}


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


def build_model(tiny: bool, device: torch.device):
    """The policy with random weights: tiny (fp32) or Janus-Pro-1B's shapes (bf16, built on `device`)."""
    if tiny:
        return build_tiny_janus(seed=0).to(device)
    from transformers import JanusForConditionalGeneration

    torch.manual_seed(0)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def rollout_throughput(model, device, prompts: int, samples: int, guidance_scale: float = 5.0) -> dict:
    """Image tokens/s of our sampler and of HF `generate` on `prompts x samples` rows, plus a greedy agreement check."""
    policy = JanusPolicy(build_tiny_janus_tokenizer(), model)
    texts = [f"prompt number {i}: a photo of object {i}" for i in range(prompts) for _ in range(samples)]
    batch = policy.encode_prompts(texts, device=device)
    single = policy.encode_prompts(["a red circle"], device=device)

    def ours(rows):
        return policy.sample(model, rows, guidance_scale=guidance_scale, temperature=1.0)

    def hf(rows):
        return model.generate(input_ids=rows.input_ids, attention_mask=rows.attention_mask, generation_mode="image",
                              do_sample=True, guidance_scale=guidance_scale, top_k=0, temperature=1.0)

    with torch.no_grad():
        greedy_ours = policy.sample(model, single, guidance_scale=guidance_scale, do_sample=False)
        greedy_hf = model.generate(input_ids=single.input_ids, attention_mask=single.attention_mask,
                                   generation_mode="image", do_sample=False, guidance_scale=guidance_scale, top_k=0)
        seconds = {}
        for name, fn in (("ours", ours), ("hf_generate", hf)):
            fn(single)  # warm-up: kernels, allocator
            _sync(device)
            start = time.perf_counter()
            codes = fn(batch)
            _sync(device)
            seconds[name] = time.perf_counter() - start
            assert codes.shape == (len(texts), policy.num_image_tokens), codes.shape
    tokens = len(texts) * policy.num_image_tokens
    return {
        "rollout_rows": len(texts),
        "greedy_codes_identical": bool(torch.equal(greedy_ours, greedy_hf)),
        "ours_tokens_per_s": tokens / seconds["ours"],
        "hf_generate_tokens_per_s": tokens / seconds["hf_generate"],
        "speedup_vs_hf_generate": seconds["hf_generate"] / seconds["ours"],
    }


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


def ranke_steps(model, device, tiny: bool, steps: int, options: dict, workdir: str) -> dict:
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
        lpips_weights_path=_random_vgg16_file(workdir), dataloader_num_workers=0, **options,
    )
    dataset = load_prompt_dataset("tiny", max_samples=scale["per_device"] * scale["accumulation"] * steps, seed=0)
    trainer = RankEGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                               processing_class=build_tiny_janus_processor())
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
    parser.add_argument("--tiny", action="store_true", help="Tiny shapes (64 px, 8x8 codes) on CPU, for tests.")
    parser.add_argument("--device", default=None, help="Default: cuda when available (CPU with --tiny).")
    parser.add_argument("--steps", type=int, default=2, help="RankE steps; the last is reported (the first warms up).")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="Checkpoint the policy's layers.")
    parser.add_argument("--decoder_gradient_checkpointing", action="store_true", help="Checkpoint the VQ decoder.")
    parser.add_argument("--ema_device", default=None, help="Where the EMA teacher decoder lives, e.g. 'cpu'.")
    parser.add_argument("--ema_dtype", default=None, help="EMA teacher dtype, e.g. 'bfloat16'.")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    if not args.tiny and device.type != "cuda":
        raise SystemExit("The full-scale check needs a GPU (random 1.87B weights in bf16). Use --tiny on CPU.")
    scale = SCALES["tiny" if args.tiny else "full"]
    options = {k: getattr(args, k) for k in ("gradient_checkpointing", "decoder_gradient_checkpointing",
                                              "ema_device", "ema_dtype")}

    model = build_model(args.tiny, device)
    results = {"scale": "tiny" if args.tiny else "Janus-Pro-1B (random weights, bf16)", "device": str(device),
               "parameters_billions": sum(p.numel() for p in model.parameters()) / 1e9}
    print(f"RankE GPU check: {results['scale']} on {device}")
    print(f"Rollouts: {scale['prompts']} prompts x {scale['samples']} samples, CFG 5.0")
    results.update(rollout_throughput(model, device, scale["prompts"], scale["samples"]))
    _print(results)
    print(f"RankE: {args.steps} steps, the last one reported; options {options}")
    with tempfile.TemporaryDirectory() as workdir:
        step = ranke_steps(model, device, args.tiny, args.steps, options, workdir)
    _print(step)
    results.update(step, options=options)
    return results


if __name__ == "__main__":
    main()
