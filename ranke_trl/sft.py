"""Image-token SFT: next-token cross-entropy on the ground-truth codes of corpus images (METHOD.md, the "SFT" mode).

It talks to the backbone only through `ImageTokenPolicy`, so any adapter works:
- `prepare_for_training` installs the teacher-forced scoring forward and takes the VQ model out of the trained module,
  so the gradient reaches the generation path only and the VQ stays frozen, bit for bit;
- `encode_prompts` gives each prompt with its unconditional (CFG) branch;
- `code_log_probs(..., guidance_scale=1.0, mode="conditional")` scores the given codes, the same scoring GRPO uses.

**Prompt dropout (ours).** With probability `prompt_dropout` (default 0.1) a row's prompt is replaced by the policy's
unconditional branch, so the model also learns the unconditional distribution that classifier-free guidance
subtracts; without it, CFG after SFT extrapolates from an untrained branch.

Ground-truth codes come from the frozen encoder with the tokenizer's own lookup (for Janus,
`JanusVQCodec.encode`, the L2-normalised nearest code), e.g. through `ranke_trl.corpus.encode_corpus`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .policy.base import ImageTokenPolicy, PromptBatch, VQCodec


@dataclass
class ImageTokenSFTConfig:
    """Settings of `ImageTokenSFT`; each field's help is its documentation."""

    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate (cosine decay to 0)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (beta1 is 0.9)."})
    batch_size: int = field(default=32, metadata={"help": "Prompt/code pairs per optimiser step."})
    num_train_steps: int = field(default=1000, metadata={"help": "Optimiser steps; the data are cycled in epochs."})
    warmup_ratio: float = field(default=0.05, metadata={"help": "Share of the steps spent warming the LR up."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip; 0 disables clipping."})
    prompt_dropout: float = field(
        default=0.1,
        metadata={"help": "(ours) Probability of replacing a prompt by the unconditional branch, so CFG works."},
    )
    seed: int = field(default=0, metadata={"help": "Seeds the batch order and the prompt dropout."})
    show_progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})

    def __post_init__(self):
        if not 0.0 <= self.prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout={self.prompt_dropout} must lie in [0, 1].")
        if self.batch_size < 1 or self.num_train_steps < 0:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1, num_train_steps={self.num_train_steps} >= 0.")


def drop_prompts(prompts: PromptBatch, drop_prob: float, generator: torch.Generator | None = None) -> torch.LongTensor:
    """Input ids (B, L) where each row is, with probability `drop_prob`, the unconditional branch of its prompt.

    The attention mask is unchanged: the unconditional branch keeps the prompt's length, as in CFG sampling.
    """
    if drop_prob <= 0.0:
        return prompts.input_ids
    drop = torch.rand(prompts.input_ids.size(0), generator=generator) < drop_prob
    return torch.where(drop.to(prompts.input_ids.device)[:, None], prompts.uncond_input_ids, prompts.input_ids)


def image_token_nll(
    policy: ImageTokenPolicy,
    model: nn.Module,
    prompts: PromptBatch,
    codes: torch.LongTensor,
    prompt_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per code, a scalar >= 0) of `codes` (B, N) in [0, K) given `prompts`.

    `model` must have been through `policy.prepare_for_training` (it scores codes through `model(...)`).
    """
    if codes.shape != (prompts.input_ids.size(0), policy.num_image_tokens):
        raise ValueError(
            f"codes {tuple(codes.shape)} must be (B, N) = ({prompts.input_ids.size(0)}, {policy.num_image_tokens}): "
            "one row of ground-truth codes per prompt."
        )
    input_ids = drop_prompts(prompts, prompt_dropout, generator)
    scored = policy.code_log_probs(
        model, input_ids, prompts.attention_mask, codes, guidance_scale=1.0, mode="conditional"
    )
    return -scored.log_probs.mean()


class ImageTokenSFT:
    """A small AdamW loop of image-token SFT on (prompt, ground-truth codes) pairs.

    Args:
        policy: the backbone's adapter.
        model: its model. Construction calls `policy.prepare_for_training(model)`, which detaches the VQ model;
            `self.codec` holds it, and `policy.codec_attached(model, self.codec)` re-attaches it to save the system.
        config: see `ImageTokenSFTConfig`.

    Only parameters left trainable by `prepare_for_training` are optimised; those the image path never uses (the
    text LM head) get no gradient, so AdamW leaves them unchanged.
    """

    def __init__(self, policy: ImageTokenPolicy, model: nn.Module, config: ImageTokenSFTConfig | None = None):
        self.policy, self.model = policy, model
        self.config = config or ImageTokenSFTConfig()
        self.codec: VQCodec = policy.prepare_for_training(model)
        params = [p for p in model.parameters() if p.requires_grad]
        config = self.config
        self.optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, betas=(0.9, config.adam_beta2), weight_decay=config.weight_decay
        )
        steps = max(1, config.num_train_steps)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, math.ceil(config.warmup_ratio * steps), steps)
        self.generator = torch.Generator().manual_seed(self.config.seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check(self, prompts: Sequence[str], codes: torch.LongTensor) -> None:
        if len(prompts) != len(codes):
            raise ValueError(f"Got {len(prompts)} prompts but {len(codes)} code rows; pass one code row per prompt.")
        if len(prompts) == 0:
            raise ValueError("SFT needs at least one (prompt, codes) pair.")
        if codes.min() < 0 or codes.max() >= self.policy.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.policy.codebook_size}); got [{codes.min()}, {codes.max()}].")

    def step(self, prompts: Sequence[str], codes: torch.LongTensor) -> float:
        """One optimiser step on a batch; returns its loss (nats per code, with prompt dropout)."""
        self.model.train()
        batch = self.policy.encode_prompts(list(prompts), device=self.device)
        loss = image_token_nll(
            self.policy, self.model, batch, codes.to(self.device), self.config.prompt_dropout, self.generator
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()

    def train(self, prompts: Sequence[str], codes: torch.LongTensor) -> list[float]:
        """`config.num_train_steps` steps over shuffled epochs of the pairs; returns the per-step losses."""
        self._check(prompts, codes)
        size, order, losses = min(self.config.batch_size, len(prompts)), torch.empty(0, dtype=torch.long), []
        steps = range(self.config.num_train_steps)
        progress = tqdm(steps, desc="image-token SFT", disable=not self.config.show_progress)
        for _ in progress:
            if len(order) < size:
                order = torch.cat([order, torch.randperm(len(prompts), generator=self.generator)])
            index, order = order[:size], order[size:]
            losses.append(self.step([prompts[i] for i in index.tolist()], codes[index]))
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
        self.model.eval()
        return losses

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str], codes: torch.LongTensor, batch_size: int = 64) -> float:
        """Mean cross-entropy (nats per code) of the pairs, without prompt dropout."""
        self._check(prompts, codes)
        self.model.eval()
        total = 0.0
        for start in range(0, len(prompts), batch_size):
            batch = self.policy.encode_prompts(list(prompts[start : start + batch_size]), device=self.device)
            chunk = codes[start : start + batch_size].to(self.device)
            total += image_token_nll(self.policy, self.model, batch, chunk).item() * len(chunk)
        return total / len(prompts)


__all__ = ["ImageTokenSFT", "ImageTokenSFTConfig", "drop_prompts", "image_token_nll"]
