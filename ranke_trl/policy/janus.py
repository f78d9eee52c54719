"""The Janus / Janus-Pro adapter (transformers' `JanusForConditionalGeneration`).

Only this file knows Janus's internals: `model.model.generation_embeddings`, `generation_aligner`,
`generation_head`, `language_model` and `vqmodel`. See NOTES.md for the facts it relies on.
"""

from __future__ import annotations

import re
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache, JanusForConditionalGeneration

from .base import (
    ImageCodeLogProbs,
    ImageTokenPolicy,
    PromptBatch,
    VQCodec,
    apply_cfg,
    position_ids_from_mask,
    unwrap_model,
    warp_logits,
)
from .static_sampler import CachedDecoder, draw_codes

JANUS_PROMPT_TEMPLATE = "<|User|>: {prompt}\n\n<|Assistant|>:"


_unwrap = unwrap_model


class JanusVQCodec(VQCodec):
    """Janus's VQ-16 tokenizer (`JanusVQVAE`) as codes <-> pixels.

    `encode` uses the L2-normalised nearest-code lookup of the original tokenizer (`codebook_l2_norm=True`),
    not `JanusVQVAEVectorQuantizer.forward`, which searches the raw codebook (NOTES.md).
    """

    def __init__(self, vq: nn.Module):
        self.module = vq

    @property
    def codebook_size(self) -> int:
        return self.module.quantize.embedding.num_embeddings  # the attached codebook itself, not its config

    @property
    def grid_size(self) -> int:
        return self.module.quantize.quant_state_dims[0]

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def image_size(self) -> int:
        return self.grid_size * 2 ** (len(self.module.config.channel_multiplier) - 1)

    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        return self.module.decode(codes)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.LongTensor:
        vq = self.module
        pixels = pixels.to(device=vq.quant_conv.weight.device, dtype=vq.quant_conv.weight.dtype)
        latents = vq.quant_conv(vq.encoder(pixels))  # (B, D, h, w)
        latents = F.normalize(latents.permute(0, 2, 3, 1).flatten(1, 2), dim=-1)  # (B, h*w, D), raster order
        codebook = F.normalize(vq.quantize.embedding.weight, dim=-1)  # (K, D)
        return torch.einsum("bnd,kd->bnk", latents, codebook).argmax(dim=-1)

    def enable_decoder_checkpointing(self) -> None:
        """Recompute the decoder's up-path blocks (residual, attention, upsampling) in the backward pass.

        Each block keeps only its input instead of its inner activations (`torch.utils.checkpoint`, non-reentrant),
        at the cost of one more forward of the up path per backward. Decodes without autograd (rollout scoring,
        the EMA teacher) run as before. Idempotent; deep copies (the EMA teacher) stay checkpointed.
        """
        for level in self.module.decoder.up:
            blocks = [*level.block, *level.attn] + ([level.upsample] if hasattr(level, "upsample") else [])
            for block in blocks:
                block.forward = types.MethodType(_checkpointed_forward, block)

    def decoder_parameters(self, train_codebook: bool = False) -> list[nn.Parameter]:
        vq = self.module
        params = list(vq.post_quant_conv.parameters()) + list(vq.decoder.parameters())
        if train_codebook:
            params += list(vq.quantize.embedding.parameters())
        return params


def _checkpointed_forward(self, *args):
    # Bound per instance, so `copy.deepcopy` rebinds it to the copy rather than calling the original's forward.
    forward = type(self).forward
    if torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False)
    return forward(self, *args)


class JanusPolicy(ImageTokenPolicy):
    """Image generation with a `JanusForConditionalGeneration`.

    Args:
        tokenizer: the Janus tokenizer (or a `JanusProcessor`, whose tokenizer is used).
        model: the Janus model, read once for its sizes and special-token ids.
        prompt_template: how a text prompt is wrapped before the begin-of-image token (Janus-Pro's chat format).
    """

    model_type = "janus"
    model_class = JanusForConditionalGeneration

    def __init__(self, tokenizer, model: nn.Module, prompt_template: str = JANUS_PROMPT_TEMPLATE):
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        self.prompt_template = prompt_template
        janus = _unwrap(model)
        vq_config = janus.config.vq_config
        self.codebook_size = vq_config.num_embeddings
        self.num_image_tokens = janus.config.vision_config.num_image_tokens
        self.boi_token_id = self._boi_token_id(janus)
        self.bos_token_id = self.tokenizer.bos_token_id
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            raise ValueError("The Janus tokenizer has no pad token; set `tokenizer.pad_token` before training.")
        grid = vq_config.num_patches
        if grid * grid != self.num_image_tokens:
            raise ValueError(
                f"Janus config mismatch: vision_config.num_image_tokens={self.num_image_tokens} but the VQ grid is "
                f"{grid}x{grid}. Fix the model config so both describe the same image."
            )
        head_out = janus.model.generation_head.vision_head.out_features
        # Compare with the codebook actually attached, not only with the config that describes it.
        vq = janus.model.vqmodel
        attached = vq.quantize.embedding.num_embeddings if vq is not None else self.codebook_size
        if head_out != self.codebook_size or attached != self.codebook_size:
            raise ValueError(
                f"Janus generation head predicts {head_out} codes, the VQ config says {self.codebook_size} and the "
                f"attached VQ codebook has {attached} entries; the policy and the decoder must share one codebook."
            )

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def load_codec(cls, name_or_path: str, **kwargs) -> "JanusVQCodec":
        from transformers import JanusVQVAE

        return JanusVQCodec(JanusVQVAE.from_pretrained(name_or_path, **kwargs))

    def _boi_token_id(self, janus) -> int:
        kwargs = getattr(janus.generation_config, "generation_kwargs", None) or {}
        if "boi_token_id" in kwargs:
            return kwargs["boi_token_id"]
        token = getattr(self.tokenizer, "boi_token", None) or "<begin_of_image>"
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError("Cannot find Janus's begin-of-image token in the tokenizer or generation config.")
        return token_id

    # ----------------------------------------------------------------------------------------------- prompts
    def format_prompt(self, prompt) -> str:
        """Text (or chat messages, whose last user turn is used) -> Janus's generation prompt, without BOI."""
        if isinstance(prompt, list):
            user_turns = [m["content"] for m in prompt if m.get("role") == "user"]
            prompt = user_turns[-1] if user_turns else prompt[-1]["content"]
            if isinstance(prompt, list):  # content blocks
                prompt = " ".join(block.get("text", "") for block in prompt if block.get("type") == "text")
        return self.prompt_template.format(prompt=prompt)

    def prompt_token_ids(self, prompts: list) -> list[list[int]]:
        """Token ids of each prompt, ending with the begin-of-image token (unpadded)."""
        texts = [self.format_prompt(p) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        return [row + [self.boi_token_id] for row in ids]

    def unconditional_ids(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Janus's unconditional branch: every token except BOS and BOI becomes pad."""
        keep = (input_ids == self.bos_token_id) | (input_ids == self.boi_token_id)
        return torch.where(keep, input_ids, torch.full_like(input_ids, self.pad_token_id))

    def batch_from_ids(self, rows: list[list[int]], device=None) -> PromptBatch:
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, length - len(row) :] = torch.tensor(row)
            attention_mask[i, length - len(row) :] = 1
        batch = PromptBatch(input_ids, attention_mask, self.unconditional_ids(input_ids))
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
        janus = _unwrap(model)
        if isinstance(generator, (list, tuple)) and len(generator) != prompts.input_ids.size(0):
            raise ValueError(f"Got {len(generator)} generators for {prompts.input_ids.size(0)} prompt rows.")
        lm, inner = janus.model.language_model, janus.model
        use_cfg = guidance_scale != 1.0
        batch = prompts.input_ids.size(0)
        embeds, mask, positions = self._prompt_rows(janus, prompts, use_cfg)
        cache = DynamicCache(config=lm.config)
        codes = torch.empty(batch, self.num_image_tokens, dtype=torch.long, device=embeds.device)
        for step in range(self.num_image_tokens):
            out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            cache = out.cache
            logits = inner.generation_head(out.last_hidden_state[:, -1]).float()
            cond, uncond = (logits[:batch], logits[batch:]) if use_cfg else (logits, None)
            logits = apply_cfg(cond, uncond, guidance_scale)
            if do_sample:
                probs = warp_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
                next_code = draw_codes(probs, generator)
            else:
                next_code = logits.argmax(dim=-1)
            codes[:, step] = next_code
            feed = torch.cat([next_code, next_code]) if use_cfg else next_code
            embeds = janus.prepare_embeddings_for_image_generation(feed.unsqueeze(-1))
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            positions = positions[:, -1:] + 1
        return codes

    def _prompt_rows(self, janus, prompts: PromptBatch, use_cfg: bool):
        """The sampler's rows, `[cond; uncond]` with CFG: embeddings (R, L, D), mask (R, L), positions (R, L) that
        skip the left padding (the cached eager loop and the static-cache sampler start from the same rows)."""
        input_ids, mask = prompts.input_ids, prompts.attention_mask
        if use_cfg:
            input_ids = torch.cat([input_ids, prompts.uncond_input_ids])
            mask = torch.cat([mask, mask])
        return janus.get_input_embeddings()(input_ids), mask, position_ids_from_mask(mask)

    def cached_decoder(self, model: nn.Module) -> CachedDecoder:
        """Janus for the static-cache sampler: the language model, codes in through the generation embeddings and
        aligner, logits out of `generation_head`, our `warp_logits` (as in :meth:`sample`)."""
        janus = _unwrap(model)

        def prefix(prompts: PromptBatch, use_cfg: bool):
            embeds, mask, positions = self._prompt_rows(janus, prompts, use_cfg)
            return embeds, mask, positions, positions[:, -1:] + 1

        return CachedDecoder(
            language_model=janus.model.language_model,
            prefix=prefix,
            code_embeds=lambda codes: janus.prepare_embeddings_for_image_generation(codes[:, None]),
            head=janus.model.generation_head,
            warp=warp_logits,
        )

    # ----------------------------------------------------------------------------------------------- scoring
    def _teacher_forced(
        self, janus, input_ids, attention_mask, codes, guidance_scale, temperature, mode, compute_entropy
    ) -> ImageCodeLogProbs:
        if mode not in ("guided", "conditional"):
            raise ValueError(f"Unknown log-prob mode {mode!r}; expected 'guided' or 'conditional'.")
        use_cfg = mode == "guided" and guidance_scale != 1.0
        batch, prompt_len = input_ids.shape
        if use_cfg:
            input_ids = torch.cat([input_ids, self.unconditional_ids(input_ids)])
            attention_mask = torch.cat([attention_mask, attention_mask])
            codes_in = torch.cat([codes, codes])
        else:
            codes_in = codes
        prompt_embeds = janus.get_input_embeddings()(input_ids)
        code_embeds = janus.prepare_embeddings_for_image_generation(codes_in[:, :-1])
        embeds = torch.cat([prompt_embeds, code_embeds.to(prompt_embeds.dtype)], dim=1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(codes_in.size(0), codes.size(1) - 1)], dim=1)
        hidden = janus.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False
        ).last_hidden_state[:, prompt_len - 1 :]
        logits = janus.model.generation_head(hidden).float()  # (B or 2B, N, K)
        cond, uncond = (logits[:batch], logits[batch:]) if use_cfg else (logits, None)
        logits = apply_cfg(cond, uncond, guidance_scale) / temperature
        log_probs_all = logits.log_softmax(dim=-1)
        log_probs = log_probs_all.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
        entropy = None
        if compute_entropy:
            entropy = -(log_probs_all.exp() * log_probs_all).sum(-1)
        return ImageCodeLogProbs(log_probs=log_probs, entropy=entropy)

    # ----------------------------------------------------------------------------------------------- VQ model
    def codec(self, model: nn.Module) -> JanusVQCodec:
        return JanusVQCodec(_unwrap(model).model.vqmodel)

    def prepare_for_training(self, model: nn.Module) -> JanusVQCodec:
        janus = _unwrap(model)
        codec = JanusVQCodec(janus.model.vqmodel) if janus.model.vqmodel is not None else None
        if codec is None:
            raise ValueError("This Janus model has no VQ model attached (was it already prepared for training?).")
        # What `restore_model` undoes: the instance `forward` (if the user had one) and the frozen flags.
        unused = [p for m in (janus.model.vision_model, janus.model.aligner) for p in m.parameters()]
        self._undo = {
            "forward": janus.__dict__.get("forward"),
            "requires_grad": [(p, p.requires_grad) for p in unused],
        }
        detach_vq(janus)
        install_image_forward(janus, self)
        # Parameters that image generation never uses would leave DDP waiting for their gradients.
        for param in unused:
            param.requires_grad_(False)
        return codec

    def restore_model(self, model: nn.Module, codec: JanusVQCodec) -> None:
        janus = _unwrap(model)
        undo = getattr(self, "_undo", None) or {"forward": None, "requires_grad": []}
        janus.model.vqmodel = codec.module
        # Our dispatching forward, and TRL's fused-LM-head wrapper around it, are instance attributes.
        janus.__dict__.pop("_ranke_original_forward", None)
        janus.__dict__.pop("forward", None)
        if undo["forward"] is not None:
            janus.forward = undo["forward"]
        for param, flag in undo["requires_grad"]:
            param.requires_grad_(flag)
        self._undo = None

    def attached_codec_module(self, model: nn.Module) -> nn.Module | None:
        return _unwrap(model).model.vqmodel

    def attach_codec_module(self, model: nn.Module, module: nn.Module | None) -> None:
        _unwrap(model).model.vqmodel = module

    # ----------------------------------------------------------------------------------------------- LoRA
    def lora_target_modules(self, names: list[str] | None = None) -> str:
        """A PEFT `target_modules` regex confined to the image-generation path (module names inside the Janus model).

        `names=None` gives the default: every attention and MLP projection of the language model, plus the linear
        layers of the generation aligner and of the generation head. A list of names (e.g. `["q_proj", "v_proj"]`)
        matches those module names within the language model, generation aligner and generation head only; the
        vision tower and the understanding aligner, which image generation never runs, are never adapted.
        """
        if names is None:
            projections = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"
            return (
                rf"^model\.(?:language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{projections})"
                r"|generation_aligner\.(?:fc1|hidden_layers\.\d+)|generation_head\.(?:proj_out|vision_head))$"
            )
        alternatives = "|".join(re.escape(name) for name in names)
        return rf"^model\.(?:language_model|generation_aligner|generation_head)\.(?:.*\.)?(?:{alternatives})$"


def install_image_forward(model: nn.Module, policy: JanusPolicy) -> None:
    """Let `model(..., image_codes=codes)` return teacher-forced code log-probs; other calls are unchanged.

    The trainer scores codes through the *wrapped* model, so the forward itself must dispatch. Idempotent.
    """
    janus = _unwrap(model)
    if getattr(janus, "_ranke_original_forward", None) is not None:
        return
    def forward(self, *args, image_codes=None, image_code_kwargs=None, **kwargs):
        if image_codes is None:
            return self._ranke_original_forward(*args, **kwargs)
        return policy._teacher_forced(
            self, kwargs["input_ids"], kwargs["attention_mask"], image_codes, **(image_code_kwargs or {})
        )

    janus._ranke_original_forward = janus.forward
    janus.forward = types.MethodType(forward, janus)


def detach_vq(model: nn.Module) -> nn.Module:
    """Take the VQ model out of a Janus policy, so the policy's optimizer and DeepSpeed engine never own it."""
    janus = _unwrap(model)
    vq = janus.model.vqmodel
    del janus.model.vqmodel
    janus.model.vqmodel = None
    return vq

