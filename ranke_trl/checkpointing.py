"""Saving and resuming a RankE run: what a checkpoint and the final output hold beyond TRL's files, written so that
a crash never leaves a checkpoint that looks complete but is not.

`RankECheckpointing` is a mixin of `RankEGRPOTrainer`; each method overrides one `transformers.Trainer` save/load
hook and calls `super()`. A RankE output directory holds:

- the policy with the VQ tokenizer re-attached (`save_pretrained`), so the directory loads as the whole system;
- `decoder/`: the co-evolved VQ tokenizer on its own (also in every checkpoint);
- `sampling_config.json`: the run's sampling settings, the defaults of evaluation and generation;
- in checkpoints only: `ema_decoder/` (the EMA teacher), `ranke_stage2.pt` (discriminator, Stage 2 optimisers,
  rollout cache, counters) and `ref_model.safetensors` (the EMA reference policy, which TRL does not checkpoint).

Crash safety. Each RankE file is written under a temporary name and renamed into place (`write_file_atomically`,
`write_dir_atomically`), and all of them are written inside transformers' `_save_optimizer_and_scheduler`, i.e.
before `trainer_state.json`, which marks a checkpoint complete, and before old checkpoints are rotated away. A kill
at any moment therefore leaves the previous checkpoint intact and the new one without `trainer_state.json`;
`last_complete_checkpoint` skips it. On resume every file read is checked (readable, every tensor finite); a damaged
one raises `DamagedCheckpointError` naming the file and the newest earlier complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable

import torch
from safetensors import SafetensorError
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .distributed import gathered, with_submodule_weights
from .sampling import save_sampling

STAGE2_STATE = "ranke_stage2.pt"
REFERENCE_STATE = "ref_model.safetensors"  # the EMA reference policy (sync_ref_model), which TRL does not checkpoint
DECODER_DIR = "decoder"
EMA_DECODER_DIR = "ema_decoder"
TRAINER_STATE = "trainer_state.json"  # transformers writes it last: a checkpoint without it is incomplete
DECODER_WEIGHTS = os.path.join(DECODER_DIR, "model.safetensors")
_PARTIAL = ".partial-"  # infix of the temporary names; what a kill leaves under them is never read
# What a damaged file raises while transformers reads it (its own errors, e.g. a model mismatch, pass unchanged).
_READ_ERRORS = (EOFError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError,
                SafetensorError)

logger = logging.getLogger(__name__)


class DamagedCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or holds non-finite numbers: the checkpoint is refused."""


# ---------------------------------------------------------------------------------------------------- atomic writes
def write_file_atomically(path: str, write: Callable[[str], object]) -> None:
    """Write the file `path` as `write(tmp)` does, then rename it into place (`os.replace`, atomic on POSIX).

    A crash or an error in `write` leaves the previous `path` (or none), never a partial one.
    """
    tmp = f"{path}{_PARTIAL}{os.getpid()}"
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync(os.path.dirname(path) or ".")


def write_dir_atomically(path: str, write: Callable[[str], object]) -> None:
    """Write the directory `path` as `write(tmp_dir)` does (e.g. a `save_pretrained`), then swap it into place.

    A crash or an error in `write` never leaves a partial directory under `path`: before the swap `path` is the
    previous directory (or absent); during it, for an instant, it is absent and the previous one is `path.partial-*`.
    """
    tmp = f"{path}{_PARTIAL}{os.getpid()}"
    old = f"{tmp}-old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                _fsync(os.path.join(root, name))
        if os.path.lexists(path):
            os.replace(path, old)  # a directory cannot be renamed onto a non-empty one
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync(os.path.dirname(path) or ".")


def _fsync(path: str) -> None:
    """Flush `path` (a file or a directory's entries) to disk, so a power loss cannot undo a rename."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------- completeness
def checkpoint_step(path: str) -> int | None:
    """The step of a `checkpoint-<step>` directory, else None."""
    match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def missing_from_checkpoint(checkpoint: str, required: Iterable[str] = (DECODER_WEIGHTS,)) -> list[str]:
    """What keeps `checkpoint` from being complete: a missing or unparseable `trainer_state.json` (written last) or a
    missing file of `required` (paths relative to the checkpoint). Empty when it is complete."""
    problems = []
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE), encoding="utf-8") as f:
            json.load(f)
    except FileNotFoundError:
        problems.append(f"no {TRAINER_STATE}")
    except (OSError, ValueError):
        problems.append(f"{TRAINER_STATE} does not parse")
    problems += [f"no {name}" for name in required if not os.path.exists(os.path.join(checkpoint, name))]
    return problems


def last_complete_checkpoint(
    output_dir: str, required: Iterable[str] = (DECODER_WEIGHTS,), before_step: int | None = None
) -> str | None:
    """The newest complete `checkpoint-<step>` in `output_dir` (see `missing_from_checkpoint`), or None.

    transformers' `get_last_checkpoint` takes the highest step, complete or not; a run killed while saving leaves
    exactly such a checkpoint. `before_step` limits the search to older checkpoints.
    """
    if not os.path.isdir(output_dir):
        return None
    required = list(required)
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        step = checkpoint_step(name)
        if step is not None and os.path.isdir(path) and (before_step is None or step < before_step):
            found.append((step, path))
    for step, path in sorted(found, reverse=True):
        problems = missing_from_checkpoint(path, required)
        if not problems:
            return path
        logger.warning("Skipping %s: it is incomplete (%s), probably written by a run killed while saving.",
                       path, ", ".join(problems))
    return None


# ---------------------------------------------------------------------------------------------------- damage checks
def _first_nonfinite(obj, name: str = "") -> str | None:
    """The key path of the first floating-point tensor in `obj` (nested dicts, lists, tuples) holding NaN or inf."""
    if isinstance(obj, torch.Tensor):
        bad = obj.is_floating_point() and obj.numel() > 0 and not bool(torch.isfinite(obj.detach()).all())
        return name or "tensor" if bad else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _first_nonfinite(value, f"{name}.{key}" if name else str(key))
        if found is not None:
            return found
    return None


def _policy_weights_name(checkpoint: str) -> str:
    """The file (or DeepSpeed folder) the policy's weights are resumed from, for error messages."""
    names = ["adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
    names += sorted(n for n in os.listdir(checkpoint) if n.startswith("global_step"))
    return next((n for n in names if os.path.exists(os.path.join(checkpoint, n))), "the policy weights")


def _begin_checkpoint(folder: str) -> None:
    """A checkpoint being rewritten is incomplete until transformers writes `trainer_state.json` again; what a killed
    save left under temporary names goes."""
    if not os.path.isdir(folder):
        return
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, TRAINER_STATE))
    for name in os.listdir(folder):
        if _PARTIAL in name:
            path = os.path.join(folder, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


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
            write_dir_atomically(os.path.join(output_dir, DECODER_DIR), self.codec.save_pretrained)
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
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            _begin_checkpoint(folder)
        if self.args.save_only_model:  # transformers then skips `_save_optimizer_and_scheduler`
            self._save_stage2_files(folder)
        super()._save_checkpoint(model, trial)  # policy, decoder/, optimizer (+ RankE), then the marker, then rotation

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # Here, not after `super()._save_checkpoint`: that has already marked the checkpoint complete and deleted
        # the older ones, so a kill while writing these would leave no resumable checkpoint.
        super()._save_optimizer_and_scheduler(output_dir)
        self._save_stage2_files(output_dir)

    def _save_stage2_files(self, folder: str) -> None:
        """`ref_model.safetensors`, `ema_decoder/` and `ranke_stage2.pt`, each written atomically. Every rank calls
        it (the reference's ZeRO-3 gather is collective); only the saving process writes."""
        if self.args.should_save:
            os.makedirs(folder, exist_ok=True)
        reference = self._ema_reference()
        if reference is not None:  # it has moved away from the initial policy; resuming must not reset it
            from safetensors.torch import save_file

            with gathered(reference):
                if self.args.should_save:
                    state = {k: v.detach().cpu().clone() for k, v in reference.state_dict().items()}
                    write_file_atomically(os.path.join(folder, REFERENCE_STATE), lambda tmp: save_file(state, tmp))
        if self.decoder_phase is None or not self.args.should_save:
            return
        teacher = self.decoder_phase.ema_teacher_module()
        if teacher is not None:
            write_dir_atomically(os.path.join(folder, EMA_DECODER_DIR), teacher.save_pretrained)
        state = {
            "decoder_phase": self.decoder_phase.state_dict(),
            "rollout_buffer": self.rollout_buffer.state_dict(),
            "decoder_phases": self._decoder_phases,
        }
        write_file_atomically(os.path.join(folder, STAGE2_STATE), lambda tmp: torch.save(state, tmp))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # transformers copies only top-level weight and config files; the decoder and the card must travel too.
        if self.args.should_save:
            src = os.path.join(checkpoint_folder, DECODER_DIR)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(self.args.output_dir, DECODER_DIR), dirs_exist_ok=True)
            self.create_model_card(output_dir=self.args.output_dir)
        super()._push_from_checkpoint(checkpoint_folder)

    # ------------------------------------------------------------------------------------------------ resuming
    def _checkpoint_files(self) -> list[str]:
        """The RankE files (relative paths) each checkpoint of this run holds and a resume needs."""
        files = [DECODER_WEIGHTS]
        if self._ema_reference() is not None:
            files.append(REFERENCE_STATE)
        if self.decoder_phase is not None:
            files.append(STAGE2_STATE)
            if self.decoder_phase.ema_teacher_module() is not None:
                files.append(os.path.join(EMA_DECODER_DIR, "model.safetensors"))
        return files

    def _checkpoint_to_resume(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """The checkpoint `train(resume_from_checkpoint=...)` resumes from, checked to be complete and readable.

        True (or "true", as the command line gives it) means the newest *complete* checkpoint in `output_dir`.
        """
        value = resume_from_checkpoint
        if isinstance(value, str) and value.lower() == "true" and not os.path.isdir(value):
            value = True
        if value is None or value is False:
            return None
        if value is True:
            value = last_complete_checkpoint(self.args.output_dir, self._checkpoint_files())
            if value is None:
                raise ValueError(f"resume_from_checkpoint=True, but {self.args.output_dir} holds no complete "
                                 "checkpoint.")
            logger.info("Resuming from %s, the newest complete checkpoint.", value)
        value = str(value)
        if not os.path.isdir(value):
            raise FileNotFoundError(f"resume_from_checkpoint={value!r} is not a directory.")
        problems = missing_from_checkpoint(value, self._checkpoint_files())
        if problems:
            raise self._damaged(value, f"it is incomplete ({', '.join(problems)}), probably written by a run killed "
                                       "while saving")
        from safetensors import safe_open

        for name in sorted(n for n in os.listdir(value) if n.endswith(".safetensors")):
            with self._reading(value, name):  # a truncated or garbled header, before anything is loaded
                safe_open(os.path.join(value, name), "pt").keys()
        return value

    def _damaged(self, checkpoint: str, problem: str) -> DamagedCheckpointError:
        parent = os.path.dirname(os.path.normpath(checkpoint))
        earlier = last_complete_checkpoint(parent, self._checkpoint_files(), before_step=checkpoint_step(checkpoint))
        advice = (
            f"Resume from the earlier checkpoint {earlier} instead (pass its path as resume_from_checkpoint, or "
            f"delete {checkpoint})"
            if earlier
            else f"{parent} holds no earlier complete checkpoint: start the run again"
        )
        return DamagedCheckpointError(f"Checkpoint {checkpoint} is damaged, so training will not resume from it: "
                                      f"{problem}. {advice}.")

    @contextlib.contextmanager
    def _reading(self, checkpoint: str, name: str, errors: tuple[type[BaseException], ...] = (Exception,)):
        """Turn a failure to read `checkpoint/name` into a `DamagedCheckpointError` naming the file."""
        path = os.path.join(checkpoint, name)
        try:
            yield
        except DamagedCheckpointError:
            raise
        except errors as err:
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                raise self._damaged(checkpoint, f"{path} is empty (0 bytes)") from err
            detail = f"{type(err).__name__}: {err}".rstrip(": ")
            raise self._damaged(checkpoint, f"{path} cannot be read ({detail})") from err

    def _check_finite(self, checkpoint: str, name: str, state) -> None:
        where = _first_nonfinite(state)
        if where is not None:
            raise self._damaged(checkpoint, f"{os.path.join(checkpoint, name)} holds NaN or infinite values ({where})")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # The checkpoint's weights hold the VQ model too (saved attached); load them with it attached.
        name = _policy_weights_name(resume_from_checkpoint)
        with self.policy.codec_attached(self.model, self.codec):
            with self._reading(resume_from_checkpoint, name, _READ_ERRORS):
                super()._load_from_checkpoint(resume_from_checkpoint, model)
            self._check_finite(resume_from_checkpoint, name, dict((model or self.model).named_parameters()))

    def _load_rng_state(self, checkpoint):
        name = f"rng_state_{self.args.process_index}.pth" if self.args.world_size > 1 else "rng_state.pth"
        with self._reading(checkpoint or "", name, _READ_ERRORS):
            super()._load_rng_state(checkpoint)

    def _load_scaler(self, checkpoint):
        with self._reading(checkpoint or "", "scaler.pt", _READ_ERRORS):
            super()._load_scaler(checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        if self.is_deepspeed_enabled:  # `deepspeed_load_checkpoint` loaded the policy (ZeRO-3: check this partition)
            params = {n: getattr(p, "ds_tensor", p) for n, p in self.model.named_parameters()}
            self._check_finite(checkpoint, _policy_weights_name(checkpoint), params)
        with self._reading(checkpoint, "optimizer.pt (or scheduler.pt)", _READ_ERRORS):
            super()._load_optimizer_and_scheduler(checkpoint)
        if not self.is_deepspeed_enabled:
            self._check_finite(checkpoint, "optimizer.pt", self.optimizer.state_dict())
        self._load_ema_reference(checkpoint)
        if self.decoder_phase is None:
            return
        path = os.path.join(checkpoint, STAGE2_STATE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{checkpoint} has no {STAGE2_STATE}: it was not written by a RankE run with train_decoder=True, so "
                "the decoder phase cannot resume from it."
            )
        self._load_decoder_weights(checkpoint)
        with self._reading(checkpoint, STAGE2_STATE):
            state = torch.load(path, map_location="cpu", weights_only=True)
        self._check_finite(checkpoint, STAGE2_STATE, state)
        self.decoder_phase.load_state_dict(state["decoder_phase"])
        self.rollout_buffer.load_state_dict(state["rollout_buffer"])
        self._decoder_phases = state["decoder_phases"]

    def _load_tensors(self, checkpoint: str, name: str) -> dict[str, torch.Tensor]:
        """The tensors of `checkpoint/name` (a safetensors file), checked to be readable and finite."""
        from safetensors.torch import load_file

        with self._reading(checkpoint, name):
            state = load_file(os.path.join(checkpoint, name))
        self._check_finite(checkpoint, name, state)
        return state

    def _load_ema_reference(self, checkpoint: str) -> None:
        reference = self._ema_reference()
        if reference is None:
            return
        if not os.path.isfile(os.path.join(checkpoint, REFERENCE_STATE)):
            logger.warning(
                f"{checkpoint} has no {REFERENCE_STATE} (it predates reference checkpointing or ran without "
                "sync_ref_model): the EMA reference policy restarts from the initial model."
            )
            return
        state = self._load_tensors(checkpoint, REFERENCE_STATE)
        with gathered(reference, modifier_rank=0), torch.no_grad():
            reference.load_state_dict(state)

    def _load_decoder_weights(self, checkpoint: str) -> None:
        """Restore the co-evolved VQ from the checkpoint's `decoder/`, in place (the optimisers hold its parameters).

        One process restores it with the policy's weights too; DeepSpeed restores only its engine's module, and a
        LoRA checkpoint's weights are the adapter's, so `decoder/` is where the decoder always comes from.
        """
        path = os.path.join(checkpoint, DECODER_WEIGHTS)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing, so the co-evolved decoder cannot be restored. Resume from a checkpoint written by "
                "RankEGRPOTrainer (it saves `decoder/` in every checkpoint)."
            )
        # copied onto the parameters, wherever they are
        self.codec.module.load_state_dict(self._load_tensors(checkpoint, DECODER_WEIGHTS))
