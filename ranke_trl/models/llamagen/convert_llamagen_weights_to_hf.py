"""Convert LlamaGen's original T2I checkpoints to a `LlamaGenForImageGeneration` directory.

Inputs (Hub: `peizesun/llamagen_t2i`, MIT): `t2i_XL_stage1_256.pt` (256 px) or `t2i_XL_stage2_512.pt` (512 px), the
VQ tokenizer `vq_ds16_t2i.pt`, and a T5 encoder (`google/flan-t5-xl`, Apache-2.0). Steps (shared/LLAMAGEN.md §5):

1. `torch.load(weights_only=True)`; take the `model` / `module` / `state_dict` entry; strip `module.` / `_orig_mod.`.
2. Check the exact key sets and shapes against the original layouts (258 GPT keys for XL, 344 VQ keys).
3. Map the keys: split `wqkv`, permute q / k rows from interleaved to half-split rotary pairs, rename the VQ blocks
   to `JanusVQVAE`'s, drop the `codebook_used` statistics.
4. Load strictly into a fresh model with the T5 encoder, save with `save_pretrained` (safetensors), the generation
   defaults and the processor; reload and run one forward.

    python examples/convert_llamagen_to_hf.py --gpt_ckpt t2i_XL_stage1_256.pt --vq_ckpt vq_ds16_t2i.pt \
        --image_size 256 --output_dir llamagen-t2i-xl-256
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile

import torch

from .configuration_llamagen import CAPTION_MAX_LENGTH, LlamaGenConfig
from .modeling_llamagen import LlamaGenForImageGeneration
from .processing_llamagen import LlamaGenProcessor

#: heads of the released GPT sizes, by width (gpt.py: B, L, XL, XXL, 3B); the width alone does not determine them
KNOWN_NUM_HEADS = {768: 12, 1024: 16, 1280: 20, 1536: 24, 3200: 32}
_STATE_DICT_ENTRIES = ("model", "module", "state_dict")
_PREFIXES = ("module.", "_orig_mod.")
_VQ_STATISTICS = "quantize.codebook_used"  # a training-time usage counter, not a weight


class LlamaGenConversionError(ValueError):
    """A checkpoint that is not what the converter was told it is (wrong file, truncated, mismatched sizes)."""


# --------------------------------------------------------------------------------------------------- loading
def load_original_state_dict(path: str | os.PathLike, role: str) -> dict[str, torch.Tensor]:
    """The tensors of an original checkpoint (`role`: "GPT" or "VQ", for error messages), prefixes stripped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The {role} checkpoint {path!r} does not exist.")
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as err:
        raise LlamaGenConversionError(
            f"The {role} checkpoint {path} holds objects other than tensors (for example a training `args` "
            f"Namespace), which `weights_only=True` refuses to unpickle. Re-save only its weights, e.g. "
            f"`torch.save(torch.load(p, weights_only=False)['model'], out)` on a file you trust. ({err})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        size = os.path.getsize(path)
        raise LlamaGenConversionError(
            f"The {role} checkpoint {path} ({size:,} bytes) cannot be read: it is truncated or corrupt (an "
            f"interrupted download?) or not a PyTorch checkpoint. Download it again. ({type(err).__name__}: {err})"
        ) from err
    if isinstance(checkpoint, dict):
        for entry in _STATE_DICT_ENTRIES:
            if isinstance(checkpoint.get(entry), dict):
                checkpoint = checkpoint[entry]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise LlamaGenConversionError(
            f"The {role} checkpoint {path} is not a state dict (nor a dict with a 'model', 'module' or 'state_dict' "
            "entry holding one)."
        )
    return {_strip_prefixes(k): v for k, v in checkpoint.items()}


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


# --------------------------------------------------------------------------------------------------- GPT
def original_gpt_shapes(
    dim: int, num_layers: int, vocab_size: int, caption_dim: int, ffn_dim: int, kv_dim: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Every key of an original T2I GPT state dict and its shape (LLAMAGEN.md §1)."""
    kv_dim = dim if kv_dim is None else kv_dim
    shapes = {
        "cls_embedding.uncond_embedding": (CAPTION_MAX_LENGTH, caption_dim),
        "cls_embedding.cap_proj.fc1.weight": (dim, caption_dim),
        "cls_embedding.cap_proj.fc2.weight": (dim, dim),
        "tok_embeddings.weight": (vocab_size, dim),
        "norm.weight": (dim,),
        "output.weight": (vocab_size, dim),
    }
    for i in range(num_layers):
        shapes.update(
            {
                f"layers.{i}.attention.wqkv.weight": (dim + 2 * kv_dim, dim),
                f"layers.{i}.attention.wo.weight": (dim, dim),
                f"layers.{i}.feed_forward.w1.weight": (ffn_dim, dim),
                f"layers.{i}.feed_forward.w3.weight": (ffn_dim, dim),
                f"layers.{i}.feed_forward.w2.weight": (dim, ffn_dim),
                f"layers.{i}.attention_norm.weight": (dim,),
                f"layers.{i}.ffn_norm.weight": (dim,),
            }
        )
    return shapes


def gpt_dims(state_dict: dict[str, torch.Tensor], num_heads: int | None = None) -> dict[str, int]:
    """Sizes of an original GPT, read from its tensors; `num_heads` from `KNOWN_NUM_HEADS` unless given."""
    if "tok_embeddings.weight" not in state_dict or "cls_embedding.cap_proj.fc1.weight" not in state_dict:
        looks_like_vq = any(k.startswith(("encoder.", "decoder.", "quantize.")) for k in state_dict)
        hint = " It looks like a VQ tokenizer checkpoint: pass it as --vq_ckpt." if looks_like_vq else ""
        raise LlamaGenConversionError(
            "Not a LlamaGen T2I GPT checkpoint: no `tok_embeddings.weight` / `cls_embedding.cap_proj.fc1.weight`."
            f"{hint} (A class-conditional c2i GPT has no caption projector.)"
        )
    vocab_size, dim = state_dict["tok_embeddings.weight"].shape
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k))}
    num_heads = num_heads or KNOWN_NUM_HEADS.get(dim)
    if num_heads is None:
        raise LlamaGenConversionError(f"Unknown GPT width {dim}: pass --num_heads (known: {KNOWN_NUM_HEADS}).")
    head_dim = dim // num_heads
    kv_dim = (state_dict["layers.0.attention.wqkv.weight"].shape[0] - dim) // 2 if layers else dim
    return dict(
        dim=dim,
        num_layers=max(layers) + 1 if layers else 0,
        num_heads=num_heads,
        num_kv_heads=kv_dim // head_dim,
        vocab_size=vocab_size,
        caption_dim=state_dict["cls_embedding.cap_proj.fc1.weight"].shape[1],
        ffn_dim=state_dict["layers.0.feed_forward.w1.weight"].shape[0] if layers else 0,
    )


def interleaved_to_half_split(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder q / k projection rows within each head from rotary pairs (2p, 2p+1) to (p, p + head_dim / 2)."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    rows = weight.view(num_heads, head_dim // 2, 2, in_features)
    return rows.transpose(1, 2).reshape(out_features, in_features)


def convert_gpt_state_dict(state_dict: dict[str, torch.Tensor], dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """Original GPT keys -> `LlamaGenForImageGeneration` keys (without the T5 encoder and the VQ)."""
    renames = {
        "cls_embedding.uncond_embedding": "model.caption_projector.uncond_embedding",
        "cls_embedding.cap_proj.fc1.weight": "model.caption_projector.fc1.weight",
        "cls_embedding.cap_proj.fc2.weight": "model.caption_projector.fc2.weight",
        "tok_embeddings.weight": "model.language_model.embed_tokens.weight",
        "norm.weight": "model.language_model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    layer_renames = {
        "attention.wo.weight": "self_attn.o_proj.weight",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
        "attention_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
    }
    dim, head_dim = dims["dim"], dims["dim"] // dims["num_heads"]
    kv_dim = dims["num_kv_heads"] * head_dim
    converted = {}
    for key, tensor in state_dict.items():
        if key in renames:
            converted[renames[key]] = tensor
            continue
        i, name = re.match(r"layers\.(\d+)\.(.+)", key).groups()
        prefix = f"model.language_model.layers.{i}."
        if name == "attention.wqkv.weight":
            q, k, v = tensor.split([dim, kv_dim, kv_dim], dim=0)
            converted[prefix + "self_attn.q_proj.weight"] = interleaved_to_half_split(q, dims["num_heads"])
            converted[prefix + "self_attn.k_proj.weight"] = interleaved_to_half_split(k, dims["num_kv_heads"])
            converted[prefix + "self_attn.v_proj.weight"] = v
        else:
            converted[prefix + layer_renames[name]] = tensor
    return converted


# --------------------------------------------------------------------------------------------------- VQ
_VQ_RENAMES = [
    (r"^(encoder)\.conv_blocks\.(\d+)\.res\.", r"\1.down.\2.block."),
    (r"^(encoder)\.conv_blocks\.(\d+)\.(attn|downsample)\.", r"\1.down.\2.\3."),
    (r"^(decoder)\.conv_blocks\.(\d+)\.res\.", r"\1.up.\2.block."),
    (r"^(decoder)\.conv_blocks\.(\d+)\.(attn|upsample)\.", r"\1.up.\2.\3."),
    (r"^(encoder|decoder)\.mid\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid\.1\.", r"\1.mid.attn_1."),
    (r"^(encoder|decoder)\.mid\.2\.", r"\1.mid.block_2."),
]


def convert_vq_key(key: str) -> str:
    """One original VQ key -> its `JanusVQVAE` key (LLAMAGEN.md §3); `conv_in`, `quantize.embedding`, ... unchanged."""
    for pattern, replacement in _VQ_RENAMES:
        key, count = re.subn(pattern, replacement, key)
        if count:
            break
    return key


def vq_config_from_state_dict(state_dict: dict[str, torch.Tensor], grid_size: int) -> dict:
    """`JanusVQVAEConfig` values read from an original VQ state dict, for a `grid_size` x `grid_size` code grid."""
    if "quantize.embedding.weight" not in state_dict or "encoder.conv_in.weight" not in state_dict:
        looks_like_gpt = "tok_embeddings.weight" in state_dict
        hint = " It looks like a GPT checkpoint: pass it as --gpt_ckpt." if looks_like_gpt else ""
        raise LlamaGenConversionError(f"Not a LlamaGen VQ tokenizer checkpoint: no codebook / encoder.{hint}")
    levels = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k))}
    base = state_dict["encoder.conv_in.weight"].shape[0]
    multipliers = [state_dict[f"encoder.conv_blocks.{lvl}.res.0.conv1.weight"].shape[0] // base for lvl in levels]
    num_embeddings, embed_dim = state_dict["quantize.embedding.weight"].shape
    return dict(
        embed_dim=embed_dim,
        num_embeddings=num_embeddings,
        latent_channels=state_dict["quant_conv.weight"].shape[1],
        base_channels=base,
        channel_multiplier=multipliers,
        num_res_blocks=len(blocks),
        num_patches=grid_size,
    )


def _check_same_layout(found: dict[str, torch.Tensor], expected: dict[str, tuple], role: str, path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: {tuple(found[k].shape)} (expected {tuple(expected[k])})" for k in expected
             if k in found and tuple(found[k].shape) != tuple(expected[k])]  # fmt: skip
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched sizes", wrong)):
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}")
        layout = "; ".join(parts)
        raise LlamaGenConversionError(f"The {role} checkpoint {path} does not have LlamaGen's layout: {layout}")


# --------------------------------------------------------------------------------------------------- whole model
def convert_llamagen_checkpoint(
    gpt_ckpt: str | os.PathLike,
    vq_ckpt: str | os.PathLike,
    t5_id: str = "google/flan-t5-xl",
    image_size: int = 256,
    output_dir: str | os.PathLike | None = None,
    dtype: str = "float32",
    num_heads: int | None = None,
    push_to_hub: str | None = None,
) -> LlamaGenForImageGeneration:
    """Build (and, with `output_dir`, save) an HF LlamaGen from the original GPT and VQ files plus a T5 encoder.

    `image_size` 256 or 512 sets the code grid (16 or 32); the GPT weights are the same shape for both stages.
    """
    from transformers import T5EncoderModel

    gpt = load_original_state_dict(gpt_ckpt, "GPT")
    vq = load_original_state_dict(vq_ckpt, "VQ")
    dims = gpt_dims(gpt, num_heads)
    head_dim = dims["dim"] // dims["num_heads"]
    expected = original_gpt_shapes(dims["dim"], dims["num_layers"], dims["vocab_size"], dims["caption_dim"],
                                   dims["ffn_dim"], dims["num_kv_heads"] * head_dim)  # fmt: skip
    _check_same_layout(gpt, expected, "GPT", gpt_ckpt)

    vq_config = vq_config_from_state_dict(vq, grid_size=0)
    downsampling = 2 ** (len(vq_config["channel_multiplier"]) - 1)
    if image_size % downsampling:
        raise LlamaGenConversionError(
            f"image_size={image_size} is not a multiple of the VQ's {downsampling}x downsampling."
        )
    grid = vq_config["num_patches"] = image_size // downsampling
    if vq_config["num_embeddings"] != dims["vocab_size"]:
        raise LlamaGenConversionError(
            f"Mismatched sizes: the GPT predicts {dims['vocab_size']} codes but the VQ codebook has "
            f"{vq_config['num_embeddings']}; they are not a pair."
        )

    encoder = T5EncoderModel.from_pretrained(t5_id, dtype=torch.float32)
    if encoder.config.d_model != dims["caption_dim"]:
        raise LlamaGenConversionError(
            f"Mismatched sizes: {t5_id} produces {encoder.config.d_model}-d features but the GPT's caption projector "
            f"takes {dims['caption_dim']}-d ones (LlamaGen T2I uses google/flan-t5-xl, 2048-d)."
        )
    config = LlamaGenConfig(
        text_config=dict(
            hidden_size=dims["dim"],
            intermediate_size=dims["ffn_dim"],
            num_hidden_layers=dims["num_layers"],
            num_attention_heads=dims["num_heads"],
            num_key_value_heads=dims["num_kv_heads"],
            vocab_size=dims["vocab_size"],
            max_position_embeddings=CAPTION_MAX_LENGTH + grid * grid,
        ),
        vq_config=vq_config,
        caption_encoder_config=encoder.config.to_dict(),
        caption_dim=dims["caption_dim"],
        image_grid_size=grid,
        text_encoder_name_or_path=t5_id,
    )
    with torch.device("meta"):  # no random initialisation of ~2B parameters that are overwritten next
        model = LlamaGenForImageGeneration(config)
    hf_vq = model.model.vqmodel.state_dict()
    vq_converted = {convert_vq_key(k): v for k, v in vq.items() if k != _VQ_STATISTICS}
    _check_same_layout(vq_converted, {k: v.shape for k, v in hf_vq.items()}, "VQ", vq_ckpt)

    state_dict = convert_gpt_state_dict(gpt, dims)
    state_dict.update({f"model.vqmodel.{k}": v for k, v in vq_converted.items()})
    # Strict for every GPT and VQ weight; the T5 encoder is taken whole (its tied embeddings stay tied).
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.startswith("model.text_encoder.")]
    if missing or result.unexpected_keys:
        raise LlamaGenConversionError(f"Conversion bug: missing {missing}, unexpected {result.unexpected_keys}.")
    model.model.text_encoder = encoder.requires_grad_(False)
    model = model.to(getattr(torch, dtype)).eval()
    if output_dir is not None:
        _save(model, t5_id, output_dir, push_to_hub)
    return model


def _save(model: LlamaGenForImageGeneration, t5_id: str, output_dir, push_to_hub: str | None) -> None:
    from transformers import AutoTokenizer

    processor = LlamaGenProcessor(tokenizer=AutoTokenizer.from_pretrained(t5_id))
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    reloaded = LlamaGenForImageGeneration.from_pretrained(output_dir, dtype=torch.float32)
    with torch.no_grad():  # smoke test: the saved directory loads and scores a caption
        batch = processor(["a photo of a cat"], padding="longest")
        logits = reloaded(**batch, logits_to_keep=1).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"The converted model in {output_dir} gives non-finite logits.")
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(model_card(model.config))
    if push_to_hub:
        model.push_to_hub(push_to_hub)
        processor.push_to_hub(push_to_hub)
        from huggingface_hub import upload_file

        card = os.path.join(output_dir, "README.md")
        upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id=push_to_hub)


def model_card(config: LlamaGenConfig) -> str:
    """A model card naming the original weights, their licences and training data."""
    size = config.image_size
    stage1 = config.image_grid_size == 16
    stage = "stage 1 (LAION-COCO 50M)" if stage1 else "stage 2 (10M internal high-aesthetic images)"
    return f"""---
license: mit
library_name: transformers
tags: [text-to-image, llamagen, autoregressive, ranke-trl]
---
# LlamaGen T2I ({size} px), transformers format

A conversion of FoundationVision's LlamaGen text-to-image GPT and its VQ-16 tokenizer
(`peizesun/llamagen_t2i`: `t2i_XL_stage{1 if config.image_grid_size == 16 else 2}_{size}.pt`, `vq_ds16_t2i.pt`)
to `LlamaGenForImageGeneration` (ranke_trl.models.llamagen), with the frozen `{config.text_encoder_name_or_path}`
caption encoder inside. The weights are unchanged; only their layout is.

- Paper: Sun et al., *Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation* (2024).
- Code and weights: https://github.com/FoundationVision/LlamaGen, MIT licence (portions under the licences of the
  projects it builds on).
- Caption encoder: {config.text_encoder_name_or_path}, Apache-2.0.
- Training data: GPT {stage}; VQ tokenizer LAION-COCO 50M + 10M internal images. LAION-derived data is web-scraped
  and unfiltered for copyright or harmful content; use accordingly.

Sampling defaults (upstream `sample_t2i.py`): CFG 7.5, top-k 1000, top-p 1.0, temperature 1.0.

```python
import ranke_trl.models.llamagen  # registers model_type "llamagen"
from transformers import AutoModel, AutoProcessor

model, processor = AutoModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
codes = model.generate(**processor(["a photo of a cat"]))
pixels = model.decode_image_tokens(codes)  # (B, 3, {size}, {size}) in [-1, 1]
```
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpt_ckpt", required=True, help="t2i_XL_stage1_256.pt or t2i_XL_stage2_512.pt")
    parser.add_argument("--vq_ckpt", required=True, help="vq_ds16_t2i.pt")
    parser.add_argument("--t5_id", default="google/flan-t5-xl", help="Hub id or directory of the T5 encoder")
    parser.add_argument("--image_size", type=int, choices=(256, 512), default=256)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--num_heads", type=int, default=None, help="GPT heads, for widths not in KNOWN_NUM_HEADS")
    parser.add_argument("--push_to_hub", default=None, help="a Hub repo id to upload the converted model to")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    convert_llamagen_checkpoint(
        args.gpt_ckpt, args.vq_ckpt, args.t5_id, args.image_size, args.output_dir, args.dtype, args.num_heads,
        args.push_to_hub,
    )
    print(f"Saved LlamaGen ({args.image_size} px) to {args.output_dir}")


if __name__ == "__main__":
    main()
