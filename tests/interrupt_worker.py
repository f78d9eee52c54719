"""A tiny RankE run in its own process, for the tests that stop one for real (test_signals, test_crash_safety).

    python tests/interrupt_worker.py --out DIR --max_steps 4 [--marker_step 1] [--resume true]
                                     [--kill_while_writing ranke_stage2.pt --kill_at_step 2] [--save_steps 1]
    accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 2 tests/interrupt_worker.py \
        --use_cpu --per_device_train_batch_size 4 --out DIR --marker_step 1

It trains the tiny Janus on the colour squares (CLIP reward, sync'ed EMA reference, a decoder phase every step) in
`DIR/run`. With `--marker_step k` it creates `DIR/step-k` at the end of step k, so the test knows when training is
under way and can send its signal. With `--kill_while_writing NAME` the process SIGKILLs itself half-way through
writing the RankE file NAME of `checkpoint-<kill_at_step>`, as an OOM killer or a node failure would. When training
completes, rank 0 writes `DIR/result.pt` (the decoder, the policy's output layer, the reference's); each rank
writes its process id to `DIR/pid-<rank>`, and, when a signal stopped it, its exit code to `DIR/exit-<rank>`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from unittest import mock

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for tiny_data when run as a script

from tiny_data import colour_squares  # noqa: E402

from ranke_trl import RankEConfig, RankEGRPOTrainer  # noqa: E402
from ranke_trl.interrupt import TrainingInterrupted  # noqa: E402
from ranke_trl.rewards import CLIPReward  # noqa: E402
from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_processor  # noqa: E402

HEAD = "model.generation_head.vision_head.weight"


def build_trainer(output_dir: str, max_steps: int, **overrides) -> RankEGRPOTrainer:
    """The tiny run every process of these tests trains (the same seeds, so runs are comparable)."""
    settings = dict(
        output_dir=output_dir, bf16=False, per_device_train_batch_size=8, num_generations=4, max_steps=max_steps,
        learning_rate=1e-3, decoder_learning_rate=1e-3, discriminator_learning_rate=1e-3, logging_steps=1,
        report_to=[], save_strategy="no", decoder_batch_size=4, lambda_lpips=0.0, log_images_steps=0, seed=0,
        data_seed=0, lr_scheduler_type="constant", sync_ref_model=True, ref_model_sync_steps=1,
        ref_model_mixup_alpha=0.5,
    )
    settings.update(overrides)
    return RankEGRPOTrainer(
        model=build_tiny_janus(seed=0),
        reward_funcs=[CLIPReward.tiny()],
        args=RankEConfig(**settings),
        train_dataset=colour_squares(),
        processing_class=build_tiny_janus_processor(),
    )


def trained_state(trainer: RankEGRPOTrainer) -> dict[str, dict[str, torch.Tensor]]:
    """What the resume-equivalence tests compare: the decoder, the policy's output layer, the EMA reference."""
    return {
        "decoder": {k: v.detach().clone() for k, v in trainer.codec.module.state_dict().items()},
        "policy": {HEAD: trainer.model.state_dict()[HEAD].detach().clone()},
        "reference": {HEAD: trainer.ref_model.state_dict()[HEAD].detach().clone()},
    }


class MarkStep(TrainerCallback):
    def __init__(self, path: str, step: int):
        self.path, self.step = path, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            open(self.path, "w").close()


def killed_while_writing(real, name: str, step: int):
    """`real` (a writer taking a path) that, for `NAME` in `checkpoint-<step>`, writes half the file and SIGKILLs."""

    def write(*args, **kwargs):
        path = next((str(a) for a in args if isinstance(a, (str, os.PathLike))), None)
        if path is None or os.path.basename(os.path.dirname(path)) != f"checkpoint-{step}":
            return real(*args, **kwargs)
        if not os.path.basename(path).startswith(name):
            return real(*args, **kwargs)
        real(*args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    return write


def main():
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--save_steps", type=int, default=0, help="periodic checkpoints (0: none)")
    parser.add_argument("--marker_step", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--kill_while_writing", default=None, help="ranke_stage2.pt: SIGKILL half-way through it")
    parser.add_argument("--kill_at_step", type=int, default=2)
    parser.add_argument("--use_cpu", action="store_true", help="under `accelerate launch`: DDP on gloo")
    parser.add_argument("--per_device_train_batch_size", type=int, default=8)
    known = parser.parse_args()
    settings = dict(per_device_train_batch_size=known.per_device_train_batch_size, use_cpu=known.use_cpu)
    if known.save_steps:
        settings.update(save_strategy="steps", save_steps=known.save_steps, save_total_limit=1)
    trainer = build_trainer(os.path.join(known.out, "run"), known.max_steps, **settings)
    rank = trainer.accelerator.process_index
    with open(os.path.join(known.out, f"pid-{rank}"), "w") as f:
        f.write(str(os.getpid()))
    if known.marker_step:
        trainer.add_callback(MarkStep(os.path.join(known.out, f"step-{known.marker_step}"), known.marker_step))
    kill = contextlib.nullcontext()
    if known.kill_while_writing == "ranke_stage2.pt":
        kill = mock.patch("torch.save", killed_while_writing(torch.save, known.kill_while_writing, known.kill_at_step))
    try:
        with kill:
            trainer.train(resume_from_checkpoint=known.resume)
    except TrainingInterrupted as stop:  # record that this rank stopped cleanly, then exit with its code
        with open(os.path.join(known.out, f"exit-{rank}"), "w") as f:
            f.write(str(stop.code))
        raise
    if rank == 0:
        torch.save(trained_state(trainer), os.path.join(known.out, "result.pt"))


if __name__ == "__main__":
    main()
