"""`RankEGRPOTrainer`: TRL's `GRPOTrainer` on image tokens (Stage 1, the E-step), with the decoder phase (Stage 2,
the M-step) run at phase boundaries.

The backbone is reached only through its adapter (`self.policy`, an `ImageTokenPolicy`) and its VQ tokenizer
(`self.codec`, a `VQCodec`, detached from the policy so that neither the policy's optimizer nor its DeepSpeed engine
owns the decoder). Overrides of `GRPOTrainer`, each as small as it can be and calling `super()` where TRL's logic
still applies:

- `__init__`: builds the adapter, detaches the codec, builds the EMA reference policy from the in-memory policy
  (TRL would rebuild it from `config._name_or_path`), the rollout cache and the decoder phase. It works on a copy
  of `args`, so the caller's config is never changed.
- `_generate_and_score_completions`: keeps the corpus image column away from TRL's VLM path.
- `_generate`: CFG rollouts with the adapter's KV-cached sampler; completions are codes.
- `_calculate_rewards`: decodes the codes with the *current* decoder and hands `[0, 1]` images to the rewards;
  then logs the shift diagnostics and fills the rollout cache.
- `_get_per_token_logps_and_entropies`: teacher-forced code log-probs through the wrapped model.
- `training_step`: in Decoder-only mode, draws and caches rollouts without a policy gradient.
- `log`: also logs a grid of rollout images every `log_images_steps`.
- `create_model_card`: RankE's card (`hub.write_model_card`).
- save/load hooks (`save_model`, `_save`, `_save_checkpoint`, `_load_from_checkpoint`,
  `_load_optimizer_and_scheduler`, `_push_from_checkpoint`): in `checkpointing.RankECheckpointing`.

Everything else (advantages, the clipped loss, the KL to the reference, its EMA callback, logging) is TRL's.
FSDP is refused at start-up: the decoder phase and the detached codec are written for one process, DDP and
DeepSpeed ZeRO.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings

import torch
from accelerate.utils import gather, gather_object, is_peft_model
from torch import nn
from transformers import PreTrainedTokenizerBase, ProcessorMixin
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer import grpo_trainer
from trl.trainer.utils import is_async_callable

from .checkpointing import DECODER_DIR, RankECheckpointing
from .config import RankEConfig
from .corpus import CorpusImages, encode_corpus, stored_codes
from .dataset_checks import check_training_dataset
from .decoder import DecoderPhase
from .decoder.phase import resolve_lambda_rbp
from .diagnostics import CodeHistogram, ShiftDiagnostics
from .distributed import is_zero3_partitioned, unpartitioned_copy
from .hub import write_model_card
from .image_logging import log_image_grid
from .interrupt import stop_on_signals
from .policy import load_policy_model, make_policy
from .rewards import OpenClipReward, prompt_text
from .rewards.guard import NamedReward, check_reward_funcs
from .rollout_buffer import RolloutBuffer
from .sampling import describe_sampling
from .schedule import DecoderPhaseCallback, corpus_batches

logger = logging.getLogger(__name__)


#: FutureWarnings that TRL 1.16 itself triggers under transformers 5 (`unwrap_model_for_generation` reads
#: `is_gradient_checkpointing` at every generation); nothing a user writes can avoid them
_UPSTREAM_DEPRECATIONS = (r"`is_gradient_checkpointing` is deprecated",)


def _check_rbp_rewards(rbp_reward_funcs):
    """`rbp_reward_funcs` as a list (None stays None), each one differentiable, or a ValueError naming it."""
    if rbp_reward_funcs is None:
        return None
    funcs = list(rbp_reward_funcs) if isinstance(rbp_reward_funcs, (list, tuple)) else [rbp_reward_funcs]
    if not funcs:
        raise ValueError("rbp_reward_funcs=[] would leave L_rbp nothing to back-propagate; pass None for the "
                         "differentiable rewards among reward_funcs, or set lambda_rbp=0 to turn L_rbp off.")
    for func in funcs:
        if not (getattr(func, "is_differentiable", False) and callable(getattr(func, "score", None))):
            name = getattr(func, "__name__", type(func).__name__)
            raise ValueError(f"rbp_reward_funcs: {name!r} is not differentiable (L_rbp needs `is_differentiable = "
                             "True` and `score(images01, prompts)`, as CLIPReward and HPSReward have).")
    return funcs


@contextlib.contextmanager
def _without_upstream_deprecation_noise():
    """Hide `_UPSTREAM_DEPRECATIONS` inside `train()` only; the caller's warning filters are restored on exit."""
    with warnings.catch_warnings():
        for message in _UPSTREAM_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


#: decoder-phase counters logged as counts: running totals at their latest value, per-phase counts summed over the
#: logging window (everything else is TRL's window mean)
_RUNNING_TOTALS = ("phases", "decoder_steps")
_WINDOW_COUNTS = ("nonfinite_skipped", "unscored_rollouts")


def describe_lambda_rbp(lambda_rbp: float) -> str:
    return f"on, lambda_rbp={lambda_rbp:g}" if lambda_rbp > 0 else "off, no differentiable reward or lambda_rbp=0"


@contextlib.contextmanager
def _reference_policy(reference: nn.Module | None):
    """While TRL's `__init__` runs, make its reference-model factory return `reference`, our in-memory copy.

    TRL builds the reference with `create_model_from_path(config._name_or_path)`, which fails for a model built in
    memory and would carry the VQ model; everything TRL does with the reference afterwards (dropout, DeepSpeed
    preparation, the EMA `SyncRefModelCallback`) stays TRL's.
    """
    if reference is None:
        yield
        return
    original = grpo_trainer.create_model_from_path
    grpo_trainer.create_model_from_path = lambda *args, **kwargs: reference
    try:
        yield
    finally:
        grpo_trainer.create_model_from_path = original


def _check_launch(args: RankEConfig) -> None:
    """Launch settings that would fail deep inside DeepSpeed or accelerate, refused with the fix."""
    _refuse_fsdp(args)
    uses_deepspeed = bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if uses_deepspeed and several and not torch.cuda.is_available() and args.ddp_backend != "gloo":
        raise ValueError(
            "DeepSpeed on CPU needs the gloo process group, or DeepSpeed fails with a batch-size assertion: add "
            "`--ddp_backend gloo` to the training arguments (e.g. `accelerate launch --config_file "
            "recipes/accelerate/zero2.yaml examples/train_janus.py --recipe ... --ddp_backend gloo`)."
        )


def _refuse_fsdp(args: RankEConfig) -> None:
    uses_fsdp = bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if uses_fsdp:
        raise ValueError(
            "RankEGRPOTrainer does not support FSDP: the VQ decoder trains outside the policy's wrapper, which only "
            "one process, DDP and DeepSpeed ZeRO-2/3 handle. Launch with DeepSpeed ZeRO-3 instead "
            "(recipes/accelerate/zero3.yaml) to shard the policy."
        )


class RankEGRPOTrainer(RankECheckpointing, GRPOTrainer):
    """GRPO on the image tokens of a discrete autoregressive text-to-image model, with RankE decoder co-evolution.

    A drop-in replacement for `trl.GRPOTrainer`:

    Args:
        model: a Hub id, a local path, or a loaded `JanusForConditionalGeneration`.
        reward_funcs: TRL-style callables `f(prompts, completions, **kwargs) -> list[float]`. `completions` holds the
            decoded images, one per prompt row, each a float tensor `(3, H, W)` in `[0, 1]`; `completion_ids` holds
            their codes. The dataset's other columns arrive as keyword arguments. Rewards that also offer a
            differentiable `score(images, prompts)` can drive reward back-propagation in Stage 2.
        args: a [`RankEConfig`].
        train_dataset: a `datasets.Dataset` with a `prompt` column (and an `image` column for Stage 2 and the
            shift diagnostics).
        processing_class: the `JanusProcessor` (as `AutoProcessor` loads it) or its tokenizer.
        rbp_reward_funcs: differentiable rewards (`is_differentiable = True`, `score(images01, prompts)`) that Stage
            2's reward back-propagation L_rbp uses *instead of* the differentiable ones among `reward_funcs`, each
            with weight 1: e.g. a second reward model, so that the reward that is evaluated is not the one the decoder
            is optimised against (ours). None (default): the paper's L_rbp through `reward_funcs`.
    """

    _tag_names = ["trl", "grpo", "ranke", "text-to-image"]

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: RankEConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        rbp_reward_funcs=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model") or "model"
            args = RankEConfig(f"{os.path.basename(str(name).rstrip('/'))}-RankE")
        if not isinstance(args, RankEConfig):
            raise TypeError(f"`args` must be a RankEConfig, got {type(args).__name__}.")
        _check_launch(args)
        check_training_dataset(train_dataset, args)  # before any model loads
        # RankE (max_completion_length, LoRA's reference) and TRL adjust settings on the trainer's own copy.
        args, hub_token = copy.deepcopy(args), args.hub_token  # a copy drops the token (see RankEConfig.__getstate__)
        args.hub_token = hub_token
        if isinstance(model, str):
            model, processing_class = load_policy_model(model, args, processing_class)
        self.processor = processing_class if isinstance(processing_class, ProcessorMixin) else None
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(
                "`processing_class` must be the model's processor (AutoProcessor) or its tokenizer, got "
                f"{type(processing_class).__name__}."
            )
        reward_funcs = check_reward_funcs(reward_funcs)
        self.rbp_reward_funcs = _check_rbp_rewards(rbp_reward_funcs)

        # The policy adapter owns every backbone detail; the VQ model leaves the policy so that neither the
        # policy's optimizer nor its DeepSpeed engine ever owns the decoder (NOTES.md).
        self.policy = make_policy(model, tokenizer, prompt_template=args.prompt_template)
        self.codec = self.policy.prepare_for_training(model)
        self._prepared = True
        try:
            self._set_up(model, reward_funcs, args, train_dataset, eval_dataset, tokenizer, callbacks, optimizers,
                         peft_config)
        finally:
            self._prepared = False
            self.policy.restore_model(model, self.codec)  # the caller's model stays whole until `train()`

    def _set_up(self, model, reward_funcs, args, train_dataset, eval_dataset, tokenizer, callbacks, optimizers,
                peft_config) -> None:
        """Everything `__init__` does with the policy prepared: TRL's `__init__`, the reference, Stage 2."""
        codec, policy = self.codec, self.policy
        if (codec.codebook_size, codec.num_tokens) != (policy.codebook_size, policy.num_image_tokens):
            raise ValueError(
                f"The attached VQ tokenizer has a codebook of {codec.codebook_size} and {codec.num_tokens} codes per "
                f"image, but the policy predicts {policy.codebook_size} codes, {policy.num_image_tokens} per image: "
                "it would draw codes the decoder cannot render. Attach the VQ the policy was trained with."
            )
        if is_zero3_partitioned(self.codec.module):
            # `from_pretrained` under ZeRO-3 partitioned the VQ with the policy; it trains outside the engine.
            self.codec.module = unpartitioned_copy(self.codec.module)
        args.max_completion_length = self.policy.num_image_tokens
        use_peft = peft_config is not None or is_peft_model(model)
        if use_peft:
            peft_config = self._prepare_lora(peft_config, args)

        # The reference policy is a copy of the in-memory policy (same parameters, so the EMA sync works). With LoRA
        # there is none: TRL scores the reference by disabling the adapter.
        needs_ref = args.beta != 0.0 and not use_peft
        reference = unpartitioned_copy(model).eval().requires_grad_(False) if needs_ref else None
        with _reference_policy(reference):
            super().__init__(
                model=model,
                reward_funcs=reward_funcs,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=tokenizer,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )
        self.reward_funcs = [
            f if isinstance(f, nn.Module) or is_async_callable(f) else NamedReward(f, n)
            for f, n in zip(self.reward_funcs, self.reward_func_names, strict=True)
        ]
        self.codec.module.to(self.accelerator.device).eval().requires_grad_(False)
        for func in [*reward_funcs, *(self.rbp_reward_funcs or [])]:  # each rank scores on its own device
            if isinstance(func, OpenClipReward) and func.device.type == "cpu":
                func.to(device=self.accelerator.device)
        self._check_stage2_inputs(args, train_dataset)
        rbp_fns = self.rbp_reward_funcs
        if rbp_fns is None:
            rbp_fns = [getattr(f, "func", f) for f in self.reward_funcs]
        # The paper's L_rbp applies only to differentiable rewards; unset, it follows the rewards (on this copy).
        args.lambda_rbp = resolve_lambda_rbp(args.lambda_rbp, rbp_fns)
        self.rollout_buffer = self.decoder_phase = None
        self._decoder_phases = 0
        self.last_decoder_metrics: dict[str, float] = {}  # the latest phase's, as `run_decoder_phase` returned them
        if args.train_decoder:
            self.rollout_buffer = RolloutBuffer(args.rollout_cache, args.rollout_cache_size)
            self.decoder_phase = DecoderPhase(
                self.codec,
                args,
                reward_fns=rbp_fns,
                reward_weights=self.reward_weights.tolist() if self.rbp_reward_funcs is None else None,
                device=self.accelerator.device,
            )
            self.add_callback(DecoderPhaseCallback(self))
        if self.accelerator.is_main_process:  # the scored distribution is a modelling choice: say it where it shows
            logger.info(
                "RankE: %d image tokens per rollout, codebook %d; sampling: %s (log-probs score the %s "
                "distribution, before top-k/top-p truncation). Policy %s, decoder %s%s.",
                self.policy.num_image_tokens, self.policy.codebook_size, describe_sampling(args.sampling_settings()),
                "CFG-combined" if args.logprob_mode == "guided" else "conditional-branch",
                "on" if args.train_policy else "off", "on" if args.train_decoder else "off",
                f" (reward back-propagation L_rbp: {describe_lambda_rbp(args.lambda_rbp)})" if args.train_decoder else "",
            )
        self._last_rollouts = None  # (images (B,3,H,W) in [0,1], prompts) of the latest batch, for image logging
        self._shift_diagnostics = None
        self._corpus_codes = None
        columns = getattr(train_dataset, "column_names", None) or []
        has_images = train_dataset is not None and args.image_column in columns
        self.corpus = CorpusImages(train_dataset, args.image_column, self.codec.image_size) if has_images else None

    # ------------------------------------------------------------------------------------------------ the model
    def _release_model(self) -> None:
        self._prepared = False
        self.policy.restore_model(self.model, self.codec)

    @contextlib.contextmanager
    def _policy_prepared(self):
        """The policy as RankE trains it (VQ detached, image-code forward installed) inside the block, and the
        caller's model whole again after it, also after an exception. Re-entrant."""
        if self._prepared:
            yield
            return
        codec = self.policy.prepare_for_training(self.model)
        if codec.module is not self.codec.module:
            self.policy.restore_model(self.model, codec)
            raise RuntimeError(
                "The model's VQ tokenizer was replaced after the trainer was built; the trainer co-evolves the one "
                "it was given. Build a new trainer for another tokenizer."
            )
        self._prepared = True
        try:
            yield
        finally:
            self._release_model()

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """TRL's `train`, with `resume_from_checkpoint=True` meaning the newest *complete* checkpoint, the resumed
        checkpoint checked first, and SIGTERM/SIGINT stopping at a step boundary with a checkpoint (`interrupt`)."""
        resume_from_checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        with self._policy_prepared(), stop_on_signals(self), _without_upstream_deprecation_noise():
            return super().train(resume_from_checkpoint, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with self._policy_prepared():
            return super().evaluate(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------ set-up
    @staticmethod
    def _check_stage2_inputs(args: RankEConfig, train_dataset) -> None:
        if not args.train_decoder:
            return
        columns = getattr(train_dataset, "column_names", None) or []
        needs_images = [name for name in ("lambda_rec", "lambda_gan") if getattr(args, name) > 0]
        if needs_images and args.image_column not in columns:
            raise ValueError(
                f"{' and '.join(f'{n}={getattr(args, n)}' for n in needs_images)} need real corpus images, but the "
                f"training set has no {args.image_column!r} column (columns: {columns}). Add an image column, set "
                f"`image_column`, or set {' and '.join(f'{n}=0' for n in needs_images)}."
            )

    def _prepare_lora(self, peft_config, args: RankEConfig):
        """LoRA: confine the adapter to the generation path, and turn off the EMA reference, which LoRA cannot have.

        A `target_modules` of None means the policy adapter's default modules (for Janus: the language model's
        attention and MLP projections, the generation aligner and the generation head); a list names modules within
        that path; a regex string is the user's full control and is kept. Returns the `peft_config` to apply (None
        when the model already is a PEFT model).
        """
        targets = getattr(peft_config, "target_modules", None)
        if peft_config is not None and not isinstance(targets, str):
            peft_config = copy.deepcopy(peft_config)
            peft_config.target_modules = self.policy.lora_target_modules(sorted(targets) if targets else None)
        if args.sync_ref_model and args.beta != 0.0:
            # TRL raises NotImplementedError here: with an adapter there is no reference model to keep an EMA of.
            logger.warning(
                "sync_ref_model=True (the paper's EMA reference) is not available with LoRA: the reference policy is "
                "the base model with the adapter disabled, as in TRL. Continuing with sync_ref_model=False; set it "
                "in the recipe to silence this warning, or train without LoRA for the EMA reference."
            )
            args.sync_ref_model = False
        return peft_config

    # ------------------------------------------------------------------------------------------------ Stage 1
    def _generate_and_score_completions(self, inputs):
        # Corpus images are Stage 2 data, not VLM inputs; TRL would route an `image` column to a processor.
        hidden = {self.args.image_column, "image", "images"}
        inputs = [{k: v for k, v in row.items() if k not in hidden} for row in inputs]
        return super()._generate_and_score_completions(inputs)

    def _generate(self, prompts: list):
        device = self.accelerator.device
        prompt_ids = self.policy.prompt_token_ids(prompts)
        chunk = self.args.generation_chunk_size or len(prompt_ids)
        codes = []
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation
        ) as unwrapped:
            for start in range(0, len(prompt_ids), chunk):
                batch = self.policy.batch_from_ids(prompt_ids[start : start + chunk], device)
                codes.append(
                    self.policy.sample_codes(
                        unwrapped,
                        batch,
                        sampler=self.args.sampler,
                        guidance_scale=self.args.guidance_scale,
                        temperature=self.temperature,
                        top_k=self.top_k or 0,
                        top_p=self.top_p if self.top_p is not None else 1.0,
                    )
                )
        codes = torch.cat(codes)
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            num_tokens = self.accelerator.gather(torch.tensor(codes.numel() + sum(map(len, prompt_ids)), device=device))
            self.state.num_input_tokens_seen += num_tokens.sum().item()
        self._metrics[mode]["num_tokens"] = [self.state.num_input_tokens_seen]
        # Completions stay light-weight strings for TRL's logs; `_calculate_rewards` turns codes into images.
        completions = [f"<image: {codes.size(1)} codes>"] * len(prompts)
        return prompt_ids, codes.tolist(), None, completions, None, {}, None, []

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        codes = torch.tensor(completion_ids_list, dtype=torch.long, device=self.accelerator.device)
        images = self.codec.decode_images(codes, self.args.generation_chunk_size)
        rewards_per_func = super()._calculate_rewards(inputs, prompts, list(images), completion_ids_list)
        self._after_rewards(codes, images, prompts, rewards_per_func)
        return rewards_per_func

    def _after_rewards(self, codes, images, prompts, rewards_per_func) -> None:
        """Record the batch: shift diagnostics and logged samples (and, with a decoder phase, the rollout cache)."""
        mode = "train" if self.model.training else "eval"
        all_codes = gather(codes)
        for key, value in self.shift_diagnostics(all_codes).items():  # the per-batch proxy (`shift/batch_*`)
            self._metrics[mode][key].append(value)
        keep = min(self.args.num_images_to_log, len(images))
        self._last_rollouts = (images[:keep].cpu(), [prompt_text(p) for p in prompts[:keep]])
        if mode == "train" and self.rollout_buffer is not None:
            # Every rank caches the whole (gathered) batch, so groups stay whole and the phase runs in lock-step.
            totals = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
            # As in TRL, a rollout no reward function could score is unscored (NaN), not 0: it takes no part in Stage 2.
            totals[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
            all_prompts = gather_object([prompt_text(p) for p in prompts])
            group_ids = torch.arange(len(all_prompts)) // self.num_generations
            self.rollout_buffer.add(all_codes.cpu(), all_prompts, group_ids, totals.cpu())

    def shift_diagnostics(self, codes: torch.LongTensor) -> dict[str, float]:
        """The per-batch proxy of the Latent Covariate Shift diagnostics (METHOD.md, Appendix C) on rollout codes:
        `shift/batch_token_kl_bits`, `shift/batch_entropy_bits`, `shift/gt_entropy_bits`."""
        if self._shift_diagnostics is None:
            self._shift_diagnostics = self._build_shift_diagnostics()
        return self._shift_diagnostics.batch(codes)

    def _build_shift_diagnostics(self) -> ShiftDiagnostics:
        args, size = self.args, self.policy.codebook_size
        if args.gt_code_stats_path:
            return ShiftDiagnostics.from_file(args.gt_code_stats_path, size, args.diagnostics_smoothing)
        codes = self.corpus_codes(limit=args.diagnostics_max_images)
        if codes is None:
            logger.warning(
                "No ground-truth code statistics: the dataset has no %r column and `gt_code_stats_path` is unset. "
                "Logging the codebook entropy only, without KL(p_theta || p_gt).",
                args.image_column,
            )
            return ShiftDiagnostics(None, size, args.diagnostics_smoothing)
        histogram = CodeHistogram(size).update(codes[: args.diagnostics_max_images])
        if self.accelerator.is_main_process:
            histogram.save(os.path.join(args.output_dir, "gt_code_stats.safetensors"))
        return ShiftDiagnostics(histogram.counts, size, args.diagnostics_smoothing)

    def corpus_codes(self, limit: int | None = None) -> torch.LongTensor | None:
        """Ground-truth codes (M, N) of the dataset's corpus images: its `gt_codes` column when it holds codes of
        this codec, else encoded once by the frozen encoder and cached.

        None when the training set has no image column.
        """
        if self.corpus is None:
            return None
        stale = self._corpus_codes is None or (limit is None and len(self._corpus_codes) < len(self.corpus))
        if stale:  # a curated set's stored `gt_codes` (ranke_trl.data.curate) are used as they are
            self._corpus_codes = stored_codes(self.corpus.dataset, self.codec, limit=limit)
        if stale and self._corpus_codes is None:
            cache = os.path.join(self.args.output_dir, "ranke_cache", f"corpus_codes_{limit or 'all'}.safetensors")
            self._corpus_codes = encode_corpus(
                self.corpus,
                self.codec,
                max_images=limit,
                batch_size=self.args.decoder_batch_size * 4,
                device=self.accelerator.device,
                cache_path=cache if self.accelerator.is_main_process else None,
                show_progress=self.accelerator.is_main_process,
            )
        return self._corpus_codes

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, **kwargs
    ):
        """Per-code log-probs (B, N) of the rollouts under `model` (the wrapped policy, or the reference)."""
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            out = self.policy.code_log_probs(
                model,
                input_ids[rows, :-logits_to_keep],
                attention_mask[rows, :-logits_to_keep],
                input_ids[rows, -logits_to_keep:],
                guidance_scale=self.args.guidance_scale,
                temperature=self.temperature,
                mode=self.args.logprob_mode,
                compute_entropy=compute_entropy,
            )
            logps.append(out.log_probs)
            if compute_entropy:
                entropies.append(out.entropy)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    # ------------------------------------------------------------------------------------------------ Stage 2
    def training_step(self, model, inputs, num_items_in_batch):
        if self.args.train_policy:
            return super().training_step(model, inputs, num_items_in_batch)
        # Decoder-only: rollouts are still drawn, scored and cached, but the policy takes no gradient.
        model.train()
        self._prepare_inputs(inputs)
        self._step += 1
        return torch.zeros((), device=self.accelerator.device)

    def run_decoder_phase(self) -> dict[str, float]:
        """Stage 2: `T_D` decoder steps on the cached rollouts and corpus images; logs and returns the metrics."""
        if self.decoder_phase is None or len(self.rollout_buffer) == 0:
            return {}
        corpus, held_out = None, None
        codes = self.corpus_codes() if self.corpus is not None else None
        if codes is not None:
            held, train = self._corpus_split(len(codes))
            generator = torch.Generator().manual_seed(
                self.args.seed * 7919 + self._decoder_phases * 31 + self.accelerator.process_index
            )
            corpus = corpus_batches(self.corpus, codes, self.args.decoder_batch_size, train, generator)
            held_out = (self.corpus.pixels(held).to(self.accelerator.device), codes[held].to(self.accelerator.device))
        metrics = self.decoder_phase.run(self.rollout_buffer, corpus)
        if held_out is not None:
            metrics["heldout_rec_l1"] = self.decoder_phase.reconstruction_error(*held_out)
        self.rollout_buffer.end_phase()
        self._decoder_phases += 1
        metrics["phases"] = float(self._decoder_phases)
        self.last_decoder_metrics = metrics
        logged = self._metrics["train"]
        for key, value in metrics.items():
            name = f"decoder/{key}"
            if key in _RUNNING_TOTALS:  # logged as themselves, not averaged over the logging window
                logged[name] = [value]
            elif key in _WINDOW_COUNTS:
                logged[name] = [(logged[name][0] if logged[name] else 0.0) + value]
            else:
                logged[name].append(value)
        return metrics

    def _corpus_split(self, size: int) -> tuple[list[int], list[int]]:
        """A fixed held-out batch (the last corpus rows) for the fidelity proxy; Stage 2 trains on the rest."""
        held = min(self.args.decoder_batch_size, size // 2)
        return list(range(size - held, size)), list(range(size - held)) or list(range(size))

    # ------------------------------------------------------------------------------------------------ outputs
    def create_model_card(self, model_name=None, dataset_name=None, tags=None, output_dir=None, **kwargs):
        """Write `README.md`: RankE, the base model, the rewards, the steps, the final metrics, how to load."""
        if not self.is_world_process_zero():
            return
        write_model_card(self, output_dir or self.args.output_dir, dataset_name=dataset_name)

    # ------------------------------------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        every = self.args.log_images_steps
        step = self.state.global_step
        if every and step % every == 0 and self._last_rollouts is not None and self.accelerator.is_main_process:
            images, prompts = self._last_rollouts
            log_image_grid(images, prompts, step, self.args.output_dir, self.args.report_to,
                           self.callback_handler.callbacks, nrow=min(self.num_generations, len(images)))

    def summary(self) -> str:
        """The last logged metrics and where the samples, checkpoints and final model are, for the console."""
        last = {}
        for entry in self.state.log_history:
            last.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
        keys = [k for k in last if k.startswith(("reward", "shift/", "decoder/", "kl", "entropy"))]
        out = self.args.output_dir
        lines = [f"RankE finished {self.state.global_step} steps."]
        lines += [f"  {k:<40} {last[k]:.4g}" for k in sorted(keys)]
        lines.append(f"  final model (policy + co-evolved VQ): {out}")
        if os.path.isdir(os.path.join(out, DECODER_DIR)):
            lines.append(f"  standalone decoder:                   {os.path.join(out, DECODER_DIR)}")
        if os.path.isdir(os.path.join(out, "samples")):
            lines.append(f"  sample grids:                         {os.path.join(out, 'samples')}")
        checkpoints = sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) if os.path.isdir(out) else []
        if checkpoints:
            lines.append(f"  checkpoints:                          {', '.join(checkpoints)}")
        return "\n".join(lines)
