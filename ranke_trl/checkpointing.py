"""Saving and resuming a RankE run: what a checkpoint and the final output hold beyond TRL's files.

`RankECheckpointing` is a mixin of `RankEGRPOTrainer`; each method overrides one `transformers.Trainer` save/load
hook and calls `super()`. A RankE output directory holds:

- the policy with the VQ tokenizer re-attached (`save_pretrained`), so the directory loads as the whole system;
- `decoder/`: the co-evolved VQ tokenizer on its own (also in every checkpoint);
- `sampling_config.json`: the run's sampling settings, the defaults of evaluation and generation;
- in checkpoints only: `ema_decoder/` (the EMA teacher), `ranke_stage2.pt` (discriminator, Stage 2 optimisers,
  rollout cache, counters) and `ref_model.safetensors` (the EMA reference policy, which TRL does not checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

import torch
from torch import nn

from .distributed import gathered, with_submodule_weights
from .sampling import save_sampling

STAGE2_STATE = "ranke_stage2.pt"
REFERENCE_STATE = "ref_model.safetensors"  # the EMA reference policy (sync_ref_model), which TRL does not checkpoint
DECODER_DIR = "decoder"
EMA_DECODER_DIR = "ema_decoder"

logger = logging.getLogger(__name__)


class RankECheckpointing:
    """Save/load overrides of `RankEGRPOTrainer` (a mixin: it relies on the trainer's `policy`, `codec`,
    `decoder_phase`, `rollout_buffer` and `_decoder_phases`)."""

    @property
    def _is_zero3(self) -> bool:
        return self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3

    # ------------------------------------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save the whole co-evolved system: the policy with the VQ re-attached, plus a standalone `decoder/`.

        With LoRA the policy part is the adapter alone (PEFT's `save_pretrained`); the decoder is always whole.
        """
        with self._policy_prepared():
            self._save_system(output_dir or self.args.output_dir, _internal_call)

    def _save_system(self, output_dir: str, _internal_call: bool) -> None:
        # ZeRO-3 gathers the engine's own parameters one module at a time and cannot gather the VQ, which lives
        # outside the engine; `_save` adds its weights to the gathered state dict instead.
        attached = contextlib.nullcontext() if self._is_zero3 else self.policy.codec_attached(self.model, self.codec)
        with attached:
            super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            self.codec.save_pretrained(os.path.join(output_dir, DECODER_DIR))
            save_sampling(self.args.sampling_settings(), output_dir)
            if self.processor is not None:
                self.processor.save_pretrained(output_dir)
            if not _internal_call:
                self.create_model_card(output_dir=output_dir)

    def _save(self, output_dir: str | None = None, state_dict=None):
        if not state_dict:  # one process: `save_pretrained` reads the model with the VQ attached by `save_model`
            return super()._save(output_dir, state_dict)
        module = self.codec.module
        with self.policy.codec_attached(self.model, self.codec):
            return super()._save(output_dir, with_submodule_weights(state_dict, self.model, module))

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
        if self.decoder_phase is None or not self.args.should_save:
            return
        teacher = self.decoder_phase.ema_teacher_module()
        if teacher is not None:
            teacher.save_pretrained(os.path.join(folder, EMA_DECODER_DIR))
        state = {
            "decoder_phase": self.decoder_phase.state_dict(),
            "rollout_buffer": self.rollout_buffer.state_dict(),
            "decoder_phases": self._decoder_phases,
        }
        torch.save(state, os.path.join(folder, STAGE2_STATE))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # transformers copies only top-level weight and config files; the decoder and the card must travel too.
        if self.args.should_save:
            src = os.path.join(checkpoint_folder, DECODER_DIR)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(self.args.output_dir, DECODER_DIR), dirs_exist_ok=True)
            self.create_model_card(output_dir=self.args.output_dir)
        super()._push_from_checkpoint(checkpoint_folder)

    # ------------------------------------------------------------------------------------------------ resuming
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

        path = os.path.join(checkpoint, DECODER_DIR, "model.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing, so the co-evolved decoder cannot be restored. Resume from a checkpoint written by "
                "RankEGRPOTrainer (it saves `decoder/` in every checkpoint)."
            )
        self.codec.module.load_state_dict(load_file(path))  # copied onto the parameters, wherever they are
