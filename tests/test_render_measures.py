"""Rendering measured directly (`shapes_world/rendering.py`): off-palette pixels, paired render error against the
clean re-render of what ShapesEval detects, the decoder swap on fixed codes, and the pre-RL code-perturbation check."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from shapes_world.data import sample_scenes
from shapes_world.rendering import (
    CONFIDENT_COVERAGE,
    MIN_PALETTE_GAP,
    OFF_PALETTE_DISTANCE,
    PERTURB_FRACTIONS,
    off_palette_fraction,
    paired_render_error,
    perturb_codes,
    perturbation_curve,
    rendering_report,
    unusual_codes,
)
from shapes_world.scenes import Scene, ShapeSpec, render_scene
from shapes_world.vocab import PALETTE

REPO = Path(__file__).resolve().parents[1]


def renders(scenes) -> torch.Tensor:
    return torch.from_numpy(np.stack([render_scene(scene) for scene in scenes])).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def clean():
    return renders(sample_scenes("validation", 24, seed=0))


def one_square() -> torch.Tensor:
    return renders([Scene((ShapeSpec("square", "red", "large", 16, 16),), {})])


def test_the_off_palette_distance_is_a_quarter_of_the_closest_palette_pair():
    assert OFF_PALETTE_DISTANCE == pytest.approx(0.25 * MIN_PALETTE_GAP)
    assert MIN_PALETTE_GAP * 255 == pytest.approx(141.5, abs=0.1)  # blue-purple


def test_clean_renders_score_zero_on_every_measure(clean):
    report = rendering_report(clean)
    assert report["means"]["off_palette"] == 0.0
    assert report["means"]["confident"] == 1.0
    assert report["means"]["l1"] == 0.0  # the re-render inverts the renderer exactly
    assert report["means"]["ssim_distance"] == pytest.approx(0.0, abs=1e-5)
    assert report["per_image"]["unreadable_objects"].sum() == 0


def test_k_off_palette_pixels_give_k_over_hw():
    image = one_square()
    pixels = [(40, 40), (41, 40), (50, 3), (20, 20)]  # three on the background, one inside the square
    for y, x in pixels:
        image[0, :, y, x] = torch.tensor([0.5, 0.5, 0.5])  # grey: far from white, black and every colour
    assert off_palette_fraction(image).item() == pytest.approx(len(pixels) / 64**2)


def test_a_small_colour_shift_stays_on_palette_and_a_blend_does_not():
    image = one_square()
    shifted = (image + 0.5 * OFF_PALETTE_DISTANCE / 3**0.5).clamp(0, 1)  # half the threshold, off every channel
    assert off_palette_fraction(shifted).item() == 0.0
    blue, purple = (torch.tensor(PALETTE[c]) / 255 for c in ("blue", "purple"))
    image[0, :, 40:42, 40:42] = (0.5 * (blue + purple))[:, None, None]  # halfway between the closest pair
    assert off_palette_fraction(image).item() == pytest.approx(4 / 64**2)


def test_every_measure_grows_with_blur(clean):
    means = [rendering_report(TF.gaussian_blur(clean, [7, 7], [s, s]))["means"] for s in (0.5, 1.0, 1.5)]
    for key in ("off_palette", "l1", "ssim_distance"):
        values = [0.0] + [m[key] for m in means]
        assert all(a < b for a, b in zip(values, values[1:])), (key, values)


def test_noise_raises_the_paired_error_of_a_readable_image():
    image = one_square()
    noisy = (image + 0.04 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    error = paired_render_error(noisy)
    assert error["confident"].item() == 1.0 and error["unreadable_objects"].item() == 0
    assert error["l1"].item() > 0.01 and error["ssim_distance"].item() > 0.1


def test_an_unreadable_object_counts_in_full_as_error():
    image = one_square()
    cross = torch.zeros(64, 64, dtype=torch.bool)  # a plus sign: fills too little of its box for any kind
    cross[38:58, 46:50] = cross[46:50, 38:58] = True
    blue = torch.tensor(PALETTE["blue"]) / 255
    image[0][:, cross] = blue[:, None]
    error = paired_render_error(image)
    assert error["objects"].item() == 2 and error["unreadable_objects"].item() == 1
    assert error["confident"].item() == 1.0  # detected, so scored: not dropped as unconfident
    # The re-render draws the square and leaves the cross white: the cross's every pixel is error.
    expected = (1 - blue).sum().item() * cross.sum().item() / (3 * 64 * 64)
    assert error["l1"].item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(error["renders"][0], one_square()[0])


def test_paint_no_object_explains_makes_an_image_unconfident():
    image = one_square()
    image[0, :, 50:60, 2:40] = 0.6  # a grey smear: painted, no palette colour, far from the square
    error = paired_render_error(image)
    assert error["coverage"].item() < CONFIDENT_COVERAGE and error["confident"].item() == 0.0
    assert torch.isnan(error["l1"]).all() and torch.isnan(error["ssim_distance"]).all()
    report = rendering_report(torch.cat([image, one_square()]))
    assert report["means"]["confident"] == 0.5 and report["means"]["l1"] == 0.0  # the mean is over confident ones
    assert report["means"]["off_palette"] > 0  # while off-palette counts every image
    assert np.isnan(rendering_report(image)["means"]["l1"])  # no confident image: no paired error, not a zero


def test_a_decoder_level_blur_keeps_images_confidently_detected(clean):
    # Resampled through 24 px: L1 0.018 to the original, the world VQ's reconstruction error.
    resampled = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(clean, size=24, mode="bilinear", antialias=True), size=64, mode="bilinear"
    )
    assert rendering_report(resampled)["means"]["confident"] >= 0.9


def test_a_blank_image_is_confidently_empty():
    error = paired_render_error(torch.ones(1, 3, 64, 64))
    assert error["confident"].item() == 1.0 and error["l1"].item() == 0.0 and error["objects"].item() == 0


def test_images_of_another_size_are_refused_naming_the_native_size():
    with pytest.raises(ValueError, match="64 px"):
        rendering_report(torch.ones(1, 3, 32, 32))


# --- the code-perturbation check ---------------------------------------------------------------------------------


def test_unusual_codes_are_frequent_out_of_context_and_never_the_original():
    # A corpus of 4x4 grids: code 0 everywhere but a 1 in one corner or a 2 in the other; 3 appears once.
    corpus = torch.zeros(40, 4, 4, dtype=torch.long)
    corpus[:20, 0, 0], corpus[20:, 3, 3] = 1, 2
    corpus[0, 1, 1] = 3
    corpus = corpus.flatten(1)
    codes = corpus[:2].clone()
    replacements, seen = unusual_codes(codes, corpus, 8, torch.Generator().manual_seed(0), frequent_mass=0.99)
    assert (replacements != codes).all()
    assert set(replacements.unique().tolist()) <= {0, 1, 2}  # 3 is too rare to be plausible; 4-7 never occur
    assert ((replacements[codes == 0] == 1) | (replacements[codes == 0] == 2)).all()
    # The top-left 1 has zeros right of and below it; a 0 was seen there 40 times, a 2 never: the 2 replaces it.
    assert replacements[1, 0] == 2 and seen[1, 0] == 0


def test_a_larger_fraction_replaces_a_superset_of_positions():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (5, 64), generator=generator)
    replacements = (codes + 1) % 256
    order = torch.stack([torch.randperm(64, generator=generator) for _ in codes])
    changed = [perturb_codes(codes, replacements, p, order) != codes for p in PERTURB_FRACTIONS]
    assert [int(c[0].sum()) for c in changed] == [round(p * 64) for p in PERTURB_FRACTIONS]
    assert all((small <= large).all() for small, large in zip(changed, changed[1:]))


@pytest.mark.slow
def test_d0s_render_change_grows_with_the_fraction_of_unusual_codes(tiny_world):
    from ranke_trl.policy.janus import JanusVQCodec
    from shapes_world.pretrain import load_shapes_vq

    codec = JanusVQCodec(load_shapes_vq(tiny_world, prepare=False))
    scenes = sample_scenes("validation", 6, seed=0)
    corpus = codec.encode(renders(sample_scenes("train", 16, seed=0)) * 2 - 1)
    rows = perturbation_curve(codec, renders(scenes), scenes, corpus, fractions=(0.0, 0.1, 0.2, 0.4))
    change = [row["l1_to_unperturbed"] for row in rows]
    assert change[0] == 0.0 and all(a < b for a, b in zip(change, change[1:])), change
    assert {"off_palette", "confident", "l1_to_real", "shapes_eval_accuracy", "unseen_context"} <= set(rows[0])


# --- the decoder swap ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_same_decoder_twice_gives_identical_results_and_another_decoder_does_not(tiny_world, tmp_path):
    from shapes_world.evaluation import WorldScorer, decoder_swap, run_decoder, world_decoder

    scenes = sample_scenes("validation", 6, seed=0)
    d0 = world_decoder(tiny_world)
    codes = d0.encode(renders(scenes) * 2 - 1)
    other = world_decoder(tiny_world)
    with torch.no_grad():
        for parameter in other.decoder_parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    other.save_pretrained(tmp_path / "run" / "decoder")  # as a RankE run saves its co-evolved decoder
    prompts, metadata = [s.prompt for s in scenes], [s.metadata for s in scenes]
    decoders = {"D0": d0, "again": d0, "other": other, "saved": run_decoder(tmp_path / "run")}
    results = decoder_swap(codes, prompts, metadata, decoders, WorldScorer(tiny_world))
    assert results["D0"] == results["again"]
    assert {"render/off_palette", "render/confident", "shapes_fid", "shapes_eval"} <= set(results["D0"])
    assert not any(key.startswith("shift/") for key in results["D0"])  # the codes are shared: no token KL
    assert results["other"]["render/off_palette"] != results["D0"]["render/off_palette"]
    assert results["saved"]["shapes_fid"] == pytest.approx(results["other"]["shapes_fid"])


def test_a_run_without_a_decoder_is_named(tmp_path):
    from shapes_world.evaluation import run_decoder

    with pytest.raises(FileNotFoundError, match="expected .*decoder"):
        run_decoder(tmp_path)


@pytest.mark.slow
def test_eval_reports_rendering_and_d0s_images_of_the_same_codes(tiny_world, tmp_path, monkeypatch):
    from ranke_trl.cli import main as cli_main
    from ranke_trl.evaluation.results import read_results

    monkeypatch.setenv("RANKE_SHAPES_CACHE", tiny_world)
    assert cli_main(["eval", "--recipe", str(REPO / "recipes" / "eval_shapes.yaml"), "--policy_name_or_path",
                     str(Path(tiny_world) / "policy"), "--output_dir", str(tmp_path), "--max_prompts", "4",
                     "--batch_size", "4", "--metrics", "shapes", "shapes_d0"]) == 0
    results = read_results(tmp_path / "results.json")
    metrics, meta = results["metrics"], results["meta"]
    assert {"render/off_palette", "render/confident"} <= set(metrics) and "render" in meta
    assert {"render_floor/off_palette", "render_floor/confident"} <= set(metrics)  # VQ reconstructions of the reals
    assert meta["render_floor"]["num_images"] == 4
    # The prepared policy renders with D0 itself, so the swap changes nothing.
    assert meta["d0"]["same_as_evaluated_decoder"] is True
    shared = [key for key in metrics if not key.startswith(("d0/", "shift/", "render_floor/"))]
    assert shared and all(metrics[f"d0/{key}"] == metrics[key] for key in shared)


def test_the_train_time_report_shows_the_rendering_measures_both_sides_have(tmp_path):
    from shapes_world.evaluation import world_eval_report

    before = {"shapes_fid": 200.0, "render/off_palette": 0.02, "render/confident": 0.0}
    after = {"shapes_fid": 300.0, "render/off_palette": 0.05, "render/confident": 0.5, "render/l1": 0.03}
    lines = world_eval_report(before, after, str(tmp_path)).splitlines()
    assert any(line.split()[:3] == ["render/off_palette", "0.02", "0.05"] for line in lines)
    assert not any("render/l1" in line for line in lines)  # undefined before training: no row, no made-up value


@pytest.mark.slow
def test_the_perturbation_command_writes_strict_json_rows(tiny_world, tmp_path, capsys):
    import json

    from shapes_world.rendering import main

    output = tmp_path / "perturb.json"
    assert main(["perturb", "--cache", tiny_world, "--num_images", "3", "--corpus_images", "8",
                 "--fractions", "0", "0.2", "--output", str(output)]) == 0
    result = json.loads(output.read_text(), parse_constant=lambda name: pytest.fail(f"non-JSON {name}"))
    assert [row["p"] for row in result["rows"]] == [0.0, 0.2] and result["settings"]["num_images"] == 3
    assert "| p | off_palette |" in capsys.readouterr().out
