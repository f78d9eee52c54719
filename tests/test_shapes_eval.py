"""ShapesEval: exact on clean renders, tolerant of mild blur and noise, and failing images that do not fit."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from shapes_world import (
    COLORS,
    FAMILIES,
    KINDS,
    SIZES,
    Scene,
    ShapeSpec,
    ShapesEval,
    parse_prompt,
    render_scene,
    sample_scenes,
    shapes_eval_reward,
    summarize,
)
from shapes_world.scenes import shape_mask


@pytest.fixture(scope="module")
def evaluator():
    return ShapesEval()


@pytest.fixture(scope="module")
def scenes():
    """240 test-split scenes, 40 per family."""
    return sample_scenes("test", 240, seed=0, family_mix={tag: 1.0 for tag in FAMILIES})


def scene_of(prompt, *shapes):
    return Scene(tuple(ShapeSpec(*shape) for shape in shapes), parse_prompt(prompt))


def accuracy(evaluator, images, scenes):
    return summarize(evaluator.evaluate_batch(images, [scene.metadata for scene in scenes]))


def corrupted(scenes, corrupt):
    rng = np.random.default_rng(0)
    images = [corrupt(render_scene(s).astype(np.float32), rng, s) for s in scenes]
    return [np.clip(image, 0, 255).round().astype(np.uint8) for image in images]


def blur(image, sigma):
    return ndimage.gaussian_filter(image, (sigma, sigma, 0))


# --- accuracy on clean and degraded renders ------------------------------------------------------------------------


def test_clean_renders_are_all_correct(evaluator, scenes):
    summary = accuracy(evaluator, [render_scene(s) for s in scenes], scenes)
    assert summary["overall"] == 1.0 and summary["mean_score"] == 1.0


def test_clean_renders_at_other_sizes_are_all_correct(evaluator, scenes):
    assert accuracy(evaluator, [render_scene(s, 128) for s in scenes[:60]], scenes[:60])["overall"] == 1.0


def test_mild_blur_and_noise_keep_accuracy(evaluator, scenes):
    images = corrupted(scenes, lambda im, rng, s: blur(im, 1.0) + rng.normal(0, 10, im.shape))
    assert accuracy(evaluator, images, scenes)["overall"] >= 0.97


def test_down_and_up_sampling_keeps_accuracy(evaluator, scenes):
    def resample(image, rng, scene):
        small = Image.fromarray(image.astype(np.uint8)).resize((24, 24), Image.BILINEAR)
        return np.asarray(small.resize((64, 64), Image.BICUBIC), dtype=np.float32)

    assert accuracy(evaluator, corrupted(scenes, resample), scenes)["overall"] >= 0.97


def test_heavy_noise_drops_accuracy(evaluator, scenes):
    images = corrupted(scenes, lambda im, rng, s: im + rng.normal(0, 80, im.shape))
    assert accuracy(evaluator, images, scenes)["overall"] <= 0.2


def test_heavy_blur_drops_accuracy(evaluator, scenes):
    assert accuracy(evaluator, corrupted(scenes, lambda im, rng, s: blur(im, 4.0)), scenes)["overall"] <= 0.3


def test_a_colour_shift_fails_the_colour_prompts(evaluator, scenes):
    per_family = accuracy(evaluator, corrupted(scenes, lambda im, rng, s: im[..., [1, 2, 0]]), scenes)["per_family"]
    assert per_family["colors"] <= 0.25 and per_family["color_attr"] <= 0.25


def test_erasing_a_shape_fails_every_prompt(evaluator, scenes):
    def erase(image, rng, scene):
        image[shape_mask(scene.shapes[rng.integers(len(scene.shapes))])] = 255
        return image

    assert accuracy(evaluator, corrupted(scenes, erase), scenes)["image_accuracy"] == 0.0


def test_swapped_captions_score_low(evaluator, scenes):
    images = [render_scene(s) for s in scenes]
    swapped = scenes[1:] + scenes[:1]  # each image against the next scene's caption
    assert accuracy(evaluator, images, swapped)["overall"] <= 0.25


# --- detection -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", list(SIZES))
def test_every_kind_and_colour_is_detected_on_its_own(evaluator, size):
    for kind in KINDS:
        for color in COLORS:
            (found,) = evaluator.detect(render_scene(scene_of("a circle", (kind, color, size, 20, 40))))
            assert (found.kind, found.color) == (kind, color)


def test_specks_below_the_minimum_area_are_ignored(evaluator):
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    image[10:13, 10:13] = (220, 30, 30)
    assert evaluator.detect(image) == []


def test_image_formats_give_the_same_verdict(evaluator):
    scene = sample_scenes("test", 1, seed=5)[0]
    array = render_scene(scene)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    results = [evaluator.evaluate(image, scene.prompt) for image in (array, Image.fromarray(array), tensor)]
    assert results[0] == results[1] == results[2]


def test_unparseable_prompt_asks_for_metadata(evaluator):
    with pytest.raises(ValueError, match="pass the scene's metadata"):
        evaluator.evaluate(np.full((64, 64, 3), 255, np.uint8), "a cat on a mat")


# --- the checks ----------------------------------------------------------------------------------------------------


def test_colour_binding_is_checked(evaluator):
    image = render_scene(scene_of("a red circle and a green square", ("circle", "red", "large", 16, 16),
                                  ("square", "green", "large", 48, 48)))
    assert evaluator.evaluate(image, "a red circle and a green square")["correct"]
    swapped = evaluator.evaluate(image, "a green circle and a red square")
    assert not swapped["correct"] and swapped["score"] == 0.5


def test_relative_position_is_checked(evaluator):
    image = render_scene(scene_of("a circle to the left of a square", ("circle", "blue", "large", 16, 16),
                                  ("square", "red", "large", 48, 16)))
    assert evaluator.evaluate(image, "a circle to the left of a square")["correct"]
    assert not evaluator.evaluate(image, "a circle to the right of a square")["correct"]
    assert not evaluator.evaluate(image, "a circle above a square")["correct"]


def test_counting_needs_the_exact_number(evaluator):
    image = render_scene(scene_of("three triangles", ("triangle", "red", "small", 16, 16),
                                  ("triangle", "blue", "small", 48, 16), ("triangle", "black", "large", 16, 48)))
    assert evaluator.evaluate(image, "three triangles")["correct"]
    too_few, too_many = evaluator.evaluate(image, "four triangles"), evaluator.evaluate(image, "two triangles")
    assert not too_few["correct"] and too_few["score"] == 0.75
    assert not too_many["correct"] and too_many["score"] == 0.5


def test_summarize_averages_accuracy_over_families():
    results = [{"tag": "counting", "correct": True, "score": 1.0}] * 3
    results.append({"tag": "colors", "correct": False, "score": 0.5})
    summary = summarize(results)
    assert summary["per_family"] == {"counting": 1.0, "colors": 0.0}
    assert summary["overall"] == 0.5 and summary["image_accuracy"] == 0.75


def test_summarize_rejects_no_results():
    with pytest.raises(ValueError, match="no results"):
        summarize([])


# --- the reward ----------------------------------------------------------------------------------------------------


def as_completion(image):
    return torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 255


def test_reward_is_one_on_clean_renders(scenes):
    completions = [as_completion(render_scene(s)) for s in scenes[:30]]
    rewards = shapes_eval_reward([s.prompt for s in scenes[:30]], completions)
    assert rewards == [1.0] * 30


def test_reward_gives_one_float_in_the_unit_interval_per_image(scenes):
    noisy = [np.clip(render_scene(s) + np.random.default_rng(i).normal(0, 60, (64, 64, 3)), 0, 255) / 255
             for i, s in enumerate(scenes[:12])]
    rewards = shapes_eval_reward([s.prompt for s in scenes[:12]], [torch.tensor(x).permute(2, 0, 1) for x in noisy])
    assert len(rewards) == 12 and all(isinstance(r, float) and 0.0 <= r <= 1.0 for r in rewards)
    assert min(rewards) < 1.0


def test_reward_gives_partial_credit_for_a_wrong_colour():
    image = render_scene(scene_of("a blue circle", ("circle", "blue", "large", 16, 16)))
    assert shapes_eval_reward(["a red circle"], [as_completion(image)]) == [0.5]


def test_reward_prefers_the_metadata_column_over_the_prompt(scenes):
    scene = scenes[0]
    image = as_completion(render_scene(scene))
    assert shapes_eval_reward(["<|User|>: draw it"], [image], metadata=[json.dumps(scene.metadata)]) == [1.0]


def test_reward_reads_chat_prompts(scenes):
    scene = scenes[0]
    chat = [{"role": "system", "content": "You draw shapes."}, {"role": "user", "content": scene.prompt}]
    assert shapes_eval_reward([chat], [as_completion(render_scene(scene))]) == [1.0]


def test_reward_is_a_plain_function_named_shapes_eval():
    assert shapes_eval_reward.__name__ == "shapes_eval"
    assert not isinstance(shapes_eval_reward, torch.nn.Module)


def test_reward_accepts_completions_that_require_grad(scenes):
    image = as_completion(render_scene(scenes[0])).requires_grad_()
    assert shapes_eval_reward([scenes[0].prompt], [image]) == [1.0]


def test_reward_rejects_mismatched_lengths(scenes):
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        shapes_eval_reward(["a circle", "a square"], [as_completion(render_scene(scenes[0]))])
