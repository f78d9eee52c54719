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
`JanusVQCodec.encode`, the L2-normalised nearest code): the curated set's `gt_codes` column
(`ranke_trl.corpus.stored_codes`), else `ranke_trl.corpus.encode_corpus`.

**Runs from a recipe** (`examples/train_sft.py --recipe recipes/janus_sft.yaml`): `fit` trains to
`num_train_steps`, writes `checkpoint-<step>/` every `save_steps` (the whole system, loadable like the final output,
plus `sft_state.pt`: optimiser, schedule, data order and random state) and resumes from one exactly where it stopped;
`save` writes the output directory RankE (`model_name_or_path`) and evaluation load.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

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
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Forward/backward passes per step, each on batch_size / this many pairs."}
    )
    bf16: bool = field(
        default=False, metadata={"help": "Forward and backward under bf16 autocast; weights and AdamW stay fp32."}
    )
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
        if self.gradient_accumulation_steps < 1 or self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"gradient_accumulation_steps={self.gradient_accumulation_steps} must be >= 1 and divide "
                             f"batch_size={self.batch_size}.")


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


SFT_STATE = "sft_state.pt"  # optimiser, schedule, step, data order and random state of a checkpoint
SFT_LOG = "sft_state.json"  # the same step and losses, readable


class ImageTokenSFT:
    """A small AdamW loop of image-token SFT on (prompt, ground-truth codes) pairs.

    Args:
        policy: the backbone's adapter.
        model: its model. Construction calls `policy.prepare_for_training(model)`, which detaches the VQ model;
            `self.codec` holds it, and `policy.codec_attached(model, self.codec)` re-attaches it to save the system.
        config: see `ImageTokenSFTConfig`.

    Only parameters left trainable by `prepare_for_training` are optimised; those the image path never uses (the
    text LM head) get no gradient, so AdamW leaves them unchanged. `train` runs `num_train_steps` steps per call;
    `fit` trains to `num_train_steps` in all, with checkpoints and resumption.
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
        self.global_step, self.losses = 0, []
        self._order = torch.empty(0, dtype=torch.long)  # `fit`'s remaining shuffled row indices of this epoch

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
        """One optimiser step on a batch (in `gradient_accumulation_steps` passes); returns its loss (nats per code,
        with prompt dropout)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        size = math.ceil(len(prompts) / self.config.gradient_accumulation_steps)
        bf16 = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.config.bf16 else contextlib.nullcontext()
        total = 0.0
        for start in range(0, len(prompts), size):
            batch = self.policy.encode_prompts(list(prompts[start : start + size]), device=self.device)
            chunk = codes[start : start + size].to(self.device)
            with bf16:
                loss = image_token_nll(
                    self.policy, self.model, batch, chunk, self.config.prompt_dropout, self.generator
                )
            share = len(chunk) / len(prompts)
            (loss * share if share != 1 else loss).backward()
            total += loss.item() * share
        if self.config.max_grad_norm > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        self.losses.append(total)
        return total

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

    def fit(
        self,
        prompts: Sequence[str],
        codes: torch.LongTensor,
        output_dir: str | os.PathLike | None = None,
        save_steps: int = 0,
        resume_from_checkpoint: str | os.PathLike | None = None,
        processor=None,
    ) -> list[float]:
        """Train until `global_step == config.num_train_steps`; returns the loss of every step so far.

        Every `save_steps` steps (0: never) writes `<output_dir>/checkpoint-<step>/` (`save_checkpoint`, with
        `processor`). `resume_from_checkpoint` loads one first, after which the run continues as if never stopped:
        the same batches, prompt dropout and updates.
        """
        self._check(prompts, codes)
        if resume_from_checkpoint is not None:
            self.load_checkpoint(resume_from_checkpoint)
        size, total = min(self.config.batch_size, len(prompts)), self.config.num_train_steps
        progress = tqdm(total=total, initial=self.global_step, desc="image-token SFT",
                        disable=not self.config.show_progress)
        while self.global_step < total:
            if len(self._order) < size:
                self._order = torch.cat([self._order, torch.randperm(len(prompts), generator=self.generator)])
            index, self._order = self._order[:size], self._order[size:]
            loss = self.step([prompts[i] for i in index.tolist()], codes[index])
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}")
            if output_dir is not None and save_steps > 0 and self.global_step % save_steps == 0:
                self.save_checkpoint(os.path.join(output_dir, f"checkpoint-{self.global_step}"), processor)
        progress.close()
        self.model.eval()
        return list(self.losses)

    # ------------------------------------------------------------------------------------------------ saving
    def save(self, output_dir: str | os.PathLike, processor=None) -> None:
        """The whole system (VQ re-attached) with `save_pretrained`, and `processor`: a directory RankE
        (`model_name_or_path`), `load_policy_model` and evaluation load."""
        with self.policy.codec_attached(self.model, self.codec):
            self.model.save_pretrained(output_dir)
        if processor is not None:
            processor.save_pretrained(output_dir)
        with open(os.path.join(output_dir, SFT_LOG), "w", encoding="utf-8") as handle:
            json.dump({"global_step": self.global_step, "losses": self.losses, "config": asdict(self.config)}, handle)

    def state_dict(self) -> dict:
        """Everything but the weights that `fit` needs to continue: step, losses, data order, random state,
        optimiser and schedule."""
        return {"global_step": self.global_step, "losses": list(self.losses), "order": self._order.clone(),
                "generator": self.generator.get_state(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def save_checkpoint(self, folder: str | os.PathLike, processor=None) -> None:
        """`save(folder)` plus `sft_state.pt`, written under a temporary name and renamed into place, so a
        `checkpoint-<step>` folder is always complete."""
        from .checkpointing import write_dir_atomically

        def write(tmp: str) -> None:
            self.save(tmp, processor)
            torch.save(self.state_dict(), os.path.join(tmp, SFT_STATE))

        write_dir_atomically(str(folder), write)

    def load_checkpoint(self, folder: str | os.PathLike) -> None:
        """Restore the weights and `state_dict` saved by `save_checkpoint`."""
        from safetensors.torch import load_file

        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        if not files or not os.path.isfile(os.path.join(folder, SFT_STATE)):
            raise FileNotFoundError(f"{folder} is not an SFT checkpoint (needs *.safetensors and {SFT_STATE}).")
        weights = {}
        for name in files:
            weights.update(load_file(os.path.join(folder, name)))
        with self.policy.codec_attached(self.model, self.codec):
            unexpected = self.model.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{folder} holds weights this model lacks, e.g. {unexpected[:3]}: another model's.")
        state = torch.load(os.path.join(folder, SFT_STATE), weights_only=True)
        self.global_step, self.losses, self._order = state["global_step"], list(state["losses"]), state["order"]
        self.generator.set_state(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

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


@dataclass
class SFTRecipeArguments:
    """The recipe keys that are image-token SFT's own (`examples/train_sft.py`). Every other SFT setting is a
    `RecipeArguments` or `RankEConfig` key meaning what it means in a RankE recipe (`dataset_name`, `max_steps`,
    `per_device_train_batch_size`, `learning_rate`, `save_steps`, `resume_from_checkpoint`, ...), so the SFT row and
    RankE state their data and budget with the same keys."""

    sft_prompt_dropout: float = field(
        default=0.1,
        metadata={"help": "(ours) Probability of replacing a prompt by the unconditional branch, so CFG works."},
    )
    codes_column: str = field(
        default="gt_codes",
        metadata={"help": "Column of stored ground-truth codes (the curated set's); without it, or with codes of "
                  "another length, the images of `image_column` are encoded."},
    )


def parse_sft_recipe(argv: Sequence[str] | None = None) -> tuple:
    """`(RecipeArguments, RankEConfig, SFTRecipeArguments)` from `--recipe FILE` plus `--key value` overrides, with the
    training recipes' strict keys (`ranke_trl.recipes.RecipeParser`); `output_dir` defaults to "outputs/sft"."""
    from .config import RankEConfig
    from .recipes import RecipeArguments, RecipeParser

    parser = RecipeParser((RecipeArguments, RankEConfig, SFTRecipeArguments), defaults={"output_dir": "outputs/sft"})
    return parser.parse_args_and_config(argv)


def sft_config_from_recipe(config, sft_args: SFTRecipeArguments) -> ImageTokenSFTConfig:
    """The `ImageTokenSFTConfig` a recipe's `RankEConfig` (any `TrainingArguments`) states: `max_steps` steps of
    `per_device_train_batch_size x gradient_accumulation_steps` pairs, its AdamW settings, `warmup_steps` (a ratio
    if < 1), `seed` and `bf16` (autocast). The schedule is cosine after warm-up; `lr_scheduler_type` is not read."""
    if config.max_steps <= 0:
        raise ValueError(f"max_steps={config.max_steps}: set the SFT budget in optimiser steps (max_steps > 0).")
    warmup = config.warmup_steps
    return ImageTokenSFTConfig(
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        adam_beta2=config.adam_beta2,
        batch_size=config.per_device_train_batch_size * config.gradient_accumulation_steps,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_steps=config.max_steps,
        warmup_ratio=warmup if warmup < 1 else warmup / config.max_steps,
        max_grad_norm=config.max_grad_norm,
        prompt_dropout=sft_args.sft_prompt_dropout,
        seed=config.seed,
        bf16=bool(config.bf16),
        show_progress=not config.disable_tqdm,
    )


def ground_truth_codes(dataset, codec: VQCodec, codes_column: str = "gt_codes", image_column: str = "image",
                       batch_size: int = 32) -> torch.LongTensor:
    """Codes (M, N) of every row: the stored `codes_column` when it fits the codec (`ranke_trl.corpus.stored_codes`),
    else the images of `image_column` encoded by the codec."""
    from .corpus import CorpusImages, encode_corpus, stored_codes

    codes = stored_codes(dataset, codec, codes_column)
    if codes is None:
        device = next(codec.module.parameters()).device
        codes = encode_corpus(CorpusImages(dataset, image_column, codec.image_size), codec, batch_size=batch_size,
                              device=device)
    return codes


def last_sft_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The `checkpoint-<step>` folder of `output_dir` with the highest step, or None."""
    from .checkpointing import checkpoint_step

    if not os.path.isdir(output_dir):
        return None
    steps = {checkpoint_step(name): name for name in os.listdir(output_dir) if checkpoint_step(name) is not None}
    return os.path.join(output_dir, steps[max(steps)]) if steps else None


__all__ = [
    "ImageTokenSFT",
    "ImageTokenSFTConfig",
    "SFT_STATE",
    "drop_prompts",
    "image_token_nll",
    "SFTRecipeArguments",
    "ground_truth_codes",
    "last_sft_checkpoint",
    "parse_sft_recipe",
    "sft_config_from_recipe",
]
