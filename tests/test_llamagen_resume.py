"""Resuming RankE on a tiny LlamaGen: 2 steps, a checkpoint, then 1 resumed step in a fresh trainer end where 3
uninterrupted steps end (policy, EMA reference policy and co-evolved decoder)."""

import torch
from tiny_data import colour_squares
from transformers import TrainerCallback

from ranke_trl import RankEConfig, RankEGRPOTrainer
from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen, build_tiny_llamagen_processor
from ranke_trl.rewards import CLIPReward


def _trainer(output_dir, **overrides):
    args = dict(
        output_dir=str(output_dir),
        bf16=False,
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=3,
        learning_rate=1e-3,
        decoder_learning_rate=1e-3,
        discriminator_learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        decoder_batch_size=4,
        lambda_lpips=0.0,  # LPIPS needs ImageNet weights, unavailable offline
        log_images_steps=0,
        guidance_scale=7.5,
        seed=0,
        data_seed=0,
        lr_scheduler_type="constant",  # so a run stopped early follows the same schedule as a full one
        sync_ref_model=True,  # the EMA reference moves every step, so a resume must restore it too
        ref_model_sync_steps=1,
        ref_model_mixup_alpha=0.5,
    )
    args.update(overrides)
    return RankEGRPOTrainer(
        model=build_tiny_llamagen(seed=0),
        reward_funcs=[CLIPReward.tiny()],
        args=RankEConfig(**args),
        train_dataset=colour_squares(),
        processing_class=build_tiny_llamagen_processor(),
    )


class _RecordResume(TrainerCallback):
    """The step and `lm_head` weight training (re)starts from, and how many steps this run took."""

    def __init__(self, trainer):
        self.trainer, self.begin_step, self.begin_head, self.steps_run = trainer, None, None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin_step, self.begin_head = state.global_step, self.trainer.model.lm_head.weight.detach().clone()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_run += 1


def _assert_close(expected: dict, actual: dict):
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4, msg=key)


def test_resume_matches_an_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.train()
    first = _trainer(tmp_path / "b", save_strategy="steps", save_steps=2)
    first.args.max_steps = 2  # stop after step 2 as a crash would, on the 3-step schedule
    first.train()
    resumed = _trainer(tmp_path / "b")
    record = _RecordResume(resumed)
    resumed.add_callback(record)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))

    # It continued from the checkpoint (not from scratch, which would also end at the straight run's weights) ...
    assert (record.begin_step, record.steps_run, resumed.state.global_step) == (2, 1, 3)
    assert torch.equal(record.begin_head, first.model.lm_head.weight)
    assert resumed._decoder_phases == straight._decoder_phases == 3
    # ... and ended where the uninterrupted run did.
    _assert_close(straight.model.state_dict(), resumed.model.state_dict())  # policy (VQ detached while training)
    _assert_close(straight.ref_model.state_dict(), resumed.ref_model.state_dict())
    _assert_close(straight.codec.module.state_dict(), resumed.codec.module.state_dict())
