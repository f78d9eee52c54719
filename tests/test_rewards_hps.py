"""HPSv2Reward: an open_clip CLIP loaded from an HPS checkpoint, scoring with the HPSv2 reference preprocessing.

The real model is a ViT-H-14; these tests load checkpoints in the HPS file format into the tiny CLIP instead.
"""

import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from ranke_trl.rewards import HPSv2Reward, load_hps_state_dict, load_reward
from ranke_trl.tiny import build_tiny_clip


class TrainingState:
    """A custom Python object, like those some checkpoints pickle next to the weights."""

    def __init__(self, step):
        self.step = step


def _save_in_hps_format(model, path, **extra):
    """The layout of `HPS_v2*_compressed.pt`: the state dict of a DDP-wrapped model under "state_dict"."""
    state_dict = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"state_dict": state_dict, **extra}, path)
    return path


@pytest.fixture(scope="module")
def hps_checkpoint(tmp_path_factory):
    return _save_in_hps_format(build_tiny_clip(seed=1), tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt")


@pytest.fixture(scope="module")
def reward(hps_checkpoint):
    return HPSv2Reward("v2.1", hps_checkpoint, model=build_tiny_clip(seed=0))


def test_hps_checkpoint_round_trips_through_the_hps_file_format(reward):
    saved = build_tiny_clip(seed=1).state_dict()

    loaded = reward.model.state_dict()

    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)
    assert reward.version == "v2.1"


def test_load_hps_state_dict_strips_the_module_prefix(hps_checkpoint):
    state_dict = load_hps_state_dict(hps_checkpoint)

    assert state_dict.keys() == build_tiny_clip().state_dict().keys()


def test_hps_reward_returns_one_score_per_image_in_cosine_range(reward):
    images = list(torch.rand(3, 3, 96, 64))

    scores = reward(prompts=["a cat", "a dog", "a cat"], completions=images, trainer_state=None)

    assert len(scores) == 3 and all(-1.0 <= value <= 1.0 for value in scores)


def test_hps_reward_is_a_differentiable_callable_logged_as_hpsv2(reward):
    from trl.trainer.utils import get_callable_name

    assert not isinstance(reward, torch.nn.Module)
    assert get_callable_name(reward) == "hpsv2"
    assert reward.is_differentiable


def test_hps_score_passes_gradients_to_the_pixels(reward):
    images = torch.rand(2, 3, 80, 64).requires_grad_(True)

    scores = reward.score(images, ["a cat", "a dog"])
    scores.sum().backward()

    assert scores.shape == (2,)
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize("height, width", [(48, 80), (120, 96)])
def test_hps_preprocessing_matches_the_reference_longest_side_and_pad_pipeline(reward, height, width):
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    # The HPSv2 reference: the long side to the model size, zero padding to a centred square, OpenAI mean/std.
    reference = open_clip.image_transform(64, is_train=False, resize_mode="longest")(Image.fromarray(pixels))

    ours = reward.preprocess(torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255.0)[0]

    # Within PIL's two uint8 roundings (see test_rewards_clip), in uint8 units.
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    assert ours.shape == reference.shape == (3, 64, 64)
    assert ((ours - reference) * std * 255).abs().max() < 1.25


def test_checkpoint_that_needs_pickle_is_refused_with_how_to_opt_in(tmp_path):
    path = _save_in_hps_format(build_tiny_clip(), tmp_path / "hps.pt", training_state=TrainingState(step=3))

    with pytest.raises(ValueError, match="allow_pickle=True"):
        HPSv2Reward("v2.0", path, model=build_tiny_clip())


def test_checkpoint_that_needs_pickle_loads_when_allowed(tmp_path):
    path = _save_in_hps_format(build_tiny_clip(seed=2), tmp_path / "hps.pt", training_state=TrainingState(step=3))

    reward = HPSv2Reward("v2.0", path, model=build_tiny_clip(), allow_pickle=True)

    assert torch.equal(reward.model.logit_scale, build_tiny_clip(seed=2).logit_scale)
    assert torch.equal(reward.model.visual.conv1.weight, build_tiny_clip(seed=2).visual.conv1.weight)


def test_unknown_hps_version_is_refused():
    with pytest.raises(ValueError, match="'v2.0', 'v2.1'"):
        HPSv2Reward("v3", model=build_tiny_clip())


@pytest.mark.parametrize("name", ["hps", "hpsv2"])
def test_load_reward_builds_hps_by_name(name, hps_checkpoint):
    assert isinstance(load_reward(name, checkpoint=hps_checkpoint, model=build_tiny_clip()), HPSv2Reward)


@pytest.mark.skipif(
    not os.environ.get("RANKE_HPS_CHECKPOINT"),
    reason="set RANKE_HPS_CHECKPOINT to a local HPS_v2_compressed.pt or HPS_v2.1_compressed.pt to run",
)
def test_real_hps_checkpoint_loads_into_vit_h_14_and_prefers_the_matching_prompt():
    path = os.environ["RANKE_HPS_CHECKPOINT"]
    reward = HPSv2Reward("v2.1" if "2.1" in os.path.basename(path) else "v2.0", path)
    red = torch.zeros(3, 256, 256)
    red[0] = 1.0

    matching, other = reward(["a plain red square", "a plain green square"], [red, red])

    assert 0.0 < matching < 1.0 and matching > other
