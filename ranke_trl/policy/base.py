"""The small interface every image-token backbone implements, and the sampling pieces they share.

The trainer, the decoder phase, SFT and evaluation talk only to :class:`ImageTokenPolicy` (prompts -> codes ->
log-probs, loading, LoRA targets) and :class:`VQCodec` (codes <-> pixels), so a second backbone is a second adapter
registered with `ranke_trl.policy.register_backbone`, not a second trainer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import contextlib
import os

import torch
from torch import nn
from transformers.utils import ModelOutput

from .static_sampler import CachedDecoder, StaticCacheSampler, check_sampler

LogProbMode = Literal["guided", "conditional"]


@dataclass
class PromptBatch:
    """Tokenised prompts, left-padded.

    `input_ids` / `attention_mask`: (B, L) for the conditional branch. `uncond_input_ids`: (B, L), the same rows
    with every token but BOS and begin-of-image replaced by pad (the unconditional branch of CFG).
    """

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    uncond_input_ids: torch.LongTensor

    def to(self, device) -> "PromptBatch":
        return PromptBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.uncond_input_ids)))


@dataclass
class ImageCodeLogProbs(ModelOutput):
    """Output of a teacher-forced pass over image codes. A `ModelOutput`, so DDP can find its tensors.

    `log_probs`: (B, N) log-probability of each given code. `entropy`: (B, N) entropy in nats of the scored
    distribution, or None when not asked for.
    """

    log_probs: torch.FloatTensor | None = None
    entropy: torch.FloatTensor | None = None


def warp_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) filtering, in the order transformers applies them.

    `logits`: (B, K). Filtered entries become -inf. `top_k=0` and `top_p=1.0` disable each filter; `temperature`
    must be positive.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use top_k=1 for greedy decoding.")
    logits = logits / temperature if temperature != 1.0 else logits
    if top_k and top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the mass *before* it already reaches top_p; the most likely token always stays.
        remove_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance, `u + s * (c - u)`. With no unconditional logits (s = 1), returns `cond`."""
    if uncond is None:
        return cond
    return uncond + guidance_scale * (cond - uncond)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Positions that skip left padding: (B, L) attention mask -> (B, L) positions starting at 0 on the first token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class VQCodec(ABC):
    """A VQ tokenizer seen as codes <-> pixels. Pixels are (B, 3, H, W) in [-1, 1]; codes are (B, N) in [0, K)."""

    #: the `nn.Module` that owns every parameter (encoder, quantizer, decoder)
    module: nn.Module

    @property
    @abstractmethod
    def codebook_size(self) -> int: ...

    @property
    @abstractmethod
    def num_tokens(self) -> int:
        """N, the number of codes per image."""

    @property
    @abstractmethod
    def image_size(self) -> int: ...

    @abstractmethod
    def decode(self, codes: torch.LongTensor) -> torch.Tensor:
        """Render codes (B, N) to pixels (B, 3, H, W), roughly in [-1, 1] (not clamped); differentiable in φ."""

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> torch.LongTensor:
        """Quantise pixels (B, 3, H, W) in [-1, 1] to codes (B, N) with the frozen encoder; no gradient."""

    @abstractmethod
    def decoder_parameters(self, train_codebook: bool = False) -> list[nn.Parameter]:
        """The decoder-side parameters Stage 2 may train (never the encoder)."""

    @torch.no_grad()
    def decode_images(self, codes: torch.LongTensor, batch_size: int | None = None) -> torch.Tensor:
        """Codes (B, N) -> images (B, 3, H, W) float32 in [0, 1], decoded `batch_size` rows at a time; no gradient.

        The one conversion from the decoder's [-1, 1] output to the [0, 1] images rewards, logs and metrics see.
        """
        batch_size = batch_size or max(len(codes), 1)
        pixels = [self.decode(codes[i : i + batch_size]) for i in range(0, len(codes), batch_size)]
        return ((torch.cat(pixels).float().clamp(-1, 1) + 1) / 2).contiguous()

    def enable_decoder_checkpointing(self) -> None:
        """Recompute the decoder's blocks in the backward pass (`decoder_gradient_checkpointing`), if supported."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot checkpoint its decoder; set decoder_gradient_checkpointing=False."
        )

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the tokenizer (encoder, codebook, co-evolved decoder) so the adapter's `load_codec(path)` reloads it."""
        self.module.save_pretrained(path)


class ImageTokenPolicy(ABC):
    """An autoregressive image-token model, seen through the five operations RankE needs.

    The methods that run the network take the model explicitly (`model`), so the trainer can pass the wrapped
    model (DDP / DeepSpeed), the reference model or an unwrapped copy for generation.
    """

    #: N, codes per image; K, codebook size
    num_image_tokens: int
    codebook_size: int
    #: `config.model_type` of the checkpoints this adapter loads (a local directory or Hub id is routed by it)
    model_type: str

    # ------------------------------------------------------------------------------------------------ loading
    #: the `PreTrainedModel` class of this backbone (what `handles` recognises and `load_model` loads)
    model_class: type

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        """Whether `model` (unwrapped) is a model of this backbone."""
        return isinstance(unwrap_model(model), cls.model_class)

    @classmethod
    def load_model(cls, name_or_path: str, **kwargs) -> tuple[nn.Module, object]:
        """`(model, processor)` from a Hub id or a local directory; `kwargs` go to `from_pretrained`
        (`dtype`, `revision`, `trust_remote_code`, ...)."""
        from transformers import AutoProcessor

        model = cls.model_class.from_pretrained(name_or_path, **kwargs)
        hub = {k: kwargs[k] for k in ("revision", "trust_remote_code") if k in kwargs}
        return model, AutoProcessor.from_pretrained(name_or_path, **hub)

    @classmethod
    @abstractmethod
    def load_codec(cls, name_or_path: str, **kwargs) -> VQCodec:
        """A standalone VQ tokenizer saved with :meth:`VQCodec.save_pretrained` (e.g. a RankE run's `decoder/`)."""

    # ------------------------------------------------------------------------------------------------ prompts
    @abstractmethod
    def prompt_token_ids(self, prompts: list) -> list[list[int]]:
        """Token ids of each prompt (strings or chat messages), unpadded, ready for the first image code."""

    @abstractmethod
    def batch_from_ids(self, rows: list[list[int]], device=None) -> PromptBatch:
        """Left-pad token-id rows into a :class:`PromptBatch` with its unconditional branch."""

    def encode_prompts(self, prompts: list, device=None) -> PromptBatch:
        """Tokenise text prompts (strings or chat messages) into a left-padded :class:`PromptBatch`."""
        return self.batch_from_ids(self.prompt_token_ids(prompts), device)

    @abstractmethod
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
        """Draw one image per prompt row with a KV-cached CFG sampler. Returns codes (B, N).

        `generator` may be one generator for the batch, or one per row, so that a row's image depends only on its
        own seed, not on the batch it was drawn in.
        """

    def sample_codes(
        self,
        model: nn.Module,
        prompts: PromptBatch,
        *,
        sampler: str = "eager",
        guidance_scale: float,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        do_sample: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.LongTensor:
        """:meth:`sample` through the chosen implementation (`SamplingArguments.sampler`). Returns codes (B, N).

        "eager" is :meth:`sample`; "static" and "compiled" are the static-cache sampler (`static_sampler.py`), the
        latter with its decoding step compiled. All three draw the same distribution, with the same generators.
        """
        settings = dict(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                        do_sample=do_sample, generator=generator)  # fmt: skip
        if check_sampler(sampler) == "eager":
            return self.sample(model, prompts, **settings)
        return self.static_sampler(model, compile=sampler == "compiled").sample(prompts, **settings)

    def static_sampler(self, model: nn.Module, compile: bool = False) -> StaticCacheSampler:
        """The :class:`StaticCacheSampler` of `model` (unwrapped), built once and kept: its KV caches and compiled
        decoding step are reused by every later batch."""
        model = unwrap_model(model)
        samplers = self.__dict__.setdefault("_static_samplers", {})
        key = (id(model), compile)  # the sampler holds `model`, so its id is not reused while the entry lives
        if key not in samplers:
            samplers[key] = StaticCacheSampler(self.cached_decoder(model), self.num_image_tokens, compile)
        return samplers[key]

    def cached_decoder(self, model: nn.Module) -> CachedDecoder:
        """`model`'s image-code decoder in the pieces the static-cache sampler runs (prompt prefix, code embedding,
        code head, warpers). Backbones that do not provide it sample with `sampler="eager"` only."""
        raise NotImplementedError(
            f"{type(self).__name__} has no static-cache sampler (`cached_decoder`); use sampler='eager'."
        )

    def code_log_probs(
        self,
        model: nn.Module,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        codes: torch.LongTensor,
        *,
        guidance_scale: float,
        temperature: float = 1.0,
        mode: LogProbMode = "guided",
        compute_entropy: bool = False,
    ) -> ImageCodeLogProbs:
        """Teacher-forced per-code log-probs of `codes` (B, N) given prompts, in one forward pass.

        It goes through `model(...)`, so DDP / DeepSpeed hooks fire: :meth:`prepare_for_training` makes the model's
        forward dispatch `model(input_ids=..., attention_mask=..., image_codes=..., image_code_kwargs=...)` to the
        adapter's teacher-forced pass, which returns :class:`ImageCodeLogProbs`.
        """
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            image_codes=codes,
            image_code_kwargs=dict(
                guidance_scale=guidance_scale, temperature=temperature, mode=mode, compute_entropy=compute_entropy
            ),
        )

    @abstractmethod
    def codec(self, model: nn.Module) -> VQCodec:
        """The VQ tokenizer of `model` as a :class:`VQCodec`."""

    @abstractmethod
    def prepare_for_training(self, model: nn.Module) -> VQCodec:
        """Make `model` trainable by the GRPO trainer and return its VQ tokenizer, detached from it.

        Afterwards `model(..., image_codes=codes)` returns :class:`ImageCodeLogProbs` (so scoring goes through the
        wrapped model and its DDP/DeepSpeed hooks), and the VQ model is no longer a submodule of the policy (so the
        policy's optimizer and DeepSpeed engine never own the decoder).
        """

    @abstractmethod
    def restore_model(self, model: nn.Module, codec: VQCodec) -> None:
        """Undo :meth:`prepare_for_training`: attach `codec`'s module again and restore `model`'s own `forward` and
        `requires_grad` flags, so the caller gets back the model it passed in, whole and working."""

    @abstractmethod
    def attached_codec_module(self, model: nn.Module) -> nn.Module | None:
        """The VQ module currently attached to `model` (None once :meth:`prepare_for_training` detached it)."""

    @abstractmethod
    def attach_codec_module(self, model: nn.Module, module: nn.Module | None) -> None:
        """Attach `module` as `model`'s VQ tokenizer (None detaches it)."""

    @contextlib.contextmanager
    def codec_attached(self, model: nn.Module, codec: VQCodec):
        """Re-attach `codec`'s module to `model` for the duration of the block, e.g. to save the whole system."""
        previous = self.attached_codec_module(model)
        self.attach_codec_module(model, codec.module)
        try:
            yield model
        finally:
            self.attach_codec_module(model, previous)

    @abstractmethod
    def lora_target_modules(self, names: list[str] | None = None) -> str:
        """A PEFT `target_modules` regex confined to the image-generation path.

        `names=None` gives the adapter's default modules; a list of module names matches those names within the
        generation path only.
        """


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed / PEFT wrappers down to the backbone's own `PreTrainedModel`."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model
