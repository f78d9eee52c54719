"""A clean-room reference of LlamaGen T2I, written from shared/LLAMAGEN.md (not from upstream code), over the
ORIGINAL checkpoint key names. It is deliberately plain: no cache, full 120-slot caption prefix, fp32, loops.

Contents:
- `random_gpt_state_dict` / `random_vq_state_dict`: original-format checkpoints at test scale, from the §1 / §3
  layouts (norms and GroupNorm affines randomised, the head non-zero);
- `gpt_logits`: the GPT forward (wqkv split, interleaved 2D RoPE with 120 zero rows, causal x key-padding mask with
  the diagonal forced on, fp32 RMSNorm, SwiGLU, GELU-tanh caption projection);
- `guided_greedy_codes`: CFG greedy decoding by full re-computation;
- `vq_encode` / `vq_decode`: VQ-16's encoder, L2-normalised argmax-cosine search, and decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREFIX = 120


# --------------------------------------------------------------------------------------------------- fixtures
def gpt_layout(dim, layers, vocab, caption_dim, ffn) -> dict[str, tuple[int, ...]]:
    """§1's state-dict table at any size (MHA)."""
    shapes = {
        "cls_embedding.uncond_embedding": (PREFIX, caption_dim),
        "cls_embedding.cap_proj.fc1.weight": (dim, caption_dim),
        "cls_embedding.cap_proj.fc2.weight": (dim, dim),
        "tok_embeddings.weight": (vocab, dim),
        "norm.weight": (dim,),
        "output.weight": (vocab, dim),
    }
    for i in range(layers):
        shapes[f"layers.{i}.attention.wqkv.weight"] = (3 * dim, dim)
        shapes[f"layers.{i}.attention.wo.weight"] = (dim, dim)
        shapes[f"layers.{i}.feed_forward.w1.weight"] = (ffn, dim)
        shapes[f"layers.{i}.feed_forward.w3.weight"] = (ffn, dim)
        shapes[f"layers.{i}.feed_forward.w2.weight"] = (dim, ffn)
        shapes[f"layers.{i}.attention_norm.weight"] = (dim,)
        shapes[f"layers.{i}.ffn_norm.weight"] = (dim,)
    return shapes


def random_gpt_state_dict(dim=64, layers=2, vocab=256, caption_dim=32, ffn=128, seed=0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in gpt_layout(dim, layers, vocab, caption_dim, ffn).items():
        if key.endswith("norm.weight"):
            state[key] = 1.0 + 0.2 * torch.randn(shape, generator=generator)  # not all ones: catches a missed norm
        elif key == "cls_embedding.uncond_embedding":
            state[key] = torch.randn(shape, generator=generator) / caption_dim**0.5
        else:
            state[key] = torch.randn(shape, generator=generator) / shape[-1] ** 0.5
    return state


def vq_layout(base=32, mult=(1, 1, 1, 2, 2), res_blocks=1, z=32, embed=8, codes=256) -> dict[str, tuple[int, ...]]:
    """§3's VQ layout: encoder levels with `res_blocks` res blocks, decoder levels with one more, attention at the
    lowest resolution only, `nin_shortcut` where the width changes, res-attn-res mid blocks."""
    shapes = {}

    def conv(name, cin, cout, k):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (cout, cin, k, k), (cout,)

    def norm(name, c):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

    def res(name, cin, cout):
        norm(f"{name}.norm1", cin), conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout), conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    levels = len(mult)
    conv("encoder.conv_in", 3, base, 3)
    width = base
    for level in range(levels):
        for b in range(res_blocks):
            res(f"encoder.conv_blocks.{level}.res.{b}", width, base * mult[level])
            width = base * mult[level]
            if level == levels - 1:
                attn(f"encoder.conv_blocks.{level}.attn.{b}", width)
        if level != levels - 1:
            conv(f"encoder.conv_blocks.{level}.downsample.conv", width, width, 3)
    res("encoder.mid.0", width, width), attn("encoder.mid.1", width), res("encoder.mid.2", width, width)
    norm("encoder.norm_out", width), conv("encoder.conv_out", width, z, 3)

    width = base * mult[-1]
    conv("decoder.conv_in", z, width, 3)
    res("decoder.mid.0", width, width), attn("decoder.mid.1", width), res("decoder.mid.2", width, width)
    for level in range(levels):
        for b in range(res_blocks + 1):
            res(f"decoder.conv_blocks.{level}.res.{b}", width, base * mult[levels - 1 - level])
            width = base * mult[levels - 1 - level]
            if level == 0:
                attn(f"decoder.conv_blocks.{level}.attn.{b}", width)
        if level != levels - 1:
            conv(f"decoder.conv_blocks.{level}.upsample.conv", width, width, 3)
    norm("decoder.norm_out", width), conv("decoder.conv_out", width, 3, 3)

    conv("quant_conv", z, embed, 1), conv("post_quant_conv", embed, z, 1)
    shapes["quantize.embedding.weight"] = (codes, embed)
    shapes["quantize.codebook_used"] = (65536,)
    return shapes


def random_vq_state_dict(seed=0, **layout) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in vq_layout(**layout).items():
        if key == "quantize.codebook_used":
            state[key] = torch.zeros(shape)
        elif len(shape) == 1 and "norm" in key and key.endswith("weight"):
            state[key] = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=generator)
        elif key == "quantize.embedding.weight":
            state[key] = torch.randn(shape, generator=generator)  # deliberately not unit-norm
        else:
            state[key] = torch.randn(shape, generator=generator) / (shape[1] * shape[2] * shape[3]) ** 0.5
    return state


# --------------------------------------------------------------------------------------------------- GPT
def rope_2d(grid: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (PREFIX + grid*grid, head_dim/2) per interleaved pair; the first PREFIX rows are zero."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # head_dim/4 frequencies
    k = torch.arange(grid * grid)
    angles = torch.cat([torch.outer((k // grid).float(), freqs), torch.outer((k % grid).float(), freqs)], dim=-1)
    zeros = torch.zeros(PREFIX, half)
    return torch.cat([zeros, angles.cos()]), torch.cat([zeros, angles.sin()])


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, D): pair (2p, 2p+1) rotated by angle p, in fp32; cos/sin (S, D/2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None], sin[None, :, None]
    return torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2).type_as(x)


def rms_norm(x, weight, eps=1e-5):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def gpt_logits(sd, caption, caption_mask, codes_in, uncond, num_heads, grid) -> torch.Tensor:
    """Logits (B, PREFIX + M, V) of `[caption | codes_in]`.

    caption (B, PREFIX, C) left-padded T5 features; caption_mask (B, PREFIX); codes_in (B, M); uncond (B,) bool rows
    that take `uncond_embedding` (the mask is kept).
    """
    batch = caption.size(0)
    caption = caption * caption_mask[..., None]
    caption = torch.where(uncond[:, None, None], sd["cls_embedding.uncond_embedding"].expand_as(caption), caption)
    h = F.gelu(caption @ sd["cls_embedding.cap_proj.fc1.weight"].t(), approximate="tanh")
    x = torch.cat([h @ sd["cls_embedding.cap_proj.fc2.weight"].t(), sd["tok_embeddings.weight"][codes_in]], dim=1)
    seq, dim = x.shape[1], x.shape[2]
    head_dim = dim // num_heads
    cos, sin = (t[:seq] for t in rope_2d(grid, head_dim))
    keys = torch.cat([caption_mask.bool(), torch.ones(batch, seq - PREFIX, dtype=torch.bool)], dim=1)
    allowed = torch.tril(torch.ones(seq, seq, dtype=torch.bool))[None] & keys[:, None, :]
    allowed = allowed | torch.eye(seq, dtype=torch.bool)[None]  # pad queries see themselves
    layers = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    for i in range(layers):
        p = f"layers.{i}."
        h = rms_norm(x, sd[p + "attention_norm.weight"])
        q, k, v = (h @ sd[p + "attention.wqkv.weight"].t()).split(dim, dim=-1)
        q, k, v = (t.view(batch, seq, num_heads, head_dim) for t in (q, k, v))
        q, k = rotate_interleaved(q, cos, sin), rotate_interleaved(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed[:, None]
        )
        x = x + out.transpose(1, 2).reshape(batch, seq, dim) @ sd[p + "attention.wo.weight"].t()
        h = rms_norm(x, sd[p + "ffn_norm.weight"])
        gated = F.silu(h @ sd[p + "feed_forward.w1.weight"].t()) * (h @ sd[p + "feed_forward.w3.weight"].t())
        x = x + gated @ sd[p + "feed_forward.w2.weight"].t()
    return rms_norm(x, sd["norm.weight"]) @ sd["output.weight"].t()


def left_pad_to_prefix(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, L, C) / (B, L) -> the full (B, PREFIX, C) / (B, PREFIX) layout."""
    pad = PREFIX - features.size(1)
    return F.pad(features, (0, 0, pad, 0)), F.pad(mask, (pad, 0))


def guided_greedy_codes(sd, caption, caption_mask, num_heads, grid, guidance_scale) -> torch.Tensor:
    """CFG greedy decoding, recomputing the whole sequence at every step: codes (B, grid*grid)."""
    batch = caption.size(0)
    both = torch.cat([caption, caption]), torch.cat([caption_mask, caption_mask])
    uncond = torch.arange(2 * batch) >= batch
    codes = torch.empty(batch, 0, dtype=torch.long)
    for _ in range(grid * grid):
        logits = gpt_logits(sd, *both, torch.cat([codes, codes]), uncond, num_heads, grid)[:, -1]
        cond, null = logits.chunk(2)
        codes = torch.cat([codes, (null + guidance_scale * (cond - null)).argmax(-1, keepdim=True)], dim=1)
    return codes


# --------------------------------------------------------------------------------------------------- VQ
def _conv(sd, name, x, stride=1, padding=None):
    w = sd[f"{name}.weight"]
    return F.conv2d(x, w, sd[f"{name}.bias"], stride=stride, padding=w.shape[-1] // 2 if padding is None else padding)


def _norm(sd, name, x):
    return F.group_norm(x, 32, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _res(sd, name, x):
    h = _conv(sd, f"{name}.conv1", F.silu(_norm(sd, f"{name}.norm1", x)))
    h = _conv(sd, f"{name}.conv2", F.silu(_norm(sd, f"{name}.norm2", h)))
    return (_conv(sd, f"{name}.nin_shortcut", x) if f"{name}.nin_shortcut.weight" in sd else x) + h


def _attn(sd, name, x):
    b, c, hgt, wid = x.shape
    h = _norm(sd, f"{name}.norm", x)
    q, k, v = (_conv(sd, f"{name}.{p}", h).flatten(2) for p in ("q", "k", "v"))  # (B, C, HW)
    weights = torch.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=-1)  # (B, HW, HW)
    out = (v @ weights.transpose(1, 2)).view(b, c, hgt, wid)
    return x + _conv(sd, f"{name}.proj_out", out)


def _blocks(sd, prefix):
    return sorted({int(k[len(prefix) :].split(".")[0]) for k in sd if k.startswith(prefix)})


def vq_encode(sd, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels (B, 3, H, W) in [-1, 1] -> codes (B, h*w): argmax cosine between latents and the codebook."""
    x = _conv(sd, "encoder.conv_in", pixels)
    levels = _blocks(sd, "encoder.conv_blocks.")
    for level in levels:
        p = f"encoder.conv_blocks.{level}."
        for b in _blocks(sd, p + "res."):
            x = _res(sd, f"{p}res.{b}", x)
            if f"{p}attn.{b}.q.weight" in sd:
                x = _attn(sd, f"{p}attn.{b}", x)
        if f"{p}downsample.conv.weight" in sd:  # asymmetric zero padding, stride 2
            x = _conv(sd, f"{p}downsample.conv", F.pad(x, (0, 1, 0, 1)), stride=2, padding=0)
    x = _res(sd, "encoder.mid.2", _attn(sd, "encoder.mid.1", _res(sd, "encoder.mid.0", x)))
    x = _conv(sd, "encoder.conv_out", F.silu(_norm(sd, "encoder.norm_out", x)))
    latents = F.normalize(_conv(sd, "quant_conv", x).flatten(2).transpose(1, 2), dim=-1)  # (B, hw, D)
    codebook = F.normalize(sd["quantize.embedding.weight"], dim=-1)
    return (latents @ codebook.t()).argmax(-1)


def vq_decode(sd, codes: torch.Tensor) -> torch.Tensor:
    """Codes (B, g*g) -> pixels (B, 3, H, W): normalised code vectors, post-quant conv, decoder."""
    batch, count = codes.shape
    grid = int(count**0.5)
    vectors = F.normalize(sd["quantize.embedding.weight"], dim=-1)[codes]  # (B, g*g, D)
    x = _conv(sd, "post_quant_conv", vectors.transpose(1, 2).reshape(batch, -1, grid, grid))
    x = _conv(sd, "decoder.conv_in", x)
    x = _res(sd, "decoder.mid.2", _attn(sd, "decoder.mid.1", _res(sd, "decoder.mid.0", x)))
    for level in _blocks(sd, "decoder.conv_blocks."):
        p = f"decoder.conv_blocks.{level}."
        for b in _blocks(sd, p + "res."):
            x = _res(sd, f"{p}res.{b}", x)
            if f"{p}attn.{b}.q.weight" in sd:
                x = _attn(sd, f"{p}attn.{b}", x)
        if f"{p}upsample.conv.weight" in sd:
            x = _conv(sd, f"{p}upsample.conv", F.interpolate(x, scale_factor=2.0, mode="nearest"))
    return _conv(sd, "decoder.conv_out", F.silu(_norm(sd, "decoder.norm_out", x)))
