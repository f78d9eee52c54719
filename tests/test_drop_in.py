"""A true drop-in: the model object handed to `RankEGRPOTrainer` comes back whole and working after the trainer is
built, after `train()`, and after an exception inside `train()`."""

import pytest
import torch

from ranke_trl import RankEConfig, RankEGRPOTrainer
from ranke_trl.policy import JanusPolicy
from ranke_trl.rewards import CLIPReward
from tiny_data import colour_squares


def _trainer(tmp_path, model, processor, reward=None, **overrides):
    args = RankEConfig(
        output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=8, num_generations=4, max_steps=1,
        learning_rate=1e-3, decoder_learning_rate=1e-3, report_to=[], save_strategy="no", decoder_batch_size=4,
        lambda_lpips=0.0, log_images_steps=0, **overrides,
    )
    return RankEGRPOTrainer(model=model, reward_funcs=[reward or CLIPReward.tiny()], args=args,
                            train_dataset=colour_squares(), processing_class=processor)


def _assert_whole(model, processor, tmp_path):
    """The VQ attached, the class's own forward, image generation and save/reload all working as before training."""
    from transformers import JanusForConditionalGeneration

    assert model.model.vqmodel is not None
    assert "forward" not in model.__dict__ and "_ranke_original_forward" not in model.__dict__
    assert all(p.requires_grad for p in model.model.vision_model.parameters())
    batch = JanusPolicy(processor, model).encode_prompts(["a red square"])
    codes = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_mode="image",
                           do_sample=False, guidance_scale=5.0, top_k=0)
    assert codes.shape == (1, 64)
    model.save_pretrained(tmp_path / "saved")
    reloaded = JanusForConditionalGeneration.from_pretrained(tmp_path / "saved")
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_the_model_is_whole_once_the_trainer_is_built(tmp_path, tiny_janus, tiny_processor):
    vq = tiny_janus.model.vqmodel
    _trainer(tmp_path, tiny_janus, tiny_processor)
    assert tiny_janus.model.vqmodel is vq
    _assert_whole(tiny_janus, tiny_processor, tmp_path)


def test_std_rl_hands_back_the_model_with_its_untouched_vq(tmp_path, tiny_janus, tiny_processor):
    vq = tiny_janus.model.vqmodel
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    _trainer(tmp_path, tiny_janus, tiny_processor, train_decoder=False).train()
    assert tiny_janus.model.vqmodel is vq
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())
    _assert_whole(tiny_janus, tiny_processor, tmp_path)


def test_ranke_hands_back_the_model_with_the_co_evolved_vq(tmp_path, tiny_janus, tiny_processor):
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor)
    trainer.train()
    assert tiny_janus.model.vqmodel is trainer.codec.module
    _assert_whole(tiny_janus, tiny_processor, tmp_path)
    trainer.train(resume_from_checkpoint=None)  # and the trainer can still train it (prepared again)
    assert tiny_janus.model.vqmodel is trainer.codec.module


def test_the_model_is_whole_after_an_exception_inside_train(tmp_path, tiny_janus, tiny_processor):
    def broken_reward(prompts, completions, **kwargs):
        raise RuntimeError("scorer offline")

    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, reward=broken_reward, lambda_rbp=0.0)
    with pytest.raises(RuntimeError, match="broken_reward"):
        trainer.train()
    _assert_whole(tiny_janus, tiny_processor, tmp_path)
