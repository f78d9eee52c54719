"""Model shapes of every benchmark script: one place, so their figures are about the same models.

`MODEL_SHAPES[backbone][config]` holds the keyword arguments of the backbone's builder
(`ranke_trl.tiny.build_tiny_janus`, `ranke_trl.models.llamagen.tiny_llamagen.build_tiny_llamagen`);
`build_model(backbone, config)` calls it. The real models' published configs are in `gpu_check.py`
(`janus_pro_1b_config`, `llamagen_xl_config`); `cost_model.py` counts them on the meta device. `REWARD_SHAPES[config]` is the CLIP reward's open_clip config
(None: `CLIPReward.tiny()`).

- "tiny": the test scale (64 px, 8x8 codes for Janus and 4x4 for LlamaGen, codebook 256, 2-layer, 64-wide).
- "mid": 256 px (16x16 codes), a 4-layer, 256-wide transformer, the test-scale VQ.
- "proportional": the real policy:decoder cost ratio at a size one CPU runs. The policy keeps the real layer
  shape (Janus-Pro-1B: hidden 2048, 16 heads, MLP 5632; LlamaGen-XL: hidden 1280, 20 heads, MLP 3584), the
  real generation head onto the real codebook (16384) and the real code count (Janus 576 at 384 px, LlamaGen
  256 at 256 px), with 1 layer instead of 24 (Janus) and 2 instead of 36 (LlamaGen). The VQ is the real VQ-16
  architecture (channel multipliers [1, 1, 2, 2, 4], 2 residual blocks per level, 3 in the decoder) at a quarter
  of its width (base channels 32
  instead of 128, latent 64 instead of 256), so its FLOPs shrink by 570 / 36.3 = 15.7x at 384 px (counted with
  `FlopCounterMode`). The layer counts are the integers nearest to a 15.7x shrink of the policy: per image
  (one teacher-forced forward over the codes, against one decoder forward) the policy:decoder FLOP ratio is
  2.68 at real shape (Janus-Pro-1B: 1.53 TFLOP : 0.57 TFLOP) and 2.90 here (+8%); for LlamaGen-XL at 256 px
  (the 120-token caption prefix included) it is 2.32 real (0.59 : 0.25 TFLOP) and 2.67 here (+15%; one layer
  would give 1.67, -28%). `benchmarks/cost_model.py`
  recounts both ratios from the built modules and prints them. The CLIP reward is scaled the same way: the
  real ViT-L/14 widths (vision 1024, text 768) and input (224 px, patch 14) with 2 vision layers and 1 text
  layer instead of 24 and 12, and the PatchGAN at a quarter width (`STEP_SHAPES`: 16 base channels, 16x fewer
  FLOPs). LPIPS (a fixed VGG-16; 1.2% of a real Janus RankE step) is left out, as decoder_overhead.py always
  leaves it out (its weights are not available offline). Not scaled: the caption encoder of LlamaGen (a 2-layer, 32-wide T5 here, the
  3B flan-t5-xl in the paper; it runs once per prompt, not per rollout) and the prompt vocabulary of Janus
  (the tiny tokenizer's; the real 102400-row embedding and LM head are weight memory, not step FLOPs).
  One RankE step (16 rollouts, G = 8, decoder batch 8) takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

JANUS_PRO_1B = dict(hidden_size=2048, num_heads=16, intermediate_size=5632, num_layers=24)
LLAMAGEN_XL = dict(hidden_size=1280, num_heads=20, intermediate_size=3584, num_layers=36)
# The VQ-16 tokenizer of both (shared/LLAMAGEN.md section 3, NOTES.md "Sizes").
VQ16 = dict(base_channels=128, latent_channels=256, channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2)
VQ16_QUARTER = dict(VQ16, base_channels=32, latent_channels=64)
CODEBOOK = 16384

MODEL_SHAPES = {
    "janus": {
        "tiny": dict(image_size=64, patch_size=8, hidden_size=64, num_layers=2),  # 8x8 codes
        "mid": dict(image_size=256, patch_size=16, hidden_size=256, num_layers=4),  # 16x16 codes
        "proportional": dict(
            image_size=384, patch_size=16, codebook_size=CODEBOOK, **dict(JANUS_PRO_1B, num_layers=1), **VQ16_QUARTER
        ),  # 24x24 codes
    },
    "llamagen": {
        "tiny": dict(grid_size=4, hidden_size=64, num_layers=2),  # 64 px, 4x4 codes
        "mid": dict(grid_size=16, hidden_size=256, num_layers=4),  # 256 px, 16x16 codes
        "proportional": dict(
            grid_size=16, codebook_size=CODEBOOK, **dict(LLAMAGEN_XL, num_layers=2), vq_overrides=VQ16_QUARTER
        ),
    },
}

# RankEConfig fields that scale with the config (decoder_overhead.py passes them; cost_model.py counts them).
STEP_SHAPES = {"proportional": dict(discriminator_channels=16)}

# open_clip CLIP configs of the reward; None means `CLIPReward.tiny()` (64 px input).
VIT_L_14 = dict(
    embed_dim=768,
    vision_cfg=dict(image_size=224, layers=24, width=1024, patch_size=14),
    text_cfg=dict(context_length=77, vocab_size=49408, width=768, heads=12, layers=12),
    quick_gelu=True,
)
REWARD_SHAPES = {
    "tiny": None,
    "mid": None,
    "proportional": dict(
        VIT_L_14,
        vision_cfg=dict(VIT_L_14["vision_cfg"], layers=2),
        text_cfg=dict(VIT_L_14["text_cfg"], layers=1),
    ),
    "real": VIT_L_14,
}


def build_model(backbone: str, config: str, seed: int = 0):
    """The backbone's model at `config` (random weights, eval mode, fp32, on the current default device)."""
    if backbone == "janus":
        from ranke_trl.tiny import build_tiny_janus

        return build_tiny_janus(seed=seed, **MODEL_SHAPES[backbone][config])
    if backbone == "llamagen":
        from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen

        return build_tiny_llamagen(seed=seed, **MODEL_SHAPES[backbone][config])
    raise ValueError(f"Unknown backbone {backbone!r}; one of {list(MODEL_SHAPES)}.")


def build_reward(config: str, seed: int = 0):
    """The CLIP reward at `config`: `CLIPReward.tiny()` or an open_clip CLIP of `REWARD_SHAPES[config]`."""
    import open_clip
    import torch

    from ranke_trl.rewards import CLIPReward

    shape = REWARD_SHAPES[config]
    if shape is None:
        return CLIPReward.tiny(seed=seed)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**shape)
    return CLIPReward(model_name="ViT-L-14", pretrained=None, model=model)
