"""SIGTERM and SIGINT stop training at the next step boundary with a full checkpoint, then exit with 128 + the signal
number after saying how to resume; a second signal stops at once.

The end-to-end tests send a real SIGTERM to a tiny run in its own process (`tests/interrupt_worker.py`), alone and
under `accelerate launch` on 2 ranks; the SIGINT test raises it inside a tiny run in this process, as Ctrl-C would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from interrupt_worker import build_trainer, trained_state
from transformers import TrainerCallback, TrainerControl, TrainerState

from ranke_trl import interrupt
from ranke_trl.interrupt import StopOnSignal, TrainingInterrupted, signal_on_any_rank, stop_on_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
MAX_STEPS = 4


def interrupt_worker(out, signum: int, launcher: tuple[str, ...] = (sys.executable,), *extra: str,
                     signalled: str | None = None) -> tuple[int, str]:
    """Start a worker, send `signum` once its first step has ended, and return the exit code and the output.

    The signal goes to the launched process, or with `signalled="pid-1"` to the process whose id the worker wrote
    to that file (under `accelerate launch`: rank 1 alone).
    """
    log_path = out / "log.txt"
    out.mkdir(parents=True, exist_ok=True)
    command = [*launcher, os.path.join("tests", "interrupt_worker.py"), "--out", str(out),
               "--max_steps", str(MAX_STEPS), "--marker_step", "1", *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while not (out / "step-1").exists() or (signalled and not (out / signalled).exists()):
                assert proc.poll() is None, f"the worker ended early:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the worker never finished its first step"
                time.sleep(0.05)
            if signalled:
                os.kill(int((out / signalled).read_text()), signum)
            else:
                proc.send_signal(signum)
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    return code, log_path.read_text()


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sigterm")
    code, output = interrupt_worker(out, signal.SIGTERM)
    return out, code, output


def _checkpoints(run_dir) -> list[str]:
    return sorted(p.name for p in run_dir.glob("checkpoint-*"))


def test_sigterm_saves_a_full_checkpoint_at_the_step_boundary_then_exits_143(sigterm_run):
    out, code, output = sigterm_run
    assert code == 143, output[-3000:]
    (checkpoint,) = _checkpoints(out / "run")  # the run saves no periodic checkpoints: this is the signal's
    assert 1 <= int(checkpoint.split("-")[1]) < MAX_STEPS
    for name in ["trainer_state.json", "model.safetensors", "optimizer.pt", "rng_state.pth", "decoder",
                 "ema_decoder", "ranke_stage2.pt", "ref_model.safetensors"]:
        assert (out / "run" / checkpoint / name).exists(), name
    assert not (out / "result.pt").exists(), "train() did not return normally"


def test_sigterm_exit_message_says_how_to_resume(sigterm_run):
    out, _, output = sigterm_run
    (checkpoint,) = _checkpoints(out / "run")
    assert "Training stopped by SIGTERM" in output
    assert f"--resume_from_checkpoint {out / 'run' / checkpoint}" in output
    assert "--resume_from_checkpoint true" in output


def test_resuming_after_sigterm_matches_an_uninterrupted_run(sigterm_run, tmp_path):
    out, _, _ = sigterm_run
    resumed = build_trainer(str(out / "run"), max_steps=MAX_STEPS)
    resumed.train(resume_from_checkpoint="true")  # as `--resume_from_checkpoint true` passes it
    assert resumed.state.global_step == MAX_STEPS
    straight = build_trainer(str(tmp_path), max_steps=MAX_STEPS)
    straight.train()
    expected, got = trained_state(straight), trained_state(resumed)
    for part, tensors in expected.items():
        for key, value in tensors.items():
            torch.testing.assert_close(got[part][key], value, atol=1e-5, rtol=1e-4, msg=f"{part}: {key}")


class SendSignalAtStepEnd(TrainerCallback):
    """Sends `signum` to this process at the end of step 1, as a Ctrl-C during training would."""

    def __init__(self, signum: int):
        self.signum = signum

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            signal.raise_signal(self.signum)


def test_sigint_stops_with_a_checkpoint_and_exits_130(tmp_path, caplog):
    trainer = build_trainer(str(tmp_path / "run"), max_steps=MAX_STEPS)
    trainer.add_callback(SendSignalAtStepEnd(signal.SIGINT))
    with caplog.at_level("WARNING", logger="ranke_trl.interrupt"), pytest.raises(TrainingInterrupted) as caught:
        trainer.train()
    assert caught.value.code == 130  # SystemExit(130): the exit status of a process that does not catch it
    assert "Training stopped by SIGINT" in caplog.text
    (checkpoint,) = _checkpoints(tmp_path / "run")
    assert caught.value.checkpoint == str(tmp_path / "run" / checkpoint)
    assert int(checkpoint.split("-")[1]) < MAX_STEPS


# ---------------------------------------------------------------------------------------------- the handlers
def _stub_trainer(output_dir):
    """What `stop_on_signals` uses of a trainer."""
    callbacks = []
    return SimpleNamespace(
        accelerator=SimpleNamespace(device="cpu", is_main_process=True),
        args=SimpleNamespace(output_dir=str(output_dir)),
        add_callback=callbacks.append, remove_callback=callbacks.remove, callbacks=callbacks,
        _checkpoint_files=lambda: [],
    )


@pytest.fixture
def previous_sigterm_handler():
    """A recording SIGTERM handler installed before the test (as a launcher's or the user's own would be)."""
    received = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, original)


def test_handlers_are_ours_only_inside_train_and_restored_after(tmp_path, previous_sigterm_handler):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    trainer = _stub_trainer(tmp_path)
    with stop_on_signals(trainer):
        assert signal.getsignal(signal.SIGTERM) is not before[0]
        assert signal.getsignal(signal.SIGINT) is not before[1]
        assert len(trainer.callbacks) == 1
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert trainer.callbacks == []


def test_a_signal_asks_for_a_checkpoint_and_a_stop_at_the_next_step_end(tmp_path, previous_sigterm_handler):
    trainer = _stub_trainer(tmp_path)
    with pytest.raises(TrainingInterrupted) as caught:
        with stop_on_signals(trainer) as callback:
            signal.raise_signal(signal.SIGTERM)
            control = TrainerControl()
            callback.on_step_end(None, TrainerState(global_step=7), control)
            assert control.should_save and control.should_training_stop
    assert caught.value.code == 143 and caught.value.checkpoint == str(tmp_path / "checkpoint-7")
    assert previous_sigterm_handler == [], "the first signal is ours alone"


def test_a_second_signal_goes_to_the_previous_handler_at_once(tmp_path, previous_sigterm_handler, monkeypatch):
    monkeypatch.setattr(interrupt, "REPEAT_WINDOW_S", 0.0)
    with pytest.raises(TrainingInterrupted):
        with stop_on_signals(_stub_trainer(tmp_path)):
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert previous_sigterm_handler == [signal.SIGTERM]


def test_a_repeat_within_seconds_is_the_same_signal_delivered_twice(tmp_path, previous_sigterm_handler):
    with pytest.raises(TrainingInterrupted) as caught:
        with stop_on_signals(_stub_trainer(tmp_path)) as callback:
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # e.g. from Slurm and again from the launcher
            callback.on_step_end(None, TrainerState(global_step=2), TrainerControl())
    assert previous_sigterm_handler == [] and caught.value.checkpoint == str(tmp_path / "checkpoint-2")


def test_no_step_boundary_after_the_signal_still_exits_with_its_code(tmp_path, previous_sigterm_handler):
    with pytest.raises(TrainingInterrupted) as caught:
        with stop_on_signals(_stub_trainer(tmp_path)):
            signal.raise_signal(signal.SIGTERM)  # e.g. during the last step's logging, after on_step_end
    assert caught.value.code == 143 and caught.value.checkpoint is None


def _agree(rank: int, world_size: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        callback = StopOnSignal()
        callback.received = signal.SIGTERM if rank == 1 else 0  # only rank 1 was signalled
        control = TrainerControl()
        callback.on_step_end(None, TrainerState(global_step=3), control)
        results[rank] = (control.should_save, control.should_training_stop, signal_on_any_rank(callback.received))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_ranks_agree_to_stop_when_only_one_was_signalled():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    # Forked, not spawned: the ranks need nothing but torch.distributed, and a spawned one re-imports this module.
    mp.start_processes(_agree, args=(2, port, results), nprocs=2, join=True, start_method="fork")
    assert dict(results) == {0: (True, True, signal.SIGTERM), 1: (True, True, signal.SIGTERM)}


@pytest.mark.distributed
def test_sigterm_to_one_rank_stops_every_rank_with_one_checkpoint(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    accelerate = (os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
                  os.path.join("recipes", "accelerate", "ddp.yaml"), "--num_processes", "2", "--main_process_port",
                  str(port))
    code, output = interrupt_worker(
        tmp_path, signal.SIGTERM, accelerate, "--use_cpu", "--per_device_train_batch_size", "4", signalled="pid-1"
    )
    assert code != 0, output[-3000:]
    # Rank 0 was not signalled, yet it stopped at the same step boundary, wrote the checkpoint and said so.
    assert (tmp_path / "exit-0").read_text() == (tmp_path / "exit-1").read_text() == "143", output[-3000:]
    assert "Training stopped by SIGTERM" in output
    (checkpoint,) = _checkpoints(tmp_path / "run")
    for name in ["trainer_state.json", "model.safetensors", "decoder", "ranke_stage2.pt", "ref_model.safetensors"]:
        assert (tmp_path / "run" / checkpoint / name).exists(), name
