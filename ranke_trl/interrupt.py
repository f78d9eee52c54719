"""Stopping on SIGTERM or SIGINT with a checkpoint, instead of dying mid-step (schedulers send SIGTERM before they
preempt a job; Ctrl-C sends SIGINT).

`stop_on_signals(trainer)` wraps `RankEGRPOTrainer.train`. While it runs, the first SIGTERM or SIGINT only sets a
flag; at the next step boundary (`on_step_end`, after the decoder phase of that step) every rank agrees on it (an
all-reduce, so a signal seen by one rank stops all of them together and none hangs in a collective), and the
trainer saves a full checkpoint and stops. `train()` then raises `TrainingInterrupted`, a `SystemExit` with code
128 + the signal number (143 for SIGTERM, 130 for SIGINT), after logging how to resume. A second signal, more than
`REPEAT_WINDOW_S` after the first, stops at once, as the signal would without this module, with no checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A repeat this soon after the first signal is taken for the same one delivered twice (Slurm signals every process of
# a job step, and torchrun forwards the signal it got to its workers); a later one stops at once.
REPEAT_WINDOW_S = 5.0


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal; uncaught, the process exits with `128 + signum` (143 for SIGTERM).

    `checkpoint` is the checkpoint written at the stop (None if the signal came after the last step).
    """

    def __init__(self, signum: int, checkpoint: str | None):
        super().__init__(128 + signum)
        self.signum, self.checkpoint = signum, checkpoint


def signal_on_any_rank(signum: int, device: torch.device | str = "cpu") -> int:
    """The highest signal number any rank received (0: none). A collective under torch.distributed: every rank must
    call it at the same point; a plain pass-through on one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return signum
    flag = torch.tensor([signum], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


class StopOnSignal(TrainerCallback):
    """At each step boundary, asks for a checkpoint and a stop once any rank has received a stop signal."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.received = 0  # the signal number this process received (0: none)
        self.received_at = 0.0
        self.stopped_at_step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        signum = signal_on_any_rank(self.received, self.device)
        if signum and self.stopped_at_step is None:
            self.received, self.stopped_at_step = signum, state.global_step
            control.should_save = control.should_training_stop = True


@contextlib.contextmanager
def stop_on_signals(trainer, signals: tuple[int, ...] = STOP_SIGNALS):
    """Within the block (a `train()` call), SIGTERM and SIGINT stop the trainer at the next step boundary with a
    checkpoint; leaving the block then raises `TrainingInterrupted`. The previous handlers are restored on exit.

    Handlers can only be installed in the main thread; elsewhere the signals keep their usual effect.
    """
    callback = StopOnSignal(trainer.accelerator.device)
    previous = {}

    def handle(signum, frame):
        if callback.received:
            if time.monotonic() - callback.received_at < REPEAT_WINDOW_S:
                return  # the same stop delivered twice, e.g. by Slurm and by the launcher forwarding it
            before = previous.get(signum)  # a second signal: stop now, without a checkpoint
            _restore(previous)
            _deliver(signum, before, frame)
            return
        callback.received, callback.received_at = signum, time.monotonic()
        logger.warning("Received %s: training stops with a checkpoint at the end of this step (send it again, %gs or "
                       "more from now, to stop at once without one).", signal.Signals(signum).name, REPEAT_WINDOW_S)

    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handle) for s in signals}
    else:
        logger.warning("train() runs outside the main thread: SIGTERM/SIGINT will stop it without a checkpoint.")
    trainer.add_callback(callback)
    try:
        yield callback
        # train() returned. A signal after the last step boundary may have reached only some ranks: agree again.
        # (Our handlers stay until the hint is logged: a launcher forwarding the signal late must not cut it off.)
        signum = signal_on_any_rank(callback.received, callback.device)
        if signum:
            raise _interrupted(trainer, signum, callback.stopped_at_step)
    finally:
        _restore(previous)
        trainer.remove_callback(callback)


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    previous.clear()


def _deliver(signum: int, handler, frame) -> None:
    """Give `signum` the effect the `handler` installed before ours would have given it."""
    if callable(handler):
        handler(signum, frame)
    elif handler != signal.SIG_IGN:  # the default action: SIGTERM ends the process
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _interrupted(trainer, signum: int, step: int | None) -> TrainingInterrupted:
    from .checkpointing import last_complete_checkpoint

    name = signal.Signals(signum).name
    output_dir = trainer.args.output_dir
    checkpoint = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}") if step is not None else None
    if trainer.accelerator.is_main_process:
        if checkpoint is not None:
            where, target = f"after step {step}; its checkpoint is {checkpoint}", checkpoint
        else:  # the signal came after the last step boundary: nothing new was saved
            target = last_complete_checkpoint(output_dir, trainer._checkpoint_files())
            where = f"after its last step, too late for a checkpoint; the newest complete one is {target}"
        logger.warning(
            "Training stopped by %s %s. Resume with `--resume_from_checkpoint true` (the newest complete checkpoint "
            "in %s) or `--resume_from_checkpoint %s`; in Python, `trainer.train(resume_from_checkpoint=True)`.",
            name, where, output_dir, target,
        )
    return TrainingInterrupted(signum, checkpoint)
