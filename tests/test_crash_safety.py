"""Crash-safe checkpoints: a run killed while saving leaves its previous checkpoint intact and resumable, and a
damaged checkpoint is refused with an error naming the file and the earlier checkpoint to use.

The runs are the tiny one of `interrupt_worker.build_trainer` (decoder phase every step, EMA teacher, EMA reference),
checkpointing every step and keeping one checkpoint (`save_total_limit=1`), so a save that rotated the old checkpoint
away before finishing the new one would leave nothing to resume from.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from unittest import mock

import pytest
import torch
from interrupt_worker import build_trainer, trained_state
from safetensors.torch import load_file, save_file
from transformers import JanusVQVAE
from transformers.trainer_utils import get_last_checkpoint

from ranke_trl import RankEGRPOTrainer
from ranke_trl.checkpointing import DamagedCheckpointError, last_complete_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVERY_STEP = dict(save_strategy="steps", save_steps=1, save_total_limit=1)
RANKE_FILES = ["decoder/model.safetensors", "ema_decoder/model.safetensors", "ranke_stage2.pt", "ref_model.safetensors"]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """3 uninterrupted steps with a checkpoint after each: `(run_dir, state)`, the state being the decoder, policy
    and reference at the end (saving changes none of them: the resumed runs below save too, and end equal)."""
    out = tmp_path_factory.mktemp("straight")
    trainer = build_trainer(str(out), max_steps=3, save_strategy="steps", save_steps=1)
    trainer.train()
    return out, trained_state(trainer)


@pytest.fixture(scope="module")
def straight(saved_run):
    """The decoder, policy and reference after 3 uninterrupted steps."""
    return saved_run[1]


def assert_same_state(expected: dict, trainer: RankEGRPOTrainer) -> None:
    got = trained_state(trainer)
    for part, tensors in expected.items():
        for key, value in tensors.items():
            torch.testing.assert_close(got[part][key], value, atol=1e-5, rtol=1e-4, msg=f"{part}: {key}")


def assert_complete(checkpoint) -> None:
    for name in ["trainer_state.json", "model.safetensors", "optimizer.pt", *RANKE_FILES]:
        assert os.path.isfile(os.path.join(checkpoint, name)), name


# ---------------------------------------------------------------------------------------------- a crash while saving
def fails_while_writing(real, name: str, folder: str = "checkpoint-2"):
    """`real`, a writer taking a path, except that for `name` in `folder` it writes half the file(s), then fails as a
    full disk would."""

    def write(*args, **kwargs):
        path = next((str(a) for a in args if isinstance(a, (str, os.PathLike))), None)
        out = real(*args, **kwargs)
        base, parent = os.path.basename(path or ""), os.path.basename(os.path.dirname(path or ""))
        if path and parent == folder and base.startswith(name):
            files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else [path]
            for file in files:
                with open(file, "r+b") as f:
                    f.truncate(os.path.getsize(file) // 2)
            raise OSError(errno.ENOSPC, "No space left on device (injected)", path)
        return out

    return write


# Each RankE file of a checkpoint and the writer that produces it.
WRITERS = {
    "decoder": (JanusVQVAE, "save_pretrained"),  # through VQCodec.save_pretrained
    "ema_decoder": (JanusVQVAE, "save_pretrained"),
    "ranke_stage2.pt": (torch, "save"),
    "ref_model.safetensors": (sys.modules["safetensors.torch"], "save_file"),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_crash_while_writing_a_ranke_file_leaves_the_previous_checkpoint_resumable(tmp_path, straight, name):
    owner, attribute = WRITERS[name]
    failing = build_trainer(str(tmp_path), max_steps=3, **EVERY_STEP)
    with mock.patch.object(owner, attribute, fails_while_writing(getattr(owner, attribute), name)):
        with pytest.raises(OSError, match="injected"):
            failing.train()

    # The interrupted checkpoint-2 is not marked complete and holds no partial file under its final name ...
    assert not (tmp_path / "checkpoint-2" / "trainer_state.json").exists()
    assert not (tmp_path / "checkpoint-2" / name).exists()
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-2")  # what transformers alone would resume from
    # ... and checkpoint-1 was not rotated away before it: it is whole, and `resume_from_checkpoint=True` takes it.
    assert_complete(tmp_path / "checkpoint-1")
    assert last_complete_checkpoint(str(tmp_path), RANKE_FILES) == str(tmp_path / "checkpoint-1")
    resumed = build_trainer(str(tmp_path), max_steps=3, **EVERY_STEP)
    resumed.train(resume_from_checkpoint=True)
    assert_same_state(straight, resumed)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]
    assert_complete(tmp_path / "checkpoint-3")


def test_a_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_resumable(tmp_path, straight):
    out = tmp_path / "killed"
    command = [sys.executable, os.path.join("tests", "interrupt_worker.py"), "--out", str(out), "--max_steps", "3",
               "--save_steps", "1", "--kill_while_writing", "ranke_stage2.pt", "--kill_at_step", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == -9, done.stderr[-3000:]
    run = out / "run"
    assert [p.name for p in (run / "checkpoint-2").glob("ranke_stage2.pt*")] != ["ranke_stage2.pt"]
    assert not (run / "checkpoint-2" / "trainer_state.json").exists()
    assert_complete(run / "checkpoint-1")

    resumed = build_trainer(str(run), max_steps=3, **EVERY_STEP)
    resumed.train(resume_from_checkpoint="true")  # as `--resume_from_checkpoint true` passes it
    assert_same_state(straight, resumed)
    assert not list((run / "checkpoint-3").glob("*.partial-*")), "leftovers of the killed save are cleaned"


def test_final_output_decoder_is_replaced_atomically(tmp_path):
    trainer = build_trainer(str(tmp_path), max_steps=1)
    trainer.save_model()
    before = load_file(tmp_path / "decoder" / "model.safetensors")
    trainer.codec.module.decoder.conv_in.weight.data.add_(1.0)
    failing = fails_while_writing(JanusVQVAE.save_pretrained, "decoder", folder=tmp_path.name)
    with mock.patch.object(JanusVQVAE, "save_pretrained", failing), pytest.raises(OSError, match="injected"):
        trainer.save_model()
    after = load_file(tmp_path / "decoder" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before), "the previous decoder/ is kept whole"
    assert not list(tmp_path.glob("decoder.partial-*"))


# ---------------------------------------------------------------------------------------------- damaged checkpoints
@pytest.fixture(scope="module")
def two_checkpoints(saved_run, tmp_path_factory):
    """A run directory holding checkpoint-1 and checkpoint-2 (the first 2 steps of the saved 3-step run)."""
    out = tmp_path_factory.mktemp("two_checkpoints")
    for name in ("checkpoint-1", "checkpoint-2"):
        shutil.copytree(saved_run[0] / name, out / name)
    return out


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble_tail(path):
    with open(path, "r+b") as f:
        f.seek(-64, os.SEEK_END)
        f.write(b"\xff" * 64)  # 0xffffffff is a float32 NaN


def _empty(path):
    open(path, "wb").close()


def _nan_in_safetensors(path):
    state = load_file(path)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key].view(-1)[0] = float("nan")
    save_file(state, path)


def _nan_in_pt(path):
    state = torch.load(path, weights_only=True)

    def poison(obj):
        if isinstance(obj, torch.Tensor) and obj.is_floating_point() and obj.numel():
            obj.view(-1)[0] = float("nan")
            return True
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
        return any(poison(v) for v in values)

    assert poison(state)
    torch.save(state, path)


def _garble_json(path):
    with open(path, "a") as f:
        f.write("\x00garbage")


DAMAGE = [
    ("decoder/model.safetensors", _garble_tail, "NaN or infinite"),
    ("decoder/model.safetensors", _truncate, "cannot be read"),
    ("ranke_stage2.pt", _empty, "is empty (0 bytes)"),
    ("ranke_stage2.pt", _truncate, "cannot be read"),
    ("ranke_stage2.pt", _nan_in_pt, "NaN or infinite"),
    ("ref_model.safetensors", _nan_in_safetensors, "NaN or infinite"),
    ("ref_model.safetensors", _truncate, "cannot be read"),
    ("model.safetensors", _nan_in_safetensors, "NaN or infinite"),
    ("model.safetensors", _truncate, "cannot be read"),
    ("optimizer.pt", _truncate, "cannot be read"),
    ("optimizer.pt", _nan_in_pt, "NaN or infinite"),
    ("rng_state.pth", _empty, "is empty (0 bytes)"),
    ("trainer_state.json", _garble_json, "does not parse"),
]


@pytest.mark.parametrize(("name", "damage", "problem"), DAMAGE, ids=[f"{n}-{d.__name__[1:]}" for n, d, _ in DAMAGE])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_earlier_checkpoint(
    tmp_path, two_checkpoints, name, damage, problem
):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    damage(str(out / "checkpoint-2" / name))
    trainer = build_trainer(str(out), max_steps=3)
    never_trained = AssertionError("trained on a damaged checkpoint")
    with mock.patch.object(RankEGRPOTrainer, "training_step", side_effect=never_trained):
        with pytest.raises(DamagedCheckpointError) as caught:
            trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    message = str(caught.value)
    assert name in message and problem in message
    assert f"Resume from the earlier checkpoint {out / 'checkpoint-1'}" in message


def test_resume_true_skips_an_incomplete_checkpoint_and_says_so(tmp_path, two_checkpoints, caplog):
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    os.remove(out / "checkpoint-2" / "trainer_state.json")  # as a kill before transformers marked it complete
    trainer = build_trainer(str(out), max_steps=2)
    with caplog.at_level("INFO", logger="ranke_trl.checkpointing"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 2  # one more step from checkpoint-1
    assert "Skipping" in caplog.text and "checkpoint-2" in caplog.text and "no trainer_state.json" in caplog.text
    assert f"Resuming from {out / 'checkpoint-1'}" in caplog.text


def test_resume_true_without_a_complete_checkpoint_fails_clearly(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    trainer = build_trainer(str(tmp_path), max_steps=1)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_last_complete_checkpoint_needs_a_parseable_trainer_state_and_the_files(tmp_path):
    for step, files in [(1, {"trainer_state.json": "{}", "decoder/model.safetensors": ""}),
                        (2, {"trainer_state.json": "{", "decoder/model.safetensors": ""}),
                        (3, {"trainer_state.json": "{}"})]:
        for name, text in files.items():
            path = tmp_path / f"checkpoint-{step}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")
    assert last_complete_checkpoint(str(tmp_path), required=[]) == str(tmp_path / "checkpoint-3")
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None
