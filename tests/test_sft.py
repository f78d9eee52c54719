"""Image-token SFT (`ranke_trl.sft`): next-token cross-entropy on ground-truth codes, through the policy interface."""

import pytest
import torch

from ranke_trl.policy.janus import JanusPolicy
from ranke_trl.sft import ImageTokenSFT, ImageTokenSFTConfig, drop_prompts, image_token_nll

PROMPTS = ["a red circle", "two squares", "a blue triangle to the left of a square", "a rectangle"]


@pytest.fixture
def policy(tiny_janus, tiny_processor):
    return JanusPolicy(tiny_processor, tiny_janus)


@pytest.fixture
def codes(policy):
    generator = torch.Generator().manual_seed(1)
    return torch.randint(policy.codebook_size, (len(PROMPTS), policy.num_image_tokens), generator=generator)


def _sft(policy, model, **overrides):
    settings = dict(num_train_steps=15, batch_size=4, learning_rate=3e-3, warmup_ratio=0.0, show_progress=False)
    return ImageTokenSFT(policy, model, ImageTokenSFTConfig(**{**settings, **overrides}))


def test_sft_lowers_the_cross_entropy_of_the_training_codes(policy, tiny_janus, codes):
    sft = _sft(policy, tiny_janus, prompt_dropout=0.0, num_train_steps=40)
    before = sft.evaluate(PROMPTS, codes)
    sft.train(PROMPTS, codes)
    assert sft.evaluate(PROMPTS, codes) < before - 0.5


def test_sft_leaves_the_vq_model_bit_identical(policy, tiny_janus, codes):
    vq_before = {name: tensor.clone() for name, tensor in tiny_janus.model.vqmodel.state_dict().items()}
    sft = _sft(policy, tiny_janus)
    sft.train(PROMPTS, codes)
    vq_after = sft.codec.module.state_dict()
    assert vq_after.keys() == vq_before.keys()
    assert all(torch.equal(vq_after[name], vq_before[name]) for name in vq_before)


def test_sft_trains_the_generation_path_and_not_the_understanding_path(policy, tiny_janus, codes):
    head = tiny_janus.model.generation_head.vision_head.weight.clone()
    vision = tiny_janus.model.vision_model.embeddings.patch_embedding.weight.clone()
    _sft(policy, tiny_janus, num_train_steps=2).train(PROMPTS, codes)
    assert not torch.equal(tiny_janus.model.generation_head.vision_head.weight, head)
    assert torch.equal(tiny_janus.model.vision_model.embeddings.patch_embedding.weight, vision)


def test_vq_reattaches_for_saving_the_whole_system(policy, tiny_janus, codes, tmp_path):
    from transformers import JanusForConditionalGeneration

    sft = _sft(policy, tiny_janus, num_train_steps=1)
    sft.train(PROMPTS, codes)
    with policy.codec_attached(tiny_janus, sft.codec):
        tiny_janus.save_pretrained(tmp_path)
    reloaded = JanusForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(reloaded.model.vqmodel.quantize.embedding.weight, sft.codec.module.quantize.embedding.weight)


def test_prompt_dropout_of_one_replaces_every_prompt_by_the_unconditional_ids(policy):
    batch = policy.encode_prompts(PROMPTS)
    assert torch.equal(drop_prompts(batch, 1.0), batch.uncond_input_ids)
    assert torch.equal(drop_prompts(batch, 0.0), batch.input_ids)
    assert not torch.equal(batch.uncond_input_ids, batch.input_ids)


def test_prompt_dropout_scores_codes_against_the_unconditional_branch(policy, tiny_janus, codes):
    policy.prepare_for_training(tiny_janus)
    batch = policy.encode_prompts(PROMPTS)
    unconditional = type(batch)(batch.uncond_input_ids, batch.attention_mask, batch.uncond_input_ids)
    with torch.no_grad():
        dropped = image_token_nll(policy, tiny_janus, batch, codes, prompt_dropout=1.0)
        expected = image_token_nll(policy, tiny_janus, unconditional, codes)
        conditional = image_token_nll(policy, tiny_janus, batch, codes)
    assert torch.allclose(dropped, expected)
    assert not torch.allclose(dropped, conditional)


def test_prompt_dropout_drops_about_the_configured_share_of_rows(policy):
    batch = policy.encode_prompts(PROMPTS * 250)
    dropped = drop_prompts(batch, 0.1, torch.Generator().manual_seed(0))
    share = (dropped != batch.input_ids).any(dim=1).float().mean().item()
    assert 0.07 < share < 0.13


def test_sft_rejects_a_code_row_count_that_differs_from_the_prompts(policy, tiny_janus, codes):
    with pytest.raises(ValueError, match="one code row per prompt"):
        _sft(policy, tiny_janus).train(PROMPTS[:3], codes)


def test_sft_rejects_codes_outside_the_codebook(policy, tiny_janus, codes):
    with pytest.raises(ValueError, match="codes must lie in"):
        _sft(policy, tiny_janus).train(PROMPTS, codes + policy.codebook_size)


def test_config_rejects_a_dropout_probability_outside_zero_one():
    with pytest.raises(ValueError, match="prompt_dropout"):
        ImageTokenSFTConfig(prompt_dropout=1.5)
