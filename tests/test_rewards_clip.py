"""CLIPReward: a TRL reward function scoring decoded images `(3, H, W)` in [0, 1] by CLIP cosine similarity."""

import json
import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ranke_trl.rewards import CLIPReward, OpenClipReward, clip_image_transform, load_reward, prompt_text
from ranke_trl.tiny import build_tiny_clip, tiny_clip_config

PROMPTS = ["a red cube", "a photo of a dog", "two cats on a sofa", "a blue sky", "an astronaut"]


@pytest.fixture(scope="module")
def reward():
    return CLIPReward.tiny(seed=0)


def _images(n, size=64, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_reward_returns_one_float_per_image_in_cosine_range(reward):
    rewards = reward(prompts=PROMPTS, completions=list(_images(5)))

    assert len(rewards) == 5
    assert all(isinstance(value, float) and -1.0 <= value <= 1.0 for value in rewards)


def test_reward_accepts_chat_message_prompts(reward):
    images = list(_images(5))
    chats = [[{"role": "system", "content": "draw"}, {"role": "user", "content": text}] for text in PROMPTS]

    assert reward(prompts=chats, completions=images) == pytest.approx(reward(prompts=PROMPTS, completions=images))


def test_prompt_text_reads_strings_and_the_last_user_message():
    parts = [{"type": "image"}, {"type": "text", "text": "a red"}, {"type": "text", "text": "cube"}]

    assert prompt_text("a cat") == "a cat"
    assert prompt_text([{"role": "user", "content": "old"}, {"role": "user", "content": "a cat"}]) == "a cat"
    assert prompt_text([{"role": "user", "content": parts}]) == "a red cube"


def test_prompt_text_without_a_user_message_raises():
    with pytest.raises(ValueError, match="role 'user'"):
        prompt_text([{"role": "system", "content": "draw"}])


def test_reward_ignores_the_extra_keyword_arguments_trl_passes(reward):
    images = list(_images(2))
    extras = dict(completion_ids=[[1, 2], [3, 4]], trainer_state=object(), log_metric=print, caption=["x", "y"])

    assert reward(prompts=PROMPTS[:2], completions=images, **extras) == reward(PROMPTS[:2], images)


def test_reward_is_a_plain_callable_that_trl_logs_as_clip(reward):
    from trl.trainer.utils import get_callable_name

    assert not isinstance(reward, torch.nn.Module)  # TRL would treat a Module as a text classifier
    assert get_callable_name(reward) == "clip"
    assert reward.is_differentiable


def test_reward_model_is_frozen_in_eval_mode(reward):
    assert not reward.model.training
    assert not any(parameter.requires_grad for parameter in reward.model.parameters())


def test_reward_scores_in_chunks_of_batch_size(monkeypatch):
    reward = CLIPReward.tiny(seed=0, batch_size=2)
    calls = []
    encode_image = reward.model.encode_image
    monkeypatch.setattr(reward.model, "encode_image", lambda x, **kw: calls.append(len(x)) or encode_image(x, **kw))

    chunked = reward(PROMPTS, list(_images(5)))

    assert calls == [2, 2, 1]
    assert chunked == pytest.approx(CLIPReward.tiny(seed=0, batch_size=32)(PROMPTS, list(_images(5))), abs=1e-6)


def test_reward_refuses_a_prompt_count_that_differs_from_the_image_count(reward):
    with pytest.raises(ValueError, match="3 completions but 2 prompts"):
        reward(PROMPTS[:2], list(_images(3)))


def test_score_passes_gradients_to_the_pixels(reward):
    images = _images(2, size=80).requires_grad_(True)

    scores = reward.score(images, PROMPTS[:2])
    scores.sum().backward()

    assert scores.shape == (2,)
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_score_equals_the_cosine_of_the_model_embeddings(reward):
    images = _images(3)
    normalised = clip_image_transform(images, 64)  # the tiny CLIP's size: only normalisation applies

    with torch.no_grad():
        image_features = reward.model.encode_image(normalised, normalize=True)
        text_features = reward.model.encode_text(reward.tokenizer(PROMPTS[:3]), normalize=True)
        expected = (image_features * text_features).sum(-1)
        assert torch.allclose(reward.score(images, PROMPTS[:3]), expected, atol=1e-6)


@pytest.mark.parametrize("height, width", [(48, 60), (120, 96), (37, 90), (64, 64)])
def test_preprocessing_matches_open_clip_pil_transform_within_uint8_rounding(height, width):
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    reference = open_clip.image_transform(64, is_train=False)(Image.fromarray(pixels))

    ours = clip_image_transform(torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255.0, 64)[0]

    # Compared in uint8 units: PIL rounds to uint8 after its horizontal pass and again after its vertical one, so
    # values differ by up to 0.5 + 0.5 * (the bicubic kernel's absolute sum, ~1.2) < 1.25 levels, ~0.3 on average.
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    levels = ((ours - reference) * std * 255).abs()
    assert ours.shape == reference.shape == (3, 64, 64)
    assert levels.max() < 1.25
    assert levels.mean() < 0.4


def test_preprocessing_follows_the_model_preprocess_config():
    model = build_tiny_clip()
    open_clip.model.set_model_preprocess_cfg(model, {"size": 64, "mean": (0.5,) * 3, "std": (0.25,) * 3})

    reward = CLIPReward(model=model, model_name="ViT-B-32")

    assert reward.preprocess_config["mean"] == (0.5,) * 3 and reward.preprocess_config["std"] == (0.25,) * 3
    assert torch.allclose(reward.preprocess(torch.full((1, 3, 64, 64), 0.75)), torch.ones(1, 3, 64, 64))


def test_openai_weights_turn_on_quick_gelu_unless_told_otherwise(monkeypatch):
    seen = []

    def create_model(name, pretrained, force_quick_gelu):
        seen.append(force_quick_gelu)
        return build_tiny_clip()

    monkeypatch.setattr(open_clip, "create_model", create_model)

    CLIPReward("ViT-L-14", "openai")
    CLIPReward("ViT-L-14", "laion2b_s32b_b82k")
    CLIPReward("ViT-L-14", "openai", force_quick_gelu=False)

    assert seen == [True, False, False]


@pytest.mark.parametrize("prefix", ["local-dir:", ""])
def test_reward_loads_an_open_clip_folder(tmp_path, prefix):
    model = build_tiny_clip(seed=3)
    save_file(model.state_dict(), str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_clip_config()}))

    reward = CLIPReward(pretrained=f"{prefix}{tmp_path}")

    for name, tensor in model.state_dict().items():
        assert torch.equal(reward.model.state_dict()[name], tensor), name


def test_to_moves_the_model_to_another_dtype():
    reward = CLIPReward.tiny().to(dtype=torch.bfloat16)

    scores = reward.score(_images(2), PROMPTS[:2])

    assert reward.dtype == torch.bfloat16 and scores.dtype == torch.float32


def test_load_reward_builds_rewards_by_name():
    assert isinstance(load_reward("tiny_clip"), CLIPReward)
    assert isinstance(load_reward("tiny_clip", seed=1), OpenClipReward)


def test_load_reward_rejects_an_unknown_name_and_lists_the_known_ones():
    with pytest.raises(ValueError, match="clip, hps, hpsv2, shapes_clip, shapes_clip_second, shapes_eval, tiny_clip"):
        load_reward("pickscore")


@pytest.mark.skipif(
    not os.environ.get("RANKE_CLIP_WEIGHTS"),
    reason="set RANKE_CLIP_WEIGHTS to a local open_clip weight file of OpenAI's ViT-L-14 to run",
)
def test_real_clip_prefers_the_prompt_that_describes_the_image():
    reward = CLIPReward("ViT-L-14", os.environ["RANKE_CLIP_WEIGHTS"], force_quick_gelu=True)
    red = torch.zeros(3, 256, 256)
    red[0] = 1.0

    matching, other = reward(["a plain red square", "a plain green square"], [red, red])

    assert matching > other


def test_missing_weights_raise_an_error_that_says_how_to_load_local_ones(tmp_path):
    with pytest.raises(RuntimeError, match="pass a local weight file"):
        CLIPReward("ViT-B-32", str(tmp_path / "missing.safetensors"))
