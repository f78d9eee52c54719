"""Original-format tiny LlamaGen checkpoints on disk, converted once per test session (LLAMAGEN.md §6 fixtures)."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .llamagen_ref import random_gpt_state_dict, random_vq_state_dict

NUM_HEADS, GRID, IMAGE_SIZE = 4, 4, 64


@dataclass
class OriginalCheckpoints:
    """Paths of a tiny original-format GPT and VQ, a tiny T5 directory, the converted HF directory, and the tensors."""

    root: Path
    gpt_path: Path
    vq_path: Path
    t5_dir: Path
    hf_dir: Path
    gpt: dict
    vq: dict


def save_tiny_t5(path: Path, seed: int = 0) -> Path:
    """A tiny random `T5EncoderModel` (width 32) and the tiny T5 tokenizer, saved like a Hub T5 checkpoint."""
    from transformers import T5Config, T5EncoderModel

    from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_t5_tokenizer

    tokenizer = build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu")  # fmt: skip
    T5EncoderModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@functools.lru_cache(maxsize=None)
def original_checkpoints() -> OriginalCheckpoints:
    """Written and converted once per process (a temporary directory that lives as long as the process)."""
    from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import convert_llamagen_checkpoint

    root = Path(tempfile.mkdtemp(prefix="llamagen_original_"))
    gpt, vq = random_gpt_state_dict(seed=1), random_vq_state_dict(seed=2)
    torch.save({"model": gpt}, root / "gpt.pt")
    torch.save({"model": vq}, root / "vq.pt")
    t5_dir = save_tiny_t5(root / "t5")
    convert_llamagen_checkpoint(
        root / "gpt.pt", root / "vq.pt", str(t5_dir), IMAGE_SIZE, root / "hf", num_heads=NUM_HEADS
    )
    return OriginalCheckpoints(root, root / "gpt.pt", root / "vq.pt", t5_dir, root / "hf", gpt, vq)
