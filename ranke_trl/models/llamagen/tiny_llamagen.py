"""A tiny, randomly initialised LlamaGen built from configs, for tests and CPU smoke runs; nothing touches the network.

The test scale of shared/LLAMAGEN.md §6: a 2-layer GPT of width 64 with 4 heads, a 120-token caption prefix of width
32 (a 2-layer T5), a 4x4 grid of codes from a codebook of 256, and a VQ-16-shaped tokenizer (4 downsamplings) at
64 px. The T5 tokenizer is a character-level Unigram (plus a few whole words) with T5's special tokens.
"""

from __future__ import annotations

import os
import string

import torch

from .configuration_llamagen import LlamaGenConfig
from .modeling_llamagen import LlamaGenForImageGeneration
from .processing_llamagen import LlamaGenProcessor

_WORDS = ["a", "an", "the", "of", "and", "red", "green", "blue", "yellow", "square", "circle", "triangle", "two"]


def build_tiny_t5_tokenizer():
    """A `T5Tokenizer` (pad 0, `</s>` 1, unk 2) over lower-case characters, digits, punctuation and a few words."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + ",.!?'\"-:;"]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    pieces += [("\u2581" + w, -1.0) for w in _WORDS if len(w) > 1]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_llamagen_config(
    grid_size: int = 4,
    codebook_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    caption_dim: int = 32,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    vq_overrides: dict | None = None,
    **overrides,
) -> LlamaGenConfig:
    """A `LlamaGenConfig` at test scale: `grid_size**2` codes per image, `16 * grid_size` px; `num_layers` layers of
    `num_heads` heads and an MLP of `intermediate_size` (default `2 * hidden_size`); `vq_overrides` go to the VQ."""
    values = dict(
        text_config=dict(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or 2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            vocab_size=codebook_size,
            max_position_embeddings=120 + grid_size**2,
        ),
        vq_config={
            **dict(
                embed_dim=8,
                num_embeddings=codebook_size,
                latent_channels=32,
                base_channels=32,
                channel_multiplier=[1, 1, 1, 2, 2],
                num_res_blocks=1,
                num_patches=grid_size,
            ),
            **(vq_overrides or {}),
        },
        caption_encoder_config=dict(
            vocab_size=len(build_tiny_t5_tokenizer()),
            d_model=caption_dim,
            d_kv=8,
            d_ff=2 * caption_dim,
            num_layers=2,
            num_heads=4,
        ),
        caption_dim=caption_dim,
        image_grid_size=grid_size,
        text_encoder_name_or_path="tiny-random-t5",
    )
    values.update(overrides)
    return LlamaGenConfig(**values)


def build_tiny_llamagen(seed: int = 0, **config_kwargs) -> LlamaGenForImageGeneration:
    """A randomly initialised tiny `LlamaGenForImageGeneration` in eval mode, fp32."""
    torch.manual_seed(seed)
    return LlamaGenForImageGeneration(tiny_llamagen_config(**config_kwargs)).eval()


def build_tiny_llamagen_processor() -> LlamaGenProcessor:
    return LlamaGenProcessor(tokenizer=build_tiny_t5_tokenizer())


def save_tiny_llamagen(path: str | os.PathLike, seed: int = 0, **config_kwargs) -> str:
    """Save a tiny LlamaGen and its processor to `path`, loadable with `from_pretrained(path)` / the Auto classes."""
    build_tiny_llamagen(seed=seed, **config_kwargs).save_pretrained(path)
    build_tiny_llamagen_processor().save_pretrained(path)
    return str(path)
