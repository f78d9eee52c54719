"""The static-cache CFG sampler: the eager sampler's loop over a preallocated KV cache, optionally `torch.compile`d.

The eager samplers (`JanusPolicy.sample`, `LlamaGenForImageGeneration.generate_images`) grow a `DynamicCache` by one
column per code, so every decoding step has new shapes. Here the cache is a transformers `StaticCache` of a fixed
length (the prompt length rounded up to `PROMPT_BUCKET`, plus the N codes), the attention mask spans that whole
length (causality hides the columns not written yet), and one decoding step is a function of fixed-shape tensors:
`torch.compile` traces it once per (rows, cache length) and replays it for all N steps (CUDA graphs on a GPU, with
`mode="reduce-overhead"`; inductor's C++ kernels on a CPU). The prompt (prefill) runs once per batch, uncompiled.

The sampling semantics are the eager path's: `[cond; uncond]` rows in one batch, `u + s(c - u)` on the raw logits (on
the steps the backbone guides), the backbone's own temperature / top-k / top-p warpers, the same draw (one
`torch.multinomial` per row with its own generator), the drawn code fed to both halves. Only the attention's
reduction runs over more (masked) keys, so logits agree with the eager ones to float rounding (~1e-6 in fp32):
greedy codes are identical unless two logits tie within rounding, and sampled codes consume every generator exactly
as the eager path does, so they are identical unless a uniform draw falls within rounding of a CDF boundary.

A backbone takes part by returning a :class:`CachedDecoder` from `ImageTokenPolicy.cached_decoder(model)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import StaticCache

SAMPLERS = ("eager", "static", "compiled")
#: prompts are padded (in the cache only) to a multiple of this, so a compiled step serves many prompt lengths
PROMPT_BUCKET = 32


class UnknownSamplerError(ValueError):
    """A `sampler` value that is not one of `SAMPLERS`."""


def check_sampler(sampler) -> str:
    """Return `sampler` if it names a sampler implementation; raise :class:`UnknownSamplerError` otherwise."""
    if sampler not in SAMPLERS:
        raise UnknownSamplerError(
            f"sampler={sampler!r} is not one of {SAMPLERS}: 'eager' (the dynamic-cache loop, the default), 'static' "
            "(a preallocated KV cache, fixed shapes per step) or 'compiled' ('static' with the decoding step "
            "compiled by torch.compile)."
        )
    return sampler


def draw_codes(probs: torch.Tensor, generator) -> torch.LongTensor:
    """One code per row of `probs` (B, K); a list of generators gives each row its own stream (seeds per prompt)."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator)]).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class CachedDecoder:
    """One backbone's image-code decoder, cut into the pieces a static-cache sampler needs.

    Rows are the sampler's `R = B` (no CFG) or `2B` (`[cond; uncond]`) rows.

    Attributes:
        language_model: a transformers decoder taking `inputs_embeds`, a 2D `attention_mask`, `position_ids` and a
            `cache`, returning `last_hidden_state` (R, S, D).
        prefix: `(prompts, use_cfg) -> (embeds (R, L, D), attention_mask (R, L), position_ids (R or 1, L),
            next_position_ids (R or 1, 1))`, the last being the position of the first code.
        code_embeds: codes (R,) -> input embeddings (R, 1, D) of the next step.
        head: hidden states (R, D) -> code logits (R, K).
        guided_step: whether code `t` is drawn from CFG-mixed logits (else from the conditional ones).
        warp: `(logits, temperature, top_k, top_p) -> logits`, the backbone's own warpers (filtered entries -inf).
    """

    language_model: nn.Module
    prefix: Callable
    code_embeds: Callable[[torch.LongTensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]
    warp: Callable
    guided_step: Callable[[int], bool] = field(default=lambda step: True)


class StaticCacheSampler:
    """Draws codes (B, N) with a preallocated KV cache; `compile=True` compiles the one-code decoding step.

    Build one per model and keep it (`ImageTokenPolicy.sample_codes` does): its caches are reused between batches,
    so a compiled step (and its CUDA graph) is traced once per (rows, cache length), not once per call.
    """

    def __init__(self, decoder: CachedDecoder, num_codes: int, compile: bool = False):
        self.decoder = decoder
        self.num_codes = num_codes
        self.compiled = compile
        self._caches: dict[tuple, StaticCache] = {}
        self._compiled_steps: dict[str, Callable] = {}

    def _decode_step(self, codes, position_ids, attention_mask, cache):
        """One code per row (R,) in -> float32 logits (R, K) of the next code; writes one cache column."""
        hidden = self.decoder.language_model(
            inputs_embeds=self.decoder.code_embeds(codes), attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=True,
        ).last_hidden_state  # fmt: skip
        return self.decoder.head(hidden[:, -1]).float()

    def _step_fn(self, device: torch.device) -> Callable:
        """The decoding step for `device`: eager, or compiled (CUDA graphs on CUDA, inductor elsewhere)."""
        if not self.compiled:
            return self._decode_step
        if device.type not in self._compiled_steps:
            mode = "reduce-overhead" if device.type == "cuda" else None
            self._compiled_steps[device.type] = torch.compile(self._decode_step, dynamic=False, mode=mode)
        return self._compiled_steps[device.type]

    def _cache(self, rows: int, length: int, embeds: torch.Tensor) -> StaticCache:
        key = (rows, length, embeds.dtype, embeds.device)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = StaticCache(config=self.decoder.language_model.config, max_cache_len=length)
        else:
            cache.reset()
        return cache

    @torch.no_grad()
    def sample(
        self,
        prompts,
        *,
        guidance_scale: float,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        do_sample: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        logprob_mode: str | None = None,
    ) -> torch.LongTensor | tuple[torch.LongTensor, torch.FloatTensor]:
        """Codes (B, N) in [0, K) for a `PromptBatch`, drawn as the eager sampler draws them.

        `logprob_mode` ("guided" or "conditional") also returns the log-probs (B, N) of the drawn codes under the
        distribution the GRPO loss scores (`ImageTokenPolicy.code_log_probs` with that mode): softmax of the
        CFG-mixed (or conditional) logits over `temperature`, before top-k / top-p.
        """
        if logprob_mode not in (None, "guided", "conditional"):
            raise ValueError(f"Unknown log-prob mode {logprob_mode!r}; expected 'guided', 'conditional' or None.")
        batch = prompts.input_ids.size(0)
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise ValueError(f"Got {len(generator)} generators for {batch} prompt rows.")
        decoder, use_cfg = self.decoder, guidance_scale != 1.0
        embeds, prompt_mask, positions, next_positions = decoder.prefix(prompts, use_cfg)
        rows, length = prompt_mask.shape
        cache_length = math.ceil(length / PROMPT_BUCKET) * PROMPT_BUCKET + self.num_codes
        cache = self._cache(rows, cache_length, embeds)
        # The prompt fills the first `length` columns; the rest are codes, hidden by causality until written.
        mask = prompt_mask.new_ones(rows, cache_length)
        mask[:, :length] = prompt_mask
        hidden = decoder.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
        ).last_hidden_state
        logits = decoder.head(hidden[:, -1]).float()
        step_fn = self._step_fn(embeds.device)
        codes = torch.empty(batch, self.num_codes, dtype=torch.long, device=embeds.device)
        log_probs = torch.empty(batch, self.num_codes, device=embeds.device) if logprob_mode else None
        for step in range(self.num_codes):
            cond, uncond = (logits[:batch], logits[batch:]) if use_cfg else (logits, None)
            guided = use_cfg and decoder.guided_step(step)
            mixed = uncond + guidance_scale * (cond - uncond) if guided else cond
            if do_sample:
                next_code = draw_codes(decoder.warp(mixed, temperature, top_k, top_p).softmax(dim=-1), generator)
            else:
                next_code = mixed.argmax(dim=-1)
            codes[:, step] = next_code
            if logprob_mode:
                scored = mixed if logprob_mode == "guided" else cond
                log_probs[:, step] = (scored / temperature).log_softmax(-1).gather(-1, next_code[:, None]).squeeze(-1)
            if step + 1 == self.num_codes:
                break
            feed = torch.cat([next_code, next_code]) if use_cfg else next_code
            if self.compiled and embeds.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            logits = step_fn(feed, next_positions + step, mask, cache).clone()  # a CUDA graph reuses its output
        return (codes, log_probs) if logprob_mode else codes
