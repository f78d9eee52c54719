"""ShapesWorld's second backbone: a tiny LlamaGen-architecture policy SFT'd on the world, beside its Janus one.

`prepare_shapes_world(backbone="llamagen")` adds the stage `policy_llamagen/` to a prepared world; the world's
feature net, VQ, CLIP and Janus policy are loaded from the cache, never retrained. The folder holds a
`LlamaGenForImageGeneration` and its `LlamaGenProcessor` (`from_pretrained`; `model_type` "llamagen" routes it to
`ranke_trl.policy.LlamaGenPolicy`):

- **Codec:** the world's VQ, its weights loaded into LlamaGen's `LlamaGenVQVAE`. Its L2-normalised lookup is the
  world codec's, so both backbones share the world's decoder, codes and metrics.
- **Caption encoder (ours).** LlamaGen reads captions through a frozen T5 encoder pretrained elsewhere (flan-t5-xl).
  Offline, the world has no such model, so it gets its own: a 2-layer T5 encoder over a word-level tokenizer of the
  world's vocabulary (`world_caption_tokenizer`), trained to reproduce the world CLIP's text embeddings of the
  training captions (masked mean of its token features, a linear head that is then discarded, cosine loss), then
  frozen inside the policy as flan-t5 is. Its features carry what the world's CLIP reads in a caption; the SFT
  trains the caption projector, the GPT and the code head on them, never the encoder.
- **GPT:** the width and depth of the world's Janus policy, 4 heads, LlamaGen's 2D RoPE over the code grid.
- **SFT:** `ranke_trl.sft.ImageTokenSFT` with the world's SFT settings on the same codes, as the Janus policy.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import JanusVQVAE, T5Config, T5EncoderModel, get_cosine_schedule_with_warmup

from ranke_trl.models.llamagen import LlamaGenConfig, LlamaGenForImageGeneration, LlamaGenProcessor
from ranke_trl.models.llamagen.configuration_llamagen import CAPTION_MAX_LENGTH, default_generation_config
from ranke_trl.policy import make_policy
from ranke_trl.sft import ImageTokenSFT

from .vocab import COLORS, KINDS, NUMBER_WORDS, RELATIONS

CAPTION_ENCODER_NAME = "shapes_world caption encoder (T5, distilled from the world's CLIP text tower)"


@dataclass(frozen=True)
class LlamaGenPolicySettings:
    """The LlamaGen stage's own settings (all ours); the GPT's width and depth and the SFT are the world's
    (`ShapesWorldSettings.policy_hidden_size`, `policy_num_layers`, `sft`), as its Janus policy has them."""

    num_heads: int = 4  # GPT heads (head dim 32 at width 128: a multiple of 4, as the 2D RoPE needs)
    caption_dim: int = 64  # T5 d_model, LlamaGen's caption_dim (2048 for flan-t5-xl)
    caption_layers: int = 2
    caption_heads: int = 4
    caption_steps: int = 600  # distillation steps of the caption encoder, cosine-decayed AdamW
    caption_batch_size: int = 64
    caption_learning_rate: float = 2e-3


LLAMAGEN_FULL = LlamaGenPolicySettings()
LLAMAGEN_TINY = LlamaGenPolicySettings(caption_dim=32, caption_steps=2, caption_batch_size=8)


def world_caption_tokenizer():
    """A `T5Tokenizer` (pad 0, `</s>` 1, unk 2) whose pieces are the world's caption words, whole (singular and
    plural kinds), with lower-case characters, digits and punctuation as the fallback for any other text."""
    from transformers import T5Tokenizer

    words = {"a", "an", "and", *COLORS, *KINDS, *(kind + "s" for kind in KINDS)}
    words |= set(NUMBER_WORDS.values()) | {w for phrase in RELATIONS.values() for w in phrase.split()}
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + ",.!?'\"-:;"]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    pieces += [("\u2581" + w, -1.0) for w in sorted(words) if len(w) > 1]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def caption_encoder_config(settings: LlamaGenPolicySettings, vocab_size: int) -> T5Config:
    """The caption encoder's `T5Config`: flan-t5's gated-GELU layout at `caption_dim`, no dropout (it is frozen)."""
    width = settings.caption_dim
    return T5Config(
        vocab_size=vocab_size, d_model=width, d_kv=width // settings.caption_heads, d_ff=2 * width,
        num_layers=settings.caption_layers, num_heads=settings.caption_heads, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    )


def _pooled(encoder: T5EncoderModel, input_ids, attention_mask) -> torch.Tensor:
    """Masked mean of the encoder's token features, (B, d_model)."""
    features = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(features.dtype)
    return (features * mask).sum(1) / mask.sum(1)


def train_caption_encoder(config: T5Config, processor: LlamaGenProcessor, captions: list[str],
                          targets: torch.Tensor, steps: int, batch_size: int, learning_rate: float, seed: int,
                          show_progress: bool) -> tuple[T5EncoderModel, nn.Linear, list[float]]:
    """Train a `T5EncoderModel(config)` so that a linear map of its pooled features points where the world CLIP's
    unit-norm text embeddings `targets` (M, D) of the M `captions` do (loss `1 - cos`, in [0, 2]).

    Captions are tokenised as the policy reads them (`processor`: cleaned, `</s>`, left-padded). Returns the encoder
    (eval mode, frozen), the head and the per-step losses.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoder, head = T5EncoderModel(config).train(), nn.Linear(config.d_model, targets.size(1), bias=False)
    tokens = processor(captions, padding="longest")
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, 0, max(1, steps))
    size, order, losses = min(batch_size, len(captions)), torch.empty(0, dtype=torch.long), []
    for _ in tqdm(range(steps), desc="LlamaGen policy: caption encoder", disable=not show_progress):
        if len(order) < size:
            order = torch.cat([order, torch.randperm(len(captions), generator=generator)])
        index, order = order[:size], order[size:]
        predicted = head(_pooled(encoder, tokens["input_ids"][index], tokens["attention_mask"][index]))
        loss = (1 - F.cosine_similarity(predicted, targets[index], dim=-1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return encoder.eval().requires_grad_(False), head.eval().requires_grad_(False), losses


@torch.no_grad()
def caption_retrieval_top1(encoder: T5EncoderModel, head: nn.Linear, processor, captions, targets) -> float:
    """Share of the distinct `captions` whose encoder embedding is nearest (cosine) to their own CLIP text embedding
    among all of theirs; chance is 1 / len(captions)."""
    tokens = processor(captions, padding="longest")
    predicted = F.normalize(head(_pooled(encoder, tokens["input_ids"], tokens["attention_mask"])), dim=-1)
    nearest = (predicted @ F.normalize(targets, dim=-1).t()).argmax(-1)
    return float((nearest == torch.arange(len(captions))).double().mean())


def build_world_llamagen(world_settings, settings: LlamaGenPolicySettings, vq: JanusVQVAE,
                         caption_encoder: T5EncoderModel, seed: int) -> LlamaGenForImageGeneration:
    """A `LlamaGenForImageGeneration` at the world policy's widths, seeded: random GPT, projector and head, the
    world's VQ (in `LlamaGenVQVAE`) and `caption_encoder`'s weights; sampling defaults are the world's (ours)."""
    grid = vq.config.num_patches
    hidden = world_settings.policy_hidden_size
    config = LlamaGenConfig(
        text_config=dict(
            hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=world_settings.policy_num_layers,
            num_attention_heads=settings.num_heads, num_key_value_heads=settings.num_heads,
            vocab_size=vq.config.num_embeddings, max_position_embeddings=CAPTION_MAX_LENGTH + grid**2,
        ),
        vq_config=vq.config.to_dict(),
        caption_encoder_config=caption_encoder.config.to_dict(),
        caption_dim=caption_encoder.config.d_model,
        image_grid_size=grid,
        text_encoder_name_or_path=CAPTION_ENCODER_NAME,
    )
    torch.manual_seed(seed)
    model = LlamaGenForImageGeneration(config).eval()
    model.model.vqmodel.load_state_dict(vq.state_dict())
    model.model.text_encoder.load_state_dict(caption_encoder.state_dict())
    model.generation_config = default_generation_config(
        guidance_scale=world_settings.eval_guidance_scale, top_k=0, top_p=world_settings.eval_top_p
    )
    return model


def train_llamagen_policy(s, settings: LlamaGenPolicySettings, seed: int, world, root, progress: bool, net, vq,
                          clip_reward):
    """The stage: caption encoder, then image-token SFT, then samples for the record. Returns `(model, record)`."""
    from . import pretrain

    processor = LlamaGenProcessor(tokenizer=world_caption_tokenizer())
    captions = sorted({scene.prompt for scene in world.train_scenes})
    eval_captions = sorted({scene.prompt for scene in world.eval_scenes})
    with torch.no_grad():
        targets, eval_targets = clip_reward.encode_text(captions), clip_reward.encode_text(eval_captions)
    config = caption_encoder_config(settings, len(processor.tokenizer))
    encoder, head, caption_losses = train_caption_encoder(
        config, processor, captions, targets, settings.caption_steps, settings.caption_batch_size,
        settings.caption_learning_rate, seed, progress,
    )
    model = build_world_llamagen(s, settings, vq, encoder, seed)
    policy = make_policy(model, processor)
    sft = ImageTokenSFT(policy, model, replace(s.sft, seed=seed, show_progress=progress))
    train_codes, eval_codes = world.codes(vq)
    eval_prompts = [scene.prompt for scene in world.eval_scenes]
    initial_eval_loss = sft.evaluate(eval_prompts, eval_codes)
    losses = sft.train([scene.prompt for scene in world.train_scenes], train_codes)
    generator = torch.Generator().manual_seed(seed)
    with pretrain._bar(len(eval_prompts), "LlamaGen policy: sampling validation images", progress) as bar:
        codes = policy.sample(model, policy.encode_prompts(eval_prompts), guidance_scale=s.eval_guidance_scale,
                              top_p=s.eval_top_p, generator=generator)
        bar.update(len(codes))
    samples01 = pretrain._decode(sft.codec, codes, "LlamaGen policy: decoding samples", progress)

    def save(folder):
        with policy.codec_attached(model, sft.codec):
            model.save_pretrained(folder)
        processor.save_pretrained(folder)

    pretrain._save_stage(root, pretrain.LLAMAGEN_STAGE, save)
    quality = {
        "caption_encoder_train_loss": float(np.mean(caption_losses[-max(1, len(caption_losses) // 20) :])),
        "caption_encoder_retrieval_top1": caption_retrieval_top1(encoder, head, processor, eval_captions,
                                                                 eval_targets),
        "caption_encoder_retrieval_chance": 1.0 / len(eval_captions),
        "sft_initial_eval_loss": initial_eval_loss,  # the untrained GPT on the validation codes; uniform is log K
        "sft_train_loss": float(np.mean(losses[-max(1, len(losses) // 20) :])),
        "sft_eval_loss": sft.evaluate(eval_prompts, eval_codes),
        "samples_guidance_scale": s.eval_guidance_scale,
        "samples_top_p": s.eval_top_p,
        "samples_shapes_eval": pretrain._shapes_eval(samples01, world.eval_scenes),
        "samples_shapes_fid": pretrain._fid(net, world.eval01, samples01),
    }
    policy.restore_model(model, sft.codec)  # the returned model holds its VQ again
    trained = sum(p.numel() for n, p in model.named_parameters() if "vqmodel" not in n and "text_encoder" not in n)
    sizes = {"num_parameters_without_vq_and_caption_encoder": trained,
             "num_parameters_caption_encoder": sum(p.numel() for p in encoder.parameters())}
    return model, {**sizes, "quality": quality}


__all__ = [
    "CAPTION_ENCODER_NAME",
    "LLAMAGEN_FULL",
    "LLAMAGEN_TINY",
    "LlamaGenPolicySettings",
    "build_world_llamagen",
    "caption_encoder_config",
    "caption_retrieval_top1",
    "train_caption_encoder",
    "train_llamagen_policy",
    "world_caption_tokenizer",
]
