"""Tiny, randomly initialised models built from configs, for tests, recipes and CPU smoke runs.

Nothing here touches the network. The tiny policies live beside their adapters (`ranke_trl.policy.janus_tiny`) and
are re-exported here; the tiny CLIP is an open_clip model built from a config. Sizes follow the project's test scale:
64 px images, 8x8 codes, a codebook of 256 and two-layer transformers.
"""

from __future__ import annotations

import torch

from .policy.janus_tiny import (
    JANUS_CHAT_TEMPLATE,
    build_tiny_janus,
    build_tiny_janus_processor,
    build_tiny_janus_tokenizer,
    save_tiny_janus,
    tiny_janus_config,
)

__all__ = [
    "JANUS_CHAT_TEMPLATE",
    "build_tiny_clip",
    "build_tiny_janus",
    "build_tiny_janus_processor",
    "build_tiny_janus_tokenizer",
    "save_tiny_janus",
    "tiny_clip_config",
    "tiny_janus_config",
]


def tiny_clip_config(embed_dim: int = 32, image_size: int = 64, context_length: int = 77) -> dict:
    """An open_clip model config at test scale (a two-layer ViT and a two-layer text transformer)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    }


def build_tiny_clip(seed: int = 0, **config_kwargs):
    """A randomly initialised `open_clip.CLIP` in eval mode."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**tiny_clip_config(**config_kwargs))
    return model.eval()
