"""The LlamaGen T2I adapter (`ranke_trl.models.llamagen.LlamaGenForImageGeneration`).

Only this file knows LlamaGen's internals for RankE: prompts are T5 token ids (cleaned captions, at most 120, ending
with `</s>`), the unconditional branch of CFG swaps the caption for the model's frozen `uncond_embedding` (so its
token ids are the prompt's own), codes come from `lm_head`, and the VQ-16 tokenizer is `model.model.vqmodel`.
"""

from __future__ import annotations

import re
import types

import torch
from torch import nn

from ..models.llamagen import LlamaGenForImageGeneration, LlamaGenVQVAE, clean_caption
from ..models.llamagen.modeling_llamagen import _logits_warpers
from .base import ImageCodeLogProbs, ImageTokenPolicy, PromptBatch, apply_cfg, unwrap_model
from .janus import JanusVQCodec
from .static_sampler import CachedDecoder

_unwrap = unwrap_model


class LlamaGenVQCodec(JanusVQCodec):
    """LlamaGen's VQ-16 tokenizer (`LlamaGenVQVAE`) as codes <-> pixels; pixels (B, 3, H, W) in [-1, 1].

    VQ-16 has `JanusVQVAE`'s architecture and weight layout, so decoding, the Stage 2 parameter split (post-quant
    conv + decoder, optionally the codebook) and decoder checkpointing are the Janus codec's. Encoding is the
    original's L2-normalised nearest-code search (argmax cosine), which the Janus codec performs too.
    """

    @property
    def grid_size(self) -> int:
        return self.module.config.num_patches

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.LongTensor:
        vq = self.module
        pixels = pixels.to(device=vq.quant_conv.weight.device, dtype=vq.quant_conv.weight.dtype)
        return vq.encode(pixels).image_tokens.view(pixels.size(0), -1)  # LlamaGenVQVAE's normalised search


class LlamaGenPolicy(ImageTokenPolicy):
    """Text-to-image generation with a `LlamaGenForImageGeneration`.

    Args:
        tokenizer: the T5 tokenizer (or a `LlamaGenProcessor`, whose tokenizer is used).
        model: the LlamaGen model, read once for its sizes and its generation config (`cfg_interval`).
        prompt_template: how a prompt becomes a caption; LlamaGen takes the bare caption (`"{prompt}"`).
    """

    model_type = "llamagen"
    model_class = LlamaGenForImageGeneration

    def __init__(self, tokenizer, model: nn.Module, prompt_template: str = "{prompt}"):
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.prompt_template = prompt_template
        llamagen = _unwrap(model)
        config = llamagen.config
        self.codebook_size = config.vq_config.num_embeddings
        self.num_image_tokens = config.num_image_tokens
        self.caption_max_length = config.caption_max_length
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            raise ValueError("The T5 tokenizer has no pad token; LlamaGen captions are padded with T5's <pad>.")
        # Codes after `cfg_interval + 1` are drawn from the conditional logits; scoring follows the sampler.
        self.cfg_interval = int(getattr(llamagen.generation_config, "cfg_interval", -1))
        if llamagen.lm_head.out_features != self.codebook_size:
            raise ValueError(
                f"LlamaGen's lm_head predicts {llamagen.lm_head.out_features} codes but the VQ codebook has "
                f"{self.codebook_size}; the policy and the decoder must share one codebook."
            )
        self._undo = None

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def load_codec(cls, name_or_path: str, **kwargs) -> LlamaGenVQCodec:
        return LlamaGenVQCodec(LlamaGenVQVAE.from_pretrained(name_or_path, **kwargs))

    # ----------------------------------------------------------------------------------------------- prompts
    def format_prompt(self, prompt) -> str:
        """Text (or chat messages, whose last user turn is used) -> the cleaned caption T5 reads (cleaned twice,
        as upstream)."""
        if isinstance(prompt, list):
            user_turns = [m["content"] for m in prompt if m.get("role") == "user"]
            prompt = user_turns[-1] if user_turns else prompt[-1]["content"]
            if isinstance(prompt, list):  # content blocks
                prompt = " ".join(block.get("text", "") for block in prompt if block.get("type") == "text")
        return clean_caption(clean_caption(self.prompt_template.format(prompt=prompt)))

    def prompt_token_ids(self, prompts: list) -> list[list[int]]:
        """T5 ids of each caption, ending with `</s>`, at most `caption_max_length` (120) long, unpadded."""
        texts = [self.format_prompt(p) for p in prompts]
        out = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.caption_max_length)
        return out["input_ids"]

    def batch_from_ids(self, rows: list[list[int]], device=None) -> PromptBatch:
        """Left-padded ids (B, L). `uncond_input_ids` are the same ids: LlamaGen's unconditional branch replaces the
        caption's T5 features by `uncond_embedding` inside the model, under the same padding mask (upstream)."""
        length = max(len(r) for r in rows)
        if length > self.caption_max_length:
            raise ValueError(f"A caption has {length} T5 tokens; LlamaGen reads at most {self.caption_max_length}.")
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, length - len(row) :] = torch.tensor(row)
            attention_mask[i, length - len(row) :] = 1
        batch = PromptBatch(input_ids, attention_mask, input_ids.clone())
        return batch.to(device) if device is not None else batch

    # ----------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        prompts: PromptBatch,
        *,
        guidance_scale: float,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        do_sample: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.LongTensor:
        """Codes (B, N) from the model's KV-cached CFG loop (`generate_images`), with these sampling settings."""
        return _unwrap(model).generate_images(
            input_ids=prompts.input_ids,
            attention_mask=prompts.attention_mask,
            guidance_scale=guidance_scale,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            do_sample=do_sample,
            cfg_interval=self.cfg_interval,
            generator=generator,
        )

    def cached_decoder(self, model: nn.Module) -> CachedDecoder:
        """LlamaGen for the static-cache sampler, as `generate_images` runs it: the caption prefix (the frozen
        `uncond_embedding` on the unconditional rows) at absolute positions `120 - L ... 119`, code `t` fed at
        `120 + t`, logits from `lm_head`, the model's own warpers, CFG on the steps `cfg_interval` guides."""
        llamagen = _unwrap(model)
        inner, prefix_end = llamagen.model, llamagen.config.caption_max_length

        def prefix(prompts: PromptBatch, use_cfg: bool):
            mask = prompts.attention_mask
            captions, uncond = inner.encode_captions(prompts.input_ids, mask), None
            if use_cfg:
                captions, mask = torch.cat([captions, captions]), torch.cat([mask, mask])
                uncond = torch.arange(mask.size(0), device=mask.device) >= prompts.input_ids.size(0)
            embeds = inner.caption_prefix(None, mask, captions, uncond)
            positions = torch.arange(prefix_end - mask.size(1), prefix_end, device=mask.device).unsqueeze(0)
            return embeds, mask, positions, torch.full((1, 1), prefix_end, device=mask.device)

        return CachedDecoder(
            language_model=inner.language_model,
            prefix=prefix,
            code_embeds=lambda codes: inner.language_model.embed_tokens(codes[:, None]),
            head=llamagen.lm_head,
            warp=lambda logits, temperature, top_k, top_p: _logits_warpers(temperature, top_k, top_p)(None, logits),
            guided_step=lambda step: self.cfg_interval < 0 or step <= self.cfg_interval + 1,
        )

    # ----------------------------------------------------------------------------------------------- scoring
    def guided_steps(self, num_codes: int, device=None) -> torch.BoolTensor:
        """(N,) which codes the sampler draws from CFG-mixed logits (all of them unless `cfg_interval >= 0`)."""
        steps = torch.arange(num_codes, device=device)
        return steps >= 0 if self.cfg_interval < 0 else steps <= self.cfg_interval + 1

    def _teacher_forced(
        self, llamagen, input_ids, attention_mask, codes, guidance_scale, temperature=1.0, mode="guided",
        compute_entropy=False,
    ) -> ImageCodeLogProbs:
        """Log-probs (B, N) of `codes` under `softmax(cfg(logits) / T)`, the distribution `sample` draws from before
        top-k / top-p truncation; one forward over `[caption; caption]` x `[cond; uncond]`."""
        if mode not in ("guided", "conditional"):
            raise ValueError(f"Unknown log-prob mode {mode!r}; expected 'guided' or 'conditional'.")
        use_cfg = mode == "guided" and guidance_scale != 1.0
        batch, num_codes = codes.shape
        captions = llamagen.model.encode_captions(input_ids, attention_mask)  # frozen T5, no autograd
        uncond = None
        if use_cfg:
            captions, attention_mask = torch.cat([captions, captions]), torch.cat([attention_mask, attention_mask])
            uncond = torch.arange(2 * batch, device=codes.device) >= batch
            codes_in = torch.cat([codes, codes])
        else:
            codes_in = codes
        hidden = llamagen.model(
            caption_embeds=captions, attention_mask=attention_mask, image_tokens=codes_in[:, :-1], uncond=uncond
        ).last_hidden_state[:, -num_codes:]
        logits = llamagen.lm_head(hidden).float()  # (B or 2B, N, K)
        if use_cfg:
            cond, null = logits.chunk(2)
            guided = self.guided_steps(num_codes, codes.device).view(1, -1, 1)
            logits = torch.where(guided, apply_cfg(cond, null, guidance_scale), cond)
        log_probs_all = (logits / temperature).log_softmax(dim=-1)
        log_probs = log_probs_all.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs_all.exp() * log_probs_all).sum(-1) if compute_entropy else None
        return ImageCodeLogProbs(log_probs=log_probs, entropy=entropy)

    # ----------------------------------------------------------------------------------------------- VQ model
    def codec(self, model: nn.Module) -> LlamaGenVQCodec:
        return LlamaGenVQCodec(_unwrap(model).model.vqmodel)

    def prepare_for_training(self, model: nn.Module) -> LlamaGenVQCodec:
        """Detach the VQ, install the image-code forward, and keep the T5 encoder frozen (DDP would otherwise wait
        for gradients it never gets)."""
        llamagen = _unwrap(model)
        vq = llamagen.model.vqmodel
        if vq is None:
            raise ValueError("This LlamaGen model has no VQ model attached (was it already prepared for training?).")
        frozen = list(llamagen.model.text_encoder.parameters())
        self._undo = {
            "forward": llamagen.__dict__.get("forward"),
            "requires_grad": [(p, p.requires_grad) for p in frozen],
        }
        llamagen.model.vqmodel = None
        _install_image_forward(llamagen, self)
        for param in frozen:
            param.requires_grad_(False)
        return LlamaGenVQCodec(vq)

    def restore_model(self, model: nn.Module, codec: LlamaGenVQCodec) -> None:
        """Undo `prepare_for_training`: the VQ re-attached, the model's own `forward` and `requires_grad` flags."""
        llamagen = _unwrap(model)
        undo = self._undo or {"forward": None, "requires_grad": []}
        llamagen.model.vqmodel = codec.module
        llamagen.__dict__.pop("_ranke_original_forward", None)
        llamagen.__dict__.pop("forward", None)
        if undo["forward"] is not None:
            llamagen.forward = undo["forward"]
        for param, flag in undo["requires_grad"]:
            param.requires_grad_(flag)
        self._undo = None

    def attached_codec_module(self, model: nn.Module) -> nn.Module | None:
        return _unwrap(model).model.vqmodel

    def attach_codec_module(self, model: nn.Module, module: nn.Module | None) -> None:
        _unwrap(model).model.vqmodel = module

    # ----------------------------------------------------------------------------------------------- LoRA
    def lora_target_modules(self, names: list[str] | None = None) -> str:
        """A PEFT `target_modules` regex over the generation path: the GPT, the caption projector and `lm_head`.

        `names=None`: every attention and MLP projection of the GPT, the caption projector's `fc1` / `fc2` and the
        code head `lm_head`. A list of names matches those module names within the GPT and the caption projector
        (and `lm_head` if listed). The frozen T5 encoder and the VQ tokenizer are never adapted.
        """
        if names is None:
            projections = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
            return (
                rf"^(?:model\.(?:language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{projections})"
                r"|caption_projector\.(?:fc1|fc2))|lm_head)$"
            )
        alternatives = "|".join(re.escape(name) for name in names)
        return rf"^(?:model\.(?:language_model|caption_projector)\.(?:.*\.)?)?(?:{alternatives})$"


def _install_image_forward(llamagen: nn.Module, policy: LlamaGenPolicy) -> None:
    """Let `model(..., image_codes=codes)` return teacher-forced code log-probs; other calls are unchanged.

    The trainer scores codes through the *wrapped* model, so the forward itself must dispatch. Idempotent.
    """
    if getattr(llamagen, "_ranke_original_forward", None) is not None:
        return

    def forward(self, *args, image_codes=None, image_code_kwargs=None, **kwargs):
        if image_codes is None:
            return self._ranke_original_forward(*args, **kwargs)
        return policy._teacher_forced(
            self, kwargs["input_ids"], kwargs["attention_mask"], image_codes, **(image_code_kwargs or {})
        )

    llamagen._ranke_original_forward = llamagen.forward
    llamagen.forward = types.MethodType(forward, llamagen)
