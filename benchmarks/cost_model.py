"""What one Std. RL step and one RankE step cost at real shapes: counted FLOPs and bytes, projected time and memory.

Every module is the real architecture at its real shape with random weights, built on the meta device (nothing is
allocated), and run once per unit of work (one prompt row through the policy, one image through the decoder, CLIP,
PatchGAN, LPIPS) under `torch.utils.flop_counter.FlopCounterMode`; the bytes a backward pass keeps are the tensors
autograd saves (`saved_tensors_hooks`). A step is then the paper's schedule (per device: 16 rollouts = 2 prompts x
G = 8, CFG, guided log-probs, beta > 0 so a reference forward, T_pi = 1, decoder batch 8 rollouts + 8 corpus
images, T_D derived as the recipes do: ceil(16 / 8) = 2 decoder steps per policy step) assembled from those units:

- Stage 1 (both modes): sampling with a KV cache (2B rows: conditional and unconditional), decoding B rollouts
  for the reward, CLIP on them, the reference forward and the policy's forward + backward on 2B rows, AdamW.
- Stage 2 (RankE only): decoder forward + backward on b rollouts, through CLIP (L_rbp) and the PatchGAN (L_RankGAN)
  to the pixels, decoder forward + backward on b corpus codes with LPIPS (L_rec), the EMA teacher's forward
  (L_cons), the PatchGAN's step on [real; fake], AdamW on decoder and discriminator, the EMA update.

Time: training passes are FLOP-bound (FLOPs / (peak x efficiency)); each sampling step is bandwidth-bound
(max(its FLOPs / compute, the weights it reads plus the KV cache so far / bandwidth)); optimizer and EMA updates
are bandwidth-bound. Memory: weights, gradients and AdamW states at the recipe's dtypes (policy and VQ bf16 as
`model_init_kwargs: {dtype: bfloat16}` loads them; PatchGAN, CLIP and LPIPS fp32), plus the larger of the phases'
activations (Stage 1's KV cache or saved activations; Stage 2's saved activations).

    python benchmarks/cost_model.py                 # Janus-Pro-1B (384 px) and LlamaGen-XL (256 and 512 px)
    python benchmarks/cost_model.py --tiny          # the same model at the test scale, in seconds
    python benchmarks/cost_model.py --validate      # also: decoder_overhead.py's CPU mid measurement, same run
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/shapes.py, also when imported by path
from shapes import MODEL_SHAPES, REWARD_SHAPES, STEP_SHAPES, build_model  # noqa: E402

PAPER = {"time": 1.05, "memory": 56 / 33}


@dataclass(frozen=True)
class Hardware:
    """A roofline: dense peak FLOP/s of the training dtype, memory bandwidth, and the fractions of both reached."""

    name: str
    peak_flops: float
    bandwidth: float
    flop_efficiency: float = 0.5  # (ours) a typical model-FLOPs utilisation of a training step
    bandwidth_efficiency: float = 0.8  # (ours)
    conv_flops: float | None = None  # convolutions' FLOP/s where they differ from matmuls' (a CPU); None: the same

    def compute_time(self, flops: float, conv: bool = False) -> float:
        peak = self.conv_flops if conv and self.conv_flops else self.peak_flops
        return flops / (peak * self.flop_efficiency)

    def memory_time(self, nbytes: float) -> float:
        return nbytes / (self.bandwidth * self.bandwidth_efficiency)


# Dense bf16 tensor-core peaks and HBM bandwidths from NVIDIA's data sheets (SXM parts).
H200 = Hardware("H200", peak_flops=989e12, bandwidth=4.8e12)
A100 = Hardware("A100-80GB", peak_flops=312e12, bandwidth=2.039e12)


@dataclass
class Settings:
    """The step being costed; defaults are recipes/janus_clip.yaml (the paper's settings)."""

    rollouts: int = 16  # per_device_train_batch_size
    group_size: int = 8  # G
    decoder_batch: int = 8  # b: rollouts (and corpus images) per decoder step
    decoder_steps: int | None = None  # T_D per policy step; None: the recipes' derived T_D, ceil(rollouts / b)
    accumulation: int = 1  # micro-batches of `rollouts` per policy step (gpu_check.py: 8 on one GPU)
    prompt_tokens: int = 40  # (ours) Janus chat-template prompt; LlamaGen always has its 120-token caption prefix
    guided_logprobs: bool = True  # logprob_mode: guided scores cond and uncond rows
    beta: float = 0.05
    lambda_rbp: float = 0.5
    lambda_gan: float = 0.1
    lambda_lpips: float = 1.0
    policy_bytes: int = 2  # bf16 weights, gradients and AdamW states (model_init_kwargs dtype)
    activation_bytes: int = 2  # bf16 autocast
    fp32_bytes: int = 4  # PatchGAN, CLIP, LPIPS
    discriminator_channels: int = 64
    discriminator_layers: int = 3
    activation_checkpointing: bool = False  # of the policy's layers (RankEConfig.activation_checkpointing)

    @classmethod
    def like_decoder_overhead(cls, config: str, **changes) -> Settings:
        """decoder_overhead.py's step: T_D = 1, no LPIPS, fp32 (bf16=False), the config's STEP_SHAPES."""
        return cls(decoder_steps=1, lambda_lpips=0.0, policy_bytes=4, activation_bytes=4,
                   **{**STEP_SHAPES.get(config, {}), **changes})


def count(fn, weights: frozenset = frozenset()) -> tuple[float, float]:
    """`(flops, saved_bytes)` of `fn()`: the FLOPs FlopCounterMode counts, and the bytes of the activations autograd
    saves for backward (tensors in `weights`, ids of parameters and buffers, and views of them are not new memory)."""
    saved = [0]

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in weights and id(base) not in weights:
            saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with FlopCounterMode(display=False) as counter, saved_tensors_hooks(pack, lambda t: t):
        fn()
    return float(counter.get_total_flops()), float(saved[0])


def num_params(module: torch.nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass
class Units:
    """Costs of one unit of work at a given shape: FLOPs (fwd, fwd+bwd) and saved bytes per row or image."""

    flops: dict = field(default_factory=dict)
    saved: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    codes: int = 0
    prefix: int = 0
    image_size: int = 0
    layers: int = 0
    kv_width: int = 0
    generation_params: int = 0  # what each sampling step reads: LM layers, image head and code embedding
    hidden: int = 0
    codebook: int = 0


def _policy_pieces(model, backbone: str, settings: Settings):
    """`(embed_prefix, embed_codes, lm, head, trained, frozen, codes, prefix)` of the image-generation path."""
    inner = model.model
    if backbone == "janus":
        codes, prefix = inner.vqmodel.config.num_patches**2, settings.prompt_tokens
        lm, head = inner.language_model, inner.generation_head
        embed_codes = lambda z: inner.generation_aligner(inner.generation_embeddings(z))  # noqa: E731
        embed_prefix = lambda: lm.embed_tokens(torch.zeros(1, prefix, dtype=torch.long))  # noqa: E731
        frozen = [inner.vision_model, inner.aligner, inner.vqmodel, model.lm_head]  # lm_head: the text head
    else:
        codes, prefix = model.config.image_grid_size**2, model.config.caption_max_length
        lm, head = inner.language_model, model.lm_head
        embed_codes = lm.embed_tokens
        caption_dim = model.config.caption_dim

        def embed_prefix():
            caption = torch.zeros(1, prefix, caption_dim)
            return inner.caption_projector(caption, torch.ones(1, prefix, dtype=torch.long))

        frozen = [inner.text_encoder, inner.vqmodel]
    for module in frozen:
        module.requires_grad_(False)
    return embed_prefix, embed_codes, lm, head, frozen, codes, prefix


def count_units(backbone: str, config: str, settings: Settings) -> Units:
    """Count every unit of work of `backbone` at `config` (shapes.py) on the meta device."""
    from ranke_trl.decoder.discriminator import PatchDiscriminator
    from ranke_trl.decoder.perceptual import build_lpips

    units = Units()
    with torch.device("meta"):
        model = _published_model(backbone, config) if config.startswith("real") else build_model(backbone, config)
        disc = PatchDiscriminator(3, settings.discriminator_channels, settings.discriminator_layers)
        reward = _build_clip(config)
    lpips = build_lpips("vgg", random_backbone=True).to("meta")  # built on CPU: its heads load from the wheel
    weights = frozenset(id(t) for m in (model, disc, reward, lpips) for t in [*m.parameters(), *m.buffers()])
    with torch.device("meta"):
        embed_prefix, embed_codes, lm, head, frozen, codes, prefix = _policy_pieces(model, backbone, settings)
        vq = model.model.vqmodel
        units.codes, units.prefix = codes, prefix
        text = model.config.get_text_config()
        units.layers = text.num_hidden_layers
        units.kv_width = text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
        units.hidden, units.codebook = text.hidden_size, vq.config.num_embeddings
        policy_trained = [p for p in model.parameters() if p.requires_grad]
        z = torch.zeros(1, codes, dtype=torch.long)

        def policy_loss():
            hidden = lm(inputs_embeds=torch.cat([embed_prefix(), embed_codes(z[:, :-1])], 1)).last_hidden_state
            logp = head(hidden[:, -codes:]).float().log_softmax(-1)
            return logp.gather(-1, z.unsqueeze(-1)).mean()

        with torch.no_grad():
            units.flops["policy_fwd"], _ = count(policy_loss)
        units.flops["policy_fwdbwd"], units.saved["policy"] = count(
            lambda: torch.autograd.grad(policy_loss(), policy_trained), weights
        )
        decoder_params = [p for n, p in vq.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))]
        for p in decoder_params:
            p.requires_grad_(True)
        with torch.no_grad():
            units.flops["decode"], _ = count(lambda: vq.decode(z))
        units.flops["decode_fwdbwd"], units.saved["decode"] = count(
            lambda: torch.autograd.grad(vq.decode(z).float().mean(), decoder_params), weights
        )
        units.image_size = vq.config.num_patches * 2 ** (len(vq.config.channel_multiplier) - 1)
        side = units.image_size
        disc_params = list(disc.parameters())

    pixels = lambda: torch.zeros(1, 3, side, side, device="meta", requires_grad=True)  # noqa: E731

    def grad_in(module_loss, leaf):
        # A non-leaf input: FlopCounterMode's module hooks refuse a leaf passed to autograd.grad.
        return torch.autograd.grad(module_loss(leaf * 1), leaf)

    def clip_image(x):
        size = reward.visual.image_size
        size = size[0] if isinstance(size, tuple) else size
        return reward.encode_image(F.interpolate(x, size=(size, size), mode="bicubic", antialias=True))

    with torch.no_grad():
        units.flops["clip_image"], _ = count(lambda: clip_image(pixels()))
        units.flops["clip_text"], _ = count(lambda: reward.encode_text(torch.zeros(1, 77, dtype=torch.long,
                                                                                     device="meta")))
    real = torch.zeros(1, 3, side, side, device="meta")
    units.flops["clip_bwd_input"], units.saved["clip"] = count(
        lambda: grad_in(lambda x: clip_image(x).sum(), pixels()), weights)
    units.flops["disc_bwd_input"], units.saved["disc"] = count(
        lambda: grad_in(lambda x: disc(x).mean(), pixels()), weights)
    units.flops["disc_step"], _ = count(lambda: torch.autograd.grad(disc(real).mean(), disc_params))
    units.flops["lpips_bwd_input"], units.saved["lpips"] = count(
        lambda: grad_in(lambda x: lpips(x, real).sum(), pixels()), weights)
    if backbone == "llamagen":  # the caption encoder runs once per prompt
        with torch.no_grad():
            units.flops["caption_encoder"], _ = count(lambda: model.model.text_encoder(
                input_ids=torch.zeros(1, prefix, dtype=torch.long, device="meta")))

    units.params = {
        "policy": sum(num_params(m) for _, m in model.model.named_children() if m is not vq) + num_params(
            getattr(model, "lm_head", None)) * (backbone == "llamagen"),
        "policy_trained": sum(p.numel() for p in policy_trained),
        "vq": num_params(vq),
        "decoder_trained": sum(p.numel() for p in decoder_params),
        "discriminator": sum(p.numel() for p in disc_params),
        "clip": num_params(reward),
        "lpips": num_params(lpips),
    }
    if backbone == "janus":
        units.params["policy"] += num_params(model.lm_head)
    # Each decoding step reads every weight it multiplies; an embedding is a row lookup, not a read of the table.
    units.generation_params = num_params(lm) - num_params(lm.embed_tokens) + num_params(head) + (
        num_params(model.model.generation_embeddings) + num_params(model.model.generation_aligner)
        if backbone == "janus" else 0)
    return units


def _published_model(backbone: str, config: str):
    """Janus-Pro-1B ("real") or LlamaGen-XL ("real": 256 px, "real512"), from gpu_check.py's published configs."""
    import gpu_check

    if backbone == "janus":
        from transformers import JanusForConditionalGeneration

        return JanusForConditionalGeneration(gpu_check.janus_pro_1b_config())
    from ranke_trl.models.llamagen import LlamaGenForImageGeneration

    return LlamaGenForImageGeneration(gpu_check.llamagen_xl_config(512 if config == "real512" else 256))


def _build_clip(config: str):
    import open_clip

    from ranke_trl.tiny import tiny_clip_config

    shape = REWARD_SHAPES.get("real" if config.startswith("real") else config) or tiny_clip_config()
    return open_clip.CLIP(**shape).eval().requires_grad_(False)


# Work done by convolutional networks (VQ decoder, PatchGAN, LPIPS); the rest is matmuls (transformers).
CONV_WORK = {"reward_decode", "stage2_fake_decode_fwdbwd", "stage2_gan_disc", "stage2_rec_decode_fwdbwd",
             "stage2_rec_lpips", "stage2_ema_teacher", "stage2_disc_step"}


@dataclass
class StepCost:
    """One policy step's FLOPs (FLOP-bound work), sampling (per-step FLOPs and bytes), optimizer bytes, memory."""

    flops: dict = field(default_factory=dict)
    sampling_flops: float = 0.0
    sampling_bytes: list = field(default_factory=list)  # bytes read at each decoding step
    update_bytes: float = 0.0
    memory: dict = field(default_factory=dict)

    def total_flops(self) -> float:
        return sum(self.flops.values()) + self.sampling_flops

    def time(self, hw: Hardware) -> float:
        steps = len(self.sampling_bytes)
        step_flops = self.sampling_flops / max(steps, 1)
        sampling = sum(max(hw.compute_time(step_flops), hw.memory_time(b)) for b in self.sampling_bytes)
        passes = sum(hw.compute_time(v, conv=k in CONV_WORK) for k, v in self.flops.items())
        return passes + sampling + hw.memory_time(self.update_bytes)

    def peak_bytes(self) -> float:
        static = sum(v for k, v in self.memory.items() if not k.startswith("act_"))
        return static + max((v for k, v in self.memory.items() if k.startswith("act_")), default=0.0)


def _policy_saved(u: Units, s: Settings) -> float:
    """Saved bytes per row of the policy's forward (fp32 count): all layers' activations, or with activation
    checkpointing each layer's input plus one layer recomputed during backward (the head's share is kept whole)."""
    if not s.activation_checkpointing:
        return u.saved["policy"]
    head = u.codes * u.codebook * 4 * 2  # the fp32 logits and log-softmax over the codebook
    per_layer = (u.saved["policy"] - head) / u.layers
    return head + per_layer + u.layers * (u.prefix + u.codes) * u.hidden * 4


def step_cost(units: Units, settings: Settings, ranke: bool) -> StepCost:
    """Assemble one policy step (and, for RankE, its T_D decoder steps) from the counted units."""
    s, u, cost = settings, units, StepCost()
    B, b, pb, ab, f32 = s.rollouts, s.decoder_batch, s.policy_bytes, s.activation_bytes, s.fp32_bytes
    act = ab / 4  # units were counted in fp32
    sample_rows, train_rows, prompts = 2 * B, (2 if s.guided_logprobs else 1) * B, B // s.group_size
    # The KV-cached sampler does the matmuls of one causal forward over [prompt; codes], one code at a time.
    cost.sampling_flops = sample_rows * u.flops["policy_fwd"]
    kv_per_token = sample_rows * u.layers * 2 * u.kv_width * pb
    cost.sampling_bytes = [u.generation_params * pb + kv_per_token * (u.prefix + t) for t in range(u.codes)]
    cost.flops["caption_encoder"] = prompts * u.flops.get("caption_encoder", 0.0)
    cost.flops["reward_decode"] = B * u.flops["decode"]
    cost.flops["reward_clip"] = B * u.flops["clip_image"] + prompts * u.flops["clip_text"]
    cost.flops["reference_fwd"] = train_rows * u.flops["policy_fwd"] if s.beta > 0 else 0.0
    cost.flops["policy_fwdbwd"] = train_rows * u.flops["policy_fwdbwd"]
    if s.activation_checkpointing:  # the layers' forward runs again during backward
        cost.flops["policy_fwdbwd"] += train_rows * u.flops["policy_fwd"]
    if s.accumulation > 1:  # Stage 1 runs once per micro-batch; its memory is one micro-batch's
        cost.flops = {k: v * s.accumulation for k, v in cost.flops.items()}
        cost.sampling_flops *= s.accumulation
        cost.sampling_bytes = cost.sampling_bytes * s.accumulation
    adamw_accesses = 7  # read param, grad, m, v; write param, m, v
    cost.update_bytes = adamw_accesses * u.params["policy_trained"] * pb
    cost.memory = {
        "policy_weights": u.params["policy"] * pb,
        "reference_weights": u.params["policy"] * pb if s.beta > 0 else 0.0,
        "policy_grads_adamw": 3 * u.params["policy_trained"] * pb,
        "vq_weights": u.params["vq"] * pb,
        "clip_weights": u.params["clip"] * f32,
        "act_stage1": max(sample_rows * u.layers * 2 * u.kv_width * (u.prefix + u.codes) * pb,
                          train_rows * _policy_saved(u, s) * act),
    }
    if not ranke:
        return cost
    n = s.decoder_steps or math.ceil(s.rollouts * s.accumulation / b)
    cost.flops["stage2_fake_decode_fwdbwd"] = n * b * u.flops["decode_fwdbwd"]
    cost.flops["stage2_rbp_clip"] = n * b * u.flops["clip_bwd_input"] if s.lambda_rbp > 0 else 0.0
    cost.flops["stage2_gan_disc"] = n * b * u.flops["disc_bwd_input"] if s.lambda_gan > 0 else 0.0
    cost.flops["stage2_rec_decode_fwdbwd"] = n * b * u.flops["decode_fwdbwd"]
    cost.flops["stage2_rec_lpips"] = n * b * u.flops["lpips_bwd_input"] if s.lambda_lpips > 0 else 0.0
    cost.flops["stage2_ema_teacher"] = n * b * u.flops["decode"]
    cost.flops["stage2_disc_step"] = n * 2 * b * u.flops["disc_step"] if s.lambda_gan > 0 else 0.0
    cost.update_bytes += n * (adamw_accesses * (u.params["decoder_trained"] * pb + u.params["discriminator"] * f32)
                              + 3 * u.params["decoder_trained"] * pb)  # + EMA: read both, write the teacher
    saved = 2 * u.saved["decode"] + u.saved["clip"] * (s.lambda_rbp > 0) + u.saved["disc"] * (s.lambda_gan > 0)
    saved += u.saved["lpips"] * (s.lambda_lpips > 0)
    cost.memory.update({
        "decoder_grads_adamw": 3 * u.params["decoder_trained"] * pb,
        "ema_teacher": u.params["decoder_trained"] * pb,
        "discriminator": 4 * u.params["discriminator"] * f32 if s.lambda_gan > 0 else 0.0,
        "lpips_weights": u.params["lpips"] * f32 if s.lambda_lpips > 0 else 0.0,
        "act_stage2": b * saved * act,
    })
    return cost


def project(backbone: str, config: str, settings: Settings, hardware=(H200, A100)) -> dict:
    """Count, assemble both modes and print their FLOPs, memory and projected ratios; returns the figures."""
    units = count_units(backbone, config, settings)
    std, ranke = step_cost(units, settings, ranke=False), step_cost(units, settings, ranke=True)
    gib = 1024**3
    t_d = settings.decoder_steps or math.ceil(settings.rollouts * settings.accumulation / settings.decoder_batch)
    print(f"\n{backbone} @ {config}: {units.codes} codes ({units.image_size} px), B={settings.rollouts}, "
          f"G={settings.group_size}, decoder batch {settings.decoder_batch}, T_D={t_d}")
    print(f"  params: policy {units.params['policy'] / 1e6:.1f}M (trained {units.params['policy_trained'] / 1e6:.1f}M)"
          f", VQ {units.params['vq'] / 1e6:.1f}M (decoder trained {units.params['decoder_trained'] / 1e6:.1f}M), "
          f"PatchGAN {units.params['discriminator'] / 1e6:.2f}M, CLIP {units.params['clip'] / 1e6:.1f}M, "
          f"LPIPS {units.params['lpips'] / 1e6:.1f}M")
    print(f"  per image: policy fwd {units.flops['policy_fwd'] / 1e9:.1f} GFLOP : decoder fwd "
          f"{units.flops['decode'] / 1e9:.1f} GFLOP = {units.flops['policy_fwd'] / units.flops['decode']:.2f}")
    print(f"  FLOPs per step: Std. RL {std.total_flops() / 1e12:.2f} T, RankE {ranke.total_flops() / 1e12:.2f} T "
          f"({ranke.total_flops() / std.total_flops():.2f}x)")
    for name, value in ranke.flops.items():
        if value:
            print(f"    {name:<28} {value / 1e12:8.3f} TFLOP")
    print(f"    {'sampling (KV-cached)':<28} {ranke.sampling_flops / 1e12:8.3f} TFLOP")
    print(f"  peak memory: Std. RL {std.peak_bytes() / gib:.2f} GiB, RankE {ranke.peak_bytes() / gib:.2f} GiB "
          f"-> {ranke.peak_bytes() / std.peak_bytes():.2f}x  (paper: {PAPER['memory']:.2f}x)")
    for name, value in ranke.memory.items():
        print(f"    {name:<28} {value / gib:8.3f} GiB")
    result = {"units": units, "std": std, "ranke": ranke, "memory_ratio": ranke.peak_bytes() / std.peak_bytes()}
    for hw in hardware:
        t_std, t_ranke = std.time(hw), ranke.time(hw)
        print(f"  {hw.name} ({hw.peak_flops / 1e12:.0f} TFLOP/s x {hw.flop_efficiency}, "
              f"{hw.bandwidth / 1e12:.2f} TB/s x {hw.bandwidth_efficiency}): Std. RL {t_std:.2f} s, RankE "
              f"{t_ranke:.2f} s per step -> {t_ranke / t_std:.2f}x  (paper: {PAPER['time']:.2f}x)")
        result[f"time_ratio_{hw.name}"] = t_ranke / t_std
    variants = {"with T_D = 1": dict(decoder_steps=1),
                "with the policy's activation checkpointing": dict(activation_checkpointing=True)}
    for name, changes in variants.items():
        if any(getattr(settings, k) != v for k, v in changes.items()):
            other = dataclasses.replace(settings, **changes)
            a, b = step_cost(units, other, ranke=False), step_cost(units, other, ranke=True)
            print(f"  {name}: time {b.time(H200) / a.time(H200):.2f}x on H200, memory "
                  f"{b.peak_bytes() / a.peak_bytes():.2f}x ({a.peak_bytes() / gib:.1f} -> {b.peak_bytes() / gib:.1f} GiB)")
    return result


def rollout_roofline(units: Units, images: int, hw: Hardware) -> float:
    """Image tokens/s of KV-cached CFG sampling of `images` images at `hw`'s peaks (efficiency 1): each decoding step
    takes max(its FLOPs / peak FLOP/s, (generation weights + KV cache so far) / bandwidth)."""
    ideal = Hardware(hw.name, hw.peak_flops, hw.bandwidth, flop_efficiency=1.0, bandwidth_efficiency=1.0)
    cost = step_cost(units, Settings(rollouts=images, group_size=1), ranke=False)
    step_flops = cost.sampling_flops / units.codes
    seconds = sum(max(ideal.compute_time(step_flops), ideal.memory_time(b)) for b in cost.sampling_bytes)
    return images * units.codes / seconds


def cut_decode_twice(units: Units, settings: Settings, hw: Hardware, std: StepCost, ranke: StepCost) -> None:
    """Print the saving if Stage 2's first decoder step reused Stage 1's render of its rollouts (same weights when
    T_D = 1: the decoder has not moved since the reward decode), instead of decoding them again."""
    saved = settings.decoder_batch * units.flops["decode"]
    t_std, t_ranke = std.time(hw), ranke.time(hw)
    t_cut = t_ranke - hw.compute_time(saved, conv=True)
    print(f"  cut: rollouts are decoded twice (reward, then Stage 2); keeping Stage 1's graph for the b = "
          f"{settings.decoder_batch} Stage-2 rollouts saves {saved / 1e12:.2f} TFLOP per step on {hw.name}: "
          f"{t_ranke / t_std:.3f}x -> {t_cut / t_std:.3f}x (for {settings.decoder_batch} x "
          f"{units.saved['decode'] * settings.activation_bytes / 4 / 1024**3:.2f} GiB of decoder activations "
          "held through the GRPO update)")


def cpu_hardware(threads: int) -> Hardware:
    """This CPU's roofline, measured: fp32 matmul and 3x3-conv FLOP/s and copy bandwidth (efficiency 1: measured)."""
    import time

    torch.set_num_threads(threads)

    def rate(fn, work):
        fn()
        start = time.perf_counter()
        for _ in range(3):
            fn()
        return 3 * work / (time.perf_counter() - start)

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, w = torch.randn(4, 64, 64, 64), torch.randn(64, 64, 3, 3)
    big = torch.empty(64 * 1024**2 // 4)
    return Hardware(
        f"CPU ({threads} threads, measured)",
        peak_flops=rate(lambda: a @ b, 2 * 1024**3),
        conv_flops=rate(lambda: F.conv2d(x, w, padding=1), 2 * 4 * 64 * 64 * 64 * 64 * 9),
        bandwidth=rate(lambda: big.clone(), 2 * big.numel() * 4),
        flop_efficiency=1.0,
        bandwidth_efficiency=1.0,
    )


def validate(steps: int, threads: int) -> dict:
    """Predict decoder_overhead.py's CPU mid ratios with this model, measure them in the same run, print the error."""
    import decoder_overhead

    settings = Settings.like_decoder_overhead("mid", prompt_tokens=64)
    units = count_units("janus", "mid", settings)
    std, ranke = step_cost(units, settings, ranke=False), step_cost(units, settings, ranke=True)
    hw = cpu_hardware(threads)
    baseline = decoder_overhead.baseline_rss(threads)
    predicted_time = ranke.time(hw) / std.time(hw)
    predicted_memory = (baseline + ranke.peak_bytes()) / (baseline + std.peak_bytes())
    env = {"OMP_NUM_THREADS": str(threads)}
    measured = {mode: decoder_overhead.run_mode("mid", mode, steps, [], env=env) for mode in ("std_rl", "ranke")}
    measured_time = measured["ranke"]["seconds"] / measured["std_rl"]["seconds"]
    measured_memory = measured["ranke"]["peak_bytes"] / measured["std_rl"]["peak_bytes"]
    print(f"\nvalidation at the CPU mid config ({steps} policy steps, {threads} threads, load {_load()}):")
    print(f"  {hw.name}: matmul {hw.peak_flops / 1e9:.1f} GFLOP/s, conv {hw.conv_flops / 1e9:.1f} GFLOP/s, "
          f"copy {hw.bandwidth / 1e9:.1f} GB/s; process baseline RSS {baseline / 1024**3:.2f} GiB")
    print(f"  predicted per step: Std. RL {std.time(hw):.2f} s, RankE {ranke.time(hw):.2f} s; measured: Std. RL "
          f"{measured['std_rl']['seconds'] / steps:.2f} s, RankE {measured['ranke']['seconds'] / steps:.2f} s")
    result = {}
    for name, predicted, actual in (("time", predicted_time, measured_time),
                                    ("memory", predicted_memory, measured_memory)):
        error = predicted / actual - 1
        result[name] = (predicted, actual, error)
        print(f"  {name} ratio RankE / Std. RL: predicted {predicted:.2f}x, measured {actual:.2f}x, "
              f"error {error:+.0%}")
    return result


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the test-scale models of both backbones (seconds)")
    parser.add_argument("--validate", action="store_true", help="also predict and measure the CPU mid ratios")
    parser.add_argument("--steps", type=int, default=4, help="policy steps of the --validate measurement")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads of --validate")
    parser.add_argument("--backbones", nargs="*", default=["janus", "llamagen"], choices=list(MODEL_SHAPES),
                        help="backbones to project (none: only --validate)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, FLOPs counted on the meta device; load {_load()}")
    targets = {"janus": ["real", "proportional"], "llamagen": ["real", "real512", "proportional"]}
    results = {}
    for backbone in args.backbones:
        for config in ["tiny"] if args.tiny else targets[backbone]:
            result = project(backbone, config, Settings())
            cut_decode_twice(result["units"], Settings(), H200, result["std"], result["ranke"])
            results[(backbone, config)] = result
            if config in ("real", "proportional"):  # what decoder_overhead.py --config proportional measures
                like = Settings.like_decoder_overhead(config)
                std, ranke = (step_cost(result["units"], like, ranke=r) for r in (False, True))
                print(f"  at decoder_overhead.py's settings (T_D = 1, no LPIPS, fp32, "
                      f"{like.discriminator_channels}-channel PatchGAN): FLOPs {ranke.total_flops() / std.total_flops():.2f}x, "
                      f"memory {ranke.peak_bytes() / std.peak_bytes():.2f}x (+ the process's baseline RSS on a CPU)")
    if args.validate:
        results["validation"] = validate(args.steps, args.threads)
    return results


if __name__ == "__main__":
    main()
