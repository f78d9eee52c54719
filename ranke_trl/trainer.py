"""`RankEGRPOTrainer`: TRL's `GRPOTrainer` on image tokens (Stage 1, the E-step), with the decoder phase (Stage 2,
the M-step) run at phase boundaries.

Overrides, each as small as it can be:
- `_generate`: CFG rollouts with the policy adapter's sampler; completions are codes.
- `_calculate_rewards`: decodes the codes with the *current* decoder and hands images to the reward functions.
- `_get_per_token_logps_and_entropies`: teacher-forced code log-probs through the wrapped model.
Everything else (advantages, the clipped loss, KL, logging, the EMA reference callback) is TRL's.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
from collections.abc import Callable

import torch
from accelerate.utils import gather, gather_object, is_peft_model
from torch import nn
from transformers import PreTrainedTokenizerBase, ProcessorMixin
from trl import GRPOTrainer
from trl.models import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import disable_dropout_in_model, get_callable_name, is_async_callable

from .config import RankEConfig
from .corpus import CorpusImages, encode_corpus
from .decoder import DecoderPhase
from .diagnostics import CodeHistogram, ShiftDiagnostics
from .distributed import gathered, is_zero3_partitioned, unpartitioned_copy, with_submodule_weights
from .hub import write_model_card
from .image_logging import log_image_grid
from .policy import load_policy_model, make_policy
from .rewards import OpenClipReward, prompt_text
from .rollout_buffer import RolloutBuffer
from .schedule import DecoderPhaseCallback, corpus_batches

STAGE2_STATE = "ranke_stage2.pt"
REFERENCE_STATE = "ref_model.safetensors"  # the EMA reference policy (sync_ref_model), which TRL does not checkpoint

logger = logging.getLogger(__name__)


class _NamedReward:
    """Wraps a reward function so an exception or a bad return names the reward that failed."""

    def __init__(self, func: Callable, name: str):
        self.func, self.__name__ = func, name

    def __getattr__(self, item):  # expose `score`, `is_differentiable`, ... of the wrapped reward
        return getattr(self.func, item)

    def __call__(self, *args, **kwargs):
        try:
            out = self.func(*args, **kwargs)
        except Exception as err:
            raise RuntimeError(f"Reward function '{self.__name__}' raised {type(err).__name__}: {err}") from err
        if isinstance(out, torch.Tensor):
            out = out.detach().float().cpu().tolist()
        if not isinstance(out, (list, tuple)):
            raise TypeError(
                f"Reward function '{self.__name__}' returned {type(out).__name__}; it must return a list of floats, "
                "one per image."
            )
        return list(out)


class RankEGRPOTrainer(GRPOTrainer):
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
    ):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model") or "model"
            args = RankEConfig(f"{os.path.basename(str(name).rstrip('/'))}-RankE")
        if not isinstance(args, RankEConfig):
            raise TypeError(f"`args` must be a RankEConfig, got {type(args).__name__}.")
        if isinstance(model, str):
            model, processing_class = load_policy_model(model, args, processing_class)
        self.processor = processing_class if isinstance(processing_class, ProcessorMixin) else None
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(
                "`processing_class` must be the model's processor (AutoProcessor) or its tokenizer, got "
                f"{type(processing_class).__name__}."
            )
        reward_funcs = self._check_reward_funcs(reward_funcs)

        # The policy adapter owns every backbone detail; the VQ model leaves the policy so that neither the
        # policy's optimizer nor its DeepSpeed engine ever owns the decoder (NOTES.md).
        self.policy = make_policy(model, tokenizer, prompt_template=args.prompt_template)
        self.codec = self.policy.prepare_for_training(model)
        if is_zero3_partitioned(self.codec.module):
            # `from_pretrained` under ZeRO-3 partitioned the VQ with the policy; it trains outside the engine.
            self.codec.module = unpartitioned_copy(self.codec.module)
        args.max_completion_length = self.policy.num_image_tokens
        use_peft = peft_config is not None or is_peft_model(model)
        if use_peft:
            peft_config = self._prepare_lora(peft_config, args)

        # TRL would rebuild the reference from `config._name_or_path`, which fails for in-memory models and would
        # carry the VQ model; build it here from the policy instead (same parameters, so SyncRefModel's EMA works).
        # With LoRA there is none: TRL scores the reference by disabling the adapter.
        beta, sync_ref = args.beta, args.sync_ref_model
        needs_ref = beta != 0.0 and not use_peft
        ref_model = unpartitioned_copy(model).eval().requires_grad_(False) if needs_ref else None
        args.beta, args.sync_ref_model = (0.0, False) if needs_ref else (beta, sync_ref)
        try:
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
        finally:
            args.beta, args.sync_ref_model = beta, sync_ref
        self.beta = beta
        self.reward_funcs = [
            f if isinstance(f, nn.Module) or is_async_callable(f) else _NamedReward(f, n)
            for f, n in zip(self.reward_funcs, self.reward_func_names, strict=True)
        ]
        if ref_model is not None:
            self._setup_ref_model(ref_model, sync_ref)

        self.codec.module.to(self.accelerator.device).eval().requires_grad_(False)
        for func in reward_funcs:  # each rank scores on its own device, not on the CPU a reward was built on
            if isinstance(func, OpenClipReward) and func.device.type == "cpu":
                func.to(device=self.accelerator.device)
        self._check_stage2_inputs(args, train_dataset)
        self.rollout_buffer = self.decoder_phase = None
        self._decoder_phases = 0
        if args.train_decoder:
            self.rollout_buffer = RolloutBuffer(args.rollout_cache, args.rollout_cache_size)
            self.decoder_phase = DecoderPhase(
                self.codec,
                args,
                reward_fns=[getattr(f, "func", f) for f in self.reward_funcs],
                reward_weights=self.reward_weights.tolist(),
                device=self.accelerator.device,
            )
            self.add_callback(DecoderPhaseCallback(self))
        if self.accelerator.is_main_process:  # the scored distribution is a modelling choice: say it where it shows
            print(
                f"RankE: {self.policy.num_image_tokens} image tokens per rollout, codebook {self.policy.codebook_size}, "
                f"CFG {args.guidance_scale:g}; GRPO log-probs score the {args.logprob_mode} distribution "
                f"({'CFG-combined' if args.logprob_mode == 'guided' else 'conditional branch'}, temperature "
                f"{args.temperature:g}, before top-k/top-p truncation). Modes: policy {'on' if args.train_policy else 'off'}, "
                f"decoder {'on' if args.train_decoder else 'off'}."
            )
        self._last_rollouts = None  # (images (B,3,H,W) in [0,1], prompts) of the latest batch, for image logging
        self._shift_diagnostics = None
        self._corpus_codes = None
        has_images = train_dataset is not None and args.image_column in getattr(train_dataset, "column_names", [])
        self.corpus = CorpusImages(train_dataset, args.image_column, self.codec.image_size) if has_images else None

    # ------------------------------------------------------------------------------------------------ set-up
    @staticmethod
    def _check_reward_funcs(reward_funcs):
        if reward_funcs is None:
            raise ValueError("RankEGRPOTrainer needs at least one reward function scoring images.")
        reward_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        for func in reward_funcs:
            if isinstance(func, (str, nn.Module)):
                raise TypeError(
                    f"Reward {get_callable_name(func) if callable(func) else func!r} is a model or a model id; TRL "
                    "would treat it as a text classifier. Image rewards must be plain callables "
                    "`f(prompts, completions, **kwargs) -> list[float]` (they may hold a model), e.g. "
                    "`ranke_trl.rewards.CLIPReward`."
                )
            if not callable(func):
                raise TypeError(f"Reward function {func!r} is not callable.")
        return reward_funcs

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

    def _setup_ref_model(self, ref_model: nn.Module, sync_ref: bool) -> None:
        if self.args.disable_dropout:
            disable_dropout_in_model(ref_model)
        if self.is_deepspeed_enabled:
            self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
        else:
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        if sync_ref:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

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
                    self.policy.sample(
                        unwrapped,
                        batch,
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
        for key, value in self.shift_diagnostics(all_codes).items():
            self._metrics[mode][key].append(value)
        keep = min(self.args.num_images_to_log, len(images))
        self._last_rollouts = (images[:keep].cpu(), [prompt_text(p) for p in prompts[:keep]])
        if mode == "train" and self.rollout_buffer is not None:
            # Every rank caches the whole (gathered) batch, so groups stay whole and the phase runs in lock-step.
            totals = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
            all_prompts = gather_object([prompt_text(p) for p in prompts])
            group_ids = torch.arange(len(all_prompts)) // self.num_generations
            self.rollout_buffer.add(all_codes.cpu(), all_prompts, group_ids, totals.cpu())

    def shift_diagnostics(self, codes: torch.LongTensor) -> dict[str, float]:
        """Latent Covariate Shift diagnostics of a batch of rollout codes (METHOD.md, Appendix C)."""
        if self._shift_diagnostics is None:
            self._shift_diagnostics = self._build_shift_diagnostics()
        return self._shift_diagnostics(codes)

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
        """Ground-truth codes (M, N) of the dataset's corpus images, encoded once by the frozen encoder and cached.

        None when the training set has no image column.
        """
        if self.corpus is None:
            return None
        if self._corpus_codes is None or (limit is None and len(self._corpus_codes) < len(self.corpus)):
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
        for key, value in metrics.items():
            self._metrics["train"][f"decoder/{key}"].append(value)
        return metrics

    def _corpus_split(self, size: int) -> tuple[list[int], list[int]]:
        """A fixed held-out batch (the last corpus rows) for the fidelity proxy; Stage 2 trains on the rest."""
        held = min(self.args.decoder_batch_size, size // 2)
        return list(range(size - held, size)), list(range(size - held)) or list(range(size))

    # ------------------------------------------------------------------------------------------------ saving
    @property
    def _is_zero3(self) -> bool:
        return self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the whole co-evolved system: the policy with the VQ re-attached, plus a standalone `decoder/`.

        With LoRA the policy part is the adapter alone (PEFT's `save_pretrained`); the decoder is always whole.
        """
        output_dir = output_dir or self.args.output_dir
        # ZeRO-3 gathers the engine's own parameters one module at a time and cannot gather the VQ, which lives
        # outside the engine; `_save` adds its weights to the gathered state dict instead.
        attached = contextlib.nullcontext() if self._is_zero3 else self.policy.codec_attached(self.model, self.codec)
        with attached:
            super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.codec.module.save_pretrained(os.path.join(output_dir, "decoder"))
            if self.processor is not None:
                self.processor.save_pretrained(output_dir)
            if not _internal_call:
                self.create_model_card(output_dir=output_dir)

    def _save(self, output_dir: str | None = None, state_dict=None):
        if not state_dict:  # one process: `save_pretrained` reads the model with the VQ attached by `save_model`
            return super()._save(output_dir, state_dict)
        with self.policy.codec_attached(self.model, self.codec):
            return super()._save(output_dir, with_submodule_weights(state_dict, self.model, self.codec.module))

    def _ema_reference(self) -> nn.Module | None:
        """The EMA reference policy (unwrapped) when the run keeps one (`sync_ref_model`), else None."""
        if getattr(self, "ref_model", None) is None or not self.args.sync_ref_model:
            return None
        return self.accelerator.unwrap_model(self.ref_model)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        reference = self._ema_reference()
        if reference is not None:  # it has moved away from the initial policy; resuming must not reset it
            from safetensors.torch import save_file

            with gathered(reference):  # collective under ZeRO-3; only the saving process copies the weights
                if self.args.should_save:
                    state = {k: v.detach().cpu().clone() for k, v in reference.state_dict().items()}
                    save_file(state, os.path.join(folder, REFERENCE_STATE))
        if self.decoder_phase is None:
            return
        if self.args.should_save:
            teacher = self.decoder_phase.ema_teacher_module()
            if teacher is not None:
                teacher.save_pretrained(os.path.join(folder, "ema_decoder"))
            state = {
                "decoder_phase": self.decoder_phase.state_dict(),
                "rollout_buffer": self.rollout_buffer.state_dict(),
                "decoder_phases": self._decoder_phases,
            }
            torch.save(state, os.path.join(folder, STAGE2_STATE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # The checkpoint's weights hold the VQ model too (saved attached); load them with it attached.
        with self.policy.codec_attached(self.model, self.codec):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_ema_reference(checkpoint)
        if checkpoint is None or self.decoder_phase is None:
            return
        path = os.path.join(checkpoint, STAGE2_STATE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{checkpoint} has no {STAGE2_STATE}: it was not written by a RankE run with train_decoder=True, so "
                "the decoder phase cannot resume from it."
            )
        self._load_decoder_weights(checkpoint)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.decoder_phase.load_state_dict(state["decoder_phase"])
        self.rollout_buffer.load_state_dict(state["rollout_buffer"])
        self._decoder_phases = state["decoder_phases"]

    def _load_ema_reference(self, checkpoint: str) -> None:
        reference = self._ema_reference()
        if reference is None:
            return
        path = os.path.join(checkpoint, REFERENCE_STATE)
        if not os.path.isfile(path):
            logger.warning(
                f"{checkpoint} has no {REFERENCE_STATE} (it predates reference checkpointing or ran without "
                "sync_ref_model): the EMA reference policy restarts from the initial model."
            )
            return
        from safetensors.torch import load_file

        state = load_file(path)
        with gathered(reference, modifier_rank=0), torch.no_grad():
            reference.load_state_dict(state)

    def _load_decoder_weights(self, checkpoint: str) -> None:
        """Restore the co-evolved VQ from the checkpoint's `decoder/`, in place (the optimisers hold its parameters).

        One process restores it with the policy's weights too; DeepSpeed restores only its engine's module, and a
        LoRA checkpoint's weights are the adapter's, so `decoder/` is where the decoder always comes from.
        """
        from safetensors.torch import load_file

        path = os.path.join(checkpoint, "decoder", "model.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing, so the co-evolved decoder cannot be restored. Resume from a checkpoint written by "
                "RankEGRPOTrainer (it saves `decoder/` in every checkpoint)."
            )
        self.codec.module.load_state_dict(load_file(path))  # copied onto the parameters, wherever they are

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # transformers copies only top-level weight and config files; the decoder and the card must travel too.
        if self.args.should_save:
            for sub in ("decoder",):
                src = os.path.join(checkpoint_folder, sub)
                if os.path.isdir(src):
                    shutil.copytree(src, os.path.join(self.args.output_dir, sub), dirs_exist_ok=True)
            self.create_model_card(output_dir=self.args.output_dir)
        super()._push_from_checkpoint(checkpoint_folder)

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
            log_image_grid(
                images, prompts, step, self.args.output_dir, self.args.report_to, self.callback_handler.callbacks
            )

    def print_summary(self) -> None:
        """Print the last logged metrics and where the samples, checkpoints and final model are (main process)."""
        if not self.accelerator.is_main_process:
            return
        last = {}
        for entry in self.state.log_history:
            last.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
        keys = [k for k in last if k.startswith(("reward", "shift/", "decoder/", "kl", "entropy"))]
        out = self.args.output_dir
        lines = [f"RankE finished {self.state.global_step} steps."]
        lines += [f"  {k:<40} {last[k]:.4g}" for k in sorted(keys)]
        lines.append(f"  final model (policy + co-evolved VQ): {out}")
        if os.path.isdir(os.path.join(out, "decoder")):
            lines.append(f"  standalone decoder:                   {os.path.join(out, 'decoder')}")
        if os.path.isdir(os.path.join(out, "samples")):
            lines.append(f"  sample grids:                         {os.path.join(out, 'samples')}")
        checkpoints = sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) if os.path.isdir(out) else []
        if checkpoints:
            lines.append(f"  checkpoints:                          {', '.join(checkpoints)}")
        print("\n".join(lines))
