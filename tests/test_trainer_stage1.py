"""RankEGRPOTrainer, Stage 1: GRPO on image tokens with a frozen decoder (the 'Std. RL' mode)."""

import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from ranke_trl import RankEConfig, RankEGRPOTrainer


class RecordingReward:
    """A TRL reward that records what it received; scores the mean red channel (B images in [0, 1])."""

    __name__ = "redness"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, "kwargs": kwargs})
        return [float(image[0].mean()) for image in completions]


def _dataset(n=8):
    prompts = ["a red square", "two blue circles", "a green triangle", "a yellow circle"]
    return Dataset.from_dict({"prompt": [prompts[i % 4] for i in range(n)], "family": ["x"] * n})


def _args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path),
        bf16=False,
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        train_decoder=False,
        log_images_steps=1,
        num_images_to_log=4,
    )
    defaults.update(overrides)
    return RankEConfig(**defaults)


def _trainer(tmp_path, model, processing_class, reward=None, **overrides):
    return RankEGRPOTrainer(
        model=model,
        reward_funcs=[reward or RecordingReward()],
        args=_args(tmp_path, **overrides),
        train_dataset=_dataset(),
        processing_class=processing_class,
    )


def _watched(model) -> dict[str, torch.Tensor]:
    """The generation path's parameters that Std. RL must train."""
    return {
        "generation_head": model.model.generation_head.vision_head.weight,
        "generation_aligner": model.model.generation_aligner.fc1.weight,
        "generation_embeddings": model.model.generation_embeddings.weight,
        "language_model": model.model.language_model.layers[0].self_attn.q_proj.weight,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_processor):
    """One default Std. RL run (2 steps, the default EMA reference), read by every test of what such a run trains,
    scores and logs: `(trainer, model, reward, args, before)`, with the config as passed in (`args`) and what the
    model, its VQ and the reference held before training (`before`)."""
    import copy

    from ranke_trl.tiny import build_tiny_janus

    torch.manual_seed(0)
    model, reward = build_tiny_janus(seed=0), RecordingReward()
    args = _args(tmp_path_factory.mktemp("std_rl"))
    before = {"args": copy.deepcopy(args), "vq": {k: v.clone() for k, v in model.model.vqmodel.state_dict().items()},
              "watched": {k: v.detach().clone() for k, v in _watched(model).items()}}
    trainer = RankEGRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=_dataset(),
                               processing_class=tiny_processor)
    reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    before["reference"] = reference.model.generation_head.vision_head.weight.detach().clone()
    trainer.train()
    return trainer, model, reward, args, before


def test_std_rl_trains_generation_path_and_leaves_vq_bit_identical(trained):
    trainer, model, _, _, before = trained
    for name, param in _watched(model).items():
        assert not torch.equal(before["watched"][name], param.detach()), f"{name} did not change"
    vq_after = trainer.codec.module.state_dict()
    assert all(torch.equal(before["vq"][k], vq_after[k]) for k in before["vq"])


def test_text_lm_head_is_not_trained(tmp_path, tiny_janus, tiny_processor):
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor)
    trainable = {id(p) for group in trainer.create_optimizer().param_groups for p in group["params"]}
    vq_ids = {id(p) for p in trainer.codec.module.parameters()}
    assert not (trainable & vq_ids)
    assert id(tiny_janus.model.generation_head.vision_head.weight) in trainable


def test_rewards_receive_one_image_per_rollout_and_dataset_columns(trained):
    _, _, reward, _, _ = trained
    call = reward.calls[0]
    assert len(call["completions"]) == len(call["prompts"]) == 8
    image = call["completions"][0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert call["kwargs"]["family"] == ["x"] * 8
    assert len(call["kwargs"]["completion_ids"][0]) == 64


def test_rewards_and_metrics_are_logged(trained):
    trainer = trained[0]
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"reward", "rewards/redness/mean", "rewards/redness/std", "kl", "entropy"} <= logged
    assert {"shift/batch_entropy_bits"} <= logged
    samples = Path(trainer.args.output_dir) / "samples"
    assert (samples / "step_000001.png").exists()
    caption = (samples / "step_000001.txt").read_text()
    assert "row 1:" in caption and "4 rollouts of this prompt" in caption  # a row is one prompt's G rollouts


def test_existing_trl_reward_function_runs_unchanged(tmp_path, tiny_janus, tiny_processor):
    def length_reward(completions, **kwargs):  # a text-style TRL reward: uses only len()
        return [1.0 for _ in completions]

    trainer = RankEGRPOTrainer(
        model=tiny_janus,
        reward_funcs=length_reward,
        args=_args(tmp_path, max_steps=1),
        train_dataset=_dataset(),
        processing_class=tiny_processor.tokenizer,
    )
    trainer.train()
    assert trainer.state.log_history[0]["rewards/length_reward/mean"] == 1.0


def test_reward_returning_wrong_length_names_the_reward(tmp_path, tiny_janus, tiny_processor):
    def short_reward(prompts, completions, **kwargs):
        return [0.0]

    trainer = RankEGRPOTrainer(
        model=tiny_janus, reward_funcs=short_reward, args=_args(tmp_path, max_steps=1),
        train_dataset=_dataset(), processing_class=tiny_processor,
    )
    with pytest.raises(ValueError, match="short_reward"):
        trainer.train()


def test_reward_that_raises_names_the_reward(tmp_path, tiny_janus, tiny_processor):
    def broken_reward(prompts, completions, **kwargs):
        raise KeyError("missing column")

    trainer = RankEGRPOTrainer(
        model=tiny_janus, reward_funcs=broken_reward, args=_args(tmp_path, max_steps=1),
        train_dataset=_dataset(), processing_class=tiny_processor,
    )
    with pytest.raises(RuntimeError, match="broken_reward"):
        trainer.train()


def test_module_reward_is_rejected_with_a_clear_error(tmp_path, tiny_janus, tiny_processor):
    with pytest.raises(TypeError, match="plain callables"):
        RankEGRPOTrainer(
            model=tiny_janus, reward_funcs=torch.nn.Linear(2, 1), args=_args(tmp_path),
            train_dataset=_dataset(), processing_class=tiny_processor,
        )


def test_ema_reference_is_built_for_an_in_memory_model(tmp_path, tiny_janus, tiny_processor):
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5)
    ref_before = trainer.ref_model.model.generation_head.vision_head.weight.detach().clone()
    trainer.train()
    policy_w = tiny_janus.model.generation_head.vision_head.weight.detach()
    ref_after = trainer.ref_model.model.generation_head.vision_head.weight.detach()
    assert not torch.equal(ref_before, ref_after)  # the EMA moved the reference...
    assert not torch.equal(ref_after, policy_w)  # ...towards, but not onto, the policy
    assert trainer.ref_model.model.vqmodel is None  # and it carries no copy of the VQ model


def test_loads_model_and_processor_from_a_local_directory(tmp_path, tiny_janus_dir):
    trainer = RankEGRPOTrainer(
        model=tiny_janus_dir, reward_funcs=RecordingReward(), args=_args(tmp_path, max_steps=1),
        train_dataset=_dataset(),
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_image_column_is_kept_away_from_trl_vlm_path(tmp_path, tiny_janus, tiny_processor):
    from datasets import Image as ImageFeature
    from PIL import Image

    data = _dataset().to_dict()
    data["image"] = [Image.new("RGB", (64, 64), "red")] * 8
    data = Dataset.from_dict(data).cast_column("image", ImageFeature())
    trainer = RankEGRPOTrainer(
        model=tiny_janus, reward_funcs=RecordingReward(), args=_args(tmp_path, max_steps=1),
        train_dataset=data, processing_class=tiny_processor,
    )
    trainer.train()
    assert trainer.state.global_step == 1


def test_shift_diagnostics_use_corpus_codes_when_images_exist(tmp_path, tiny_janus, tiny_processor):
    from datasets import Image as ImageFeature
    from PIL import Image

    data = _dataset().to_dict()
    data["image"] = [Image.new("RGB", (64, 64), c) for c in ["red", "blue"] * 4]
    data = Dataset.from_dict(data).cast_column("image", ImageFeature())
    trainer = RankEGRPOTrainer(
        model=tiny_janus, reward_funcs=RecordingReward(), args=_args(tmp_path, max_steps=1),
        train_dataset=data, processing_class=tiny_processor,
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["shift/batch_token_kl_bits"] > 0
    assert (tmp_path / "gt_code_stats.safetensors").exists()


def test_sample_grid_reaches_tensorboard(tmp_path, tiny_janus, tiny_processor):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, max_steps=1, report_to=["tensorboard"])
    trainer.train()
    event_file = next(tmp_path.glob("**/events.out.tfevents.*"))
    events = EventAccumulator(str(event_file.parent), size_guidance={"images": 0})
    events.Reload()
    assert "samples" in events.Tags()["images"]
    assert "rewards/redness/mean" in {t.split("train/")[-1] for t in events.Tags()["scalars"]}


def test_the_config_passed_in_is_unchanged_by_the_trainer(trained):
    trainer, _, _, args, before = trained
    before = before["args"]
    assert args == before  # TRL and RankE adjust their own copy
    assert trainer.args.max_completion_length == 64 and args.max_completion_length == before.max_completion_length
    assert trainer.beta == args.beta and trainer.ref_model is not None


def test_fsdp_is_refused_at_start_up_with_the_alternative(tmp_path, tiny_janus, tiny_processor, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="does not support FSDP.*ZeRO-3"):
        _trainer(tmp_path, tiny_janus, tiny_processor)


def test_the_reference_policy_is_a_real_ema_by_default(trained):
    trainer, model, _, config, before = trained
    assert config.max_steps == 2
    assert (config.sync_ref_model, config.ref_model_sync_steps, config.ref_model_mixup_alpha) == (True, 1, 0.01)
    assert config.use_bias_correction_kl is False  # the plain KL of Eq. 3
    before = before["reference"]
    after = trainer.accelerator.unwrap_model(trainer.ref_model).model.generation_head.vision_head.weight
    policy = model.model.generation_head.vision_head.weight
    assert not torch.equal(before, after)  # it moved within 2 steps (TRL's default would wait 512)
    assert (after - before).abs().max() < (policy - before).abs().max()  # slowly, towards the policy


def test_train_hides_trls_own_deprecation_warning_and_restores_the_callers_filters(tmp_path, tiny_janus, tiny_processor):
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, max_steps=1, log_images_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        tiny_janus.is_gradient_checkpointing  # what TRL reads: it does warn outside train()
        assert any("is_gradient_checkpointing" in str(w.message) for w in caught)
        del caught[:]
        trainer.train()
        assert list(warnings.filters) == before
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
