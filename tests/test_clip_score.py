"""The evaluation CLIP score: 100 * max(cos, 0), averaged over images (CLIPScore convention)."""

import open_clip
import pytest
import torch

from ranke_trl.evaluation.clip_score import CLIPScoreMetric, clip_score_from_cosine
from ranke_trl.rewards import CLIPReward

PROMPTS = ["a red cube", "a photo of a dog", "two cats on a sofa", "a blue sky", "an astronaut", "text"]


@pytest.fixture(scope="module")
def reward():
    return CLIPReward.tiny(seed=0, batch_size=4)


def _images(n):
    # At the tiny CLIP's own size (64 px), so preprocessing is normalisation alone and easy to redo by hand.
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_clip_score_matches_a_hand_computed_value(reward):
    images = _images(6)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image_features = reward.model.encode_image((images - mean) / std)
        text_features = reward.model.encode_text(open_clip.SimpleTokenizer()(PROMPTS))
    cosine = torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)
    assert (cosine < 0).any() and (cosine > 0).any()  # so the max(cos, 0) clipping is exercised
    expected = (100 * cosine.clamp(min=0)).mean().item()

    metric = CLIPScoreMetric(reward)
    metric.update(images, PROMPTS)

    assert metric.compute() == pytest.approx(expected, abs=1e-4)
    assert metric.num_images == 6


def test_clip_score_streams_over_several_updates(reward):
    images = _images(6)
    whole, split = CLIPScoreMetric(reward), CLIPScoreMetric(reward)

    whole.update(images, PROMPTS)
    split.update(images[:1], PROMPTS[:1])
    split.update(images[1:], PROMPTS[1:])

    assert split.compute() == pytest.approx(whole.compute(), abs=1e-4)  # float32 batching noise
    assert split.num_images == whole.num_images == 6


def test_clip_score_from_cosine_clips_negative_similarity_to_zero():
    scores = clip_score_from_cosine(torch.tensor([-0.5, 0.0, 0.3]))

    assert torch.allclose(scores, torch.tensor([0.0, 0.0, 30.0]))


def test_reset_forgets_the_images(reward):
    metric = CLIPScoreMetric(reward)
    metric.update(_images(2), PROMPTS[:2])

    metric.reset()

    assert metric.num_images == 0
    with pytest.raises(RuntimeError, match="update"):
        metric.compute()


def test_description_says_which_model_and_formula(reward):
    metric = CLIPScoreMetric(reward)
    metric.update(_images(2), PROMPTS[:2])

    description = metric.description

    assert description["model"] == "tiny-clip"
    assert description["formula"].startswith("100 * max(cos, 0)")
    assert description["num_images"] == 2
