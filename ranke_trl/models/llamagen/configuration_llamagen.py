"""LlamaGen text-to-image configuration (FoundationVision/LlamaGen, `GPT-XL` + `VQ-16`, T2I stage 1 / stage 2)."""

from __future__ import annotations

from transformers import AutoConfig, GenerationConfig, JanusVQVAEConfig, LlamaConfig, PreTrainedConfig, T5Config
from transformers.configuration_utils import SubConfigSpec

#: The caption prefix of every LlamaGen T2I model: 120 T5 positions (hard-coded upstream, `cls_token_num`).
CAPTION_MAX_LENGTH = 120

# GPT-XL (autoregressive/models/gpt.py): dim 1280, 36 layers, 20 heads, SwiGLU hidden find_multiple(2*4*1280/3, 256).
_GPT_XL = dict(
    hidden_size=1280,
    intermediate_size=3584,
    num_hidden_layers=36,
    num_attention_heads=20,
    num_key_value_heads=20,
    hidden_act="silu",
    rms_norm_eps=1e-5,
    vocab_size=16384,
    max_position_embeddings=CAPTION_MAX_LENGTH + 16 * 16,
    rope_theta=10000.0,
    attention_bias=False,
    mlp_bias=False,
    tie_word_embeddings=False,
)
# VQ-16 (tokenizer/tokenizer_image/vq_model.py) in JanusVQVAE's terms; the grid (num_patches) follows the image size.
_VQ_16 = dict(
    embed_dim=8,
    num_embeddings=16384,
    latent_channels=256,
    base_channels=128,
    channel_multiplier=[1, 1, 2, 2, 4],
    num_res_blocks=2,
    num_patches=16,
)
# google/flan-t5-xl's encoder: d_model 2048, the caption width.
_FLAN_T5_XL = dict(
    vocab_size=32128,
    d_model=2048,
    d_kv=64,
    d_ff=5120,
    num_layers=24,
    num_heads=32,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)


class LlamaGenConfig(PreTrainedConfig):
    r"""Configuration of [`LlamaGenForImageGeneration`], LlamaGen's text-conditional image generator.

    The defaults describe LlamaGen-XL stage 1 (256 px, a 16x16 grid of VQ-16 codes, captions encoded by
    `google/flan-t5-xl`).

    Args:
        text_config (`LlamaConfig` or dict): the GPT, a plain Llama decoder (no biases, untied head, RMSNorm 1e-5).
            Its `vocab_size` is the codebook size and `max_position_embeddings` must cover
            `caption_max_length + image_grid_size**2`.
        vq_config (`JanusVQVAEConfig` or dict): the VQ-16 tokenizer, in `JanusVQVAE`'s layout; `num_patches` is
            the code grid side.
        caption_encoder_config (`T5Config` or dict): the frozen T5 encoder that turns prompt token ids into caption
            features of width `caption_dim`.
        caption_dim (`int`): width of the caption features (T5's `d_model`; 2048 for flan-t5-xl).
        caption_max_length (`int`): number of caption positions before the first image token (120 upstream).
        image_grid_size (`int`): codes per image side: 16 for 256 px, 32 for 512 px.
        text_encoder_name_or_path (`str`): where the T5 encoder and tokenizer came from (provenance, and the tokenizer
            the processor is built from).
        caption_dropout_prob (`float`): probability with which training replaced a caption by the unconditional
            embedding (upstream `class_dropout_prob`); kept for reference, the port does not use it.
    """

    model_type = "llamagen"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=_GPT_XL),
        "vq_config": SubConfigSpec(config_class=JanusVQVAEConfig, init_kwargs=_VQ_16),
        "caption_encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="t5", init_kwargs=_FLAN_T5_XL),
    }

    text_config: dict | PreTrainedConfig | None = None
    vq_config: dict | PreTrainedConfig | None = None
    caption_encoder_config: dict | PreTrainedConfig | None = None
    caption_dim: int = 2048
    caption_max_length: int = CAPTION_MAX_LENGTH
    image_grid_size: int = 16
    text_encoder_name_or_path: str = "google/flan-t5-xl"
    caption_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # A partial dict overrides LlamaGen-XL's values (not the generic Llama / T5 defaults), so
        # `text_config={"num_hidden_layers": 2}` is a two-layer GPT-XL.
        for key, spec in self.sub_configs_defaults.items():
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, {**spec.init_kwargs, **value})
        super().__post_init__(**kwargs)
        text, vq, t5 = self.text_config, self.vq_config, self.caption_encoder_config
        problems = []
        if vq.num_patches != self.image_grid_size:
            problems.append(f"vq_config.num_patches={vq.num_patches} but image_grid_size={self.image_grid_size}")
        if text.vocab_size != vq.num_embeddings:
            problems.append(f"text_config.vocab_size={text.vocab_size} but the codebook has {vq.num_embeddings} codes")
        needed = self.caption_max_length + self.image_grid_size**2
        if text.max_position_embeddings < needed:
            problems.append(f"text_config.max_position_embeddings={text.max_position_embeddings} < {needed}")
        if t5.d_model != self.caption_dim:
            problems.append(f"caption_encoder_config.d_model={t5.d_model} but caption_dim={self.caption_dim}")
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        if head_dim % 4:
            problems.append(f"the head dim {head_dim} must be a multiple of 4 (2D RoPE: row and column halves)")
        if problems:
            raise ValueError("Inconsistent LlamaGenConfig: " + "; ".join(problems) + ".")

    @property
    def num_image_tokens(self) -> int:
        """N, codes per image (`image_grid_size**2`)."""
        return self.image_grid_size**2

    @property
    def image_size(self) -> int:
        """Pixels per image side: the grid times the VQ's downsampling factor."""
        return self.image_grid_size * 2 ** (len(self.vq_config.channel_multiplier) - 1)


def default_generation_config(**overrides) -> GenerationConfig:
    """LlamaGen's sampling defaults (`sample_t2i.py`): CFG 7.5 on raw logits, top-k 1000, top-p 1, temperature 1.

    `cfg_interval=-1` guides every code; `cfg_interval=i >= 0` guides codes 0 ... i + 1 and samples later codes from
    the conditional logits alone (upstream `generate`).
    """
    values = dict(do_sample=True, guidance_scale=7.5, top_k=1000, top_p=1.0, temperature=1.0, cfg_interval=-1)
    values.update(overrides)
    config = GenerationConfig(**values)
    config._from_model_config = False  # keep these values on reload instead of re-deriving them from the model config
    return config


__all__ = ["LlamaGenConfig", "LlamaConfig", "T5Config", "default_generation_config", "CAPTION_MAX_LENGTH"]
