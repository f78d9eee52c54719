"""examples/train_janus.py on the tiny recipe: the README's offline main job, shortened."""

import json
import os

import examples_loader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_recipe_trains_ranke_end_to_end(tmp_path, capsys):
    main = examples_loader.load("train_janus").main
    main(
        [
            "--recipe", os.path.join(REPO, "recipes/tiny_janus_clip.yaml"),
            "--output_dir", str(tmp_path),
            "--max_steps", "2", "--save_steps", "2", "--log_images_steps", "2", "--report_to", "none",
        ]
    )
    out = capsys.readouterr().out
    assert "RankE finished 2 steps." in out and "decoder/loss" in out
    for name in ["model.safetensors", "decoder", "README.md", "checkpoint-2", "samples"]:
        assert (tmp_path / name).exists(), name


def test_shapes_recipe_trains_in_the_world_and_reports_world_metrics(tiny_world, tmp_path, capsys, monkeypatch):
    # The README's main command on a tiny prepared world: `model_name_or_path: shapes` and the `shapes_clip`
    # reward resolve through $RANKE_SHAPES_CACHE.
    monkeypatch.setenv("RANKE_SHAPES_CACHE", tiny_world)
    main = examples_loader.load("train_janus").main
    main(
        [
            "--recipe", os.path.join(REPO, "recipes/shapes_clip.yaml"),
            "--output_dir", str(tmp_path),
            "--max_steps", "2", "--save_steps", "2", "--log_images_steps", "0", "--report_to", "none",
            "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_train_samples", "16",
            "--world_eval_prompts", "8",
        ]
    )
    out = capsys.readouterr().out
    assert "RankE finished 2 steps." in out and "ShapesWorld evaluation" in out
    report = json.loads((tmp_path / "world_eval.json").read_text())
    for stage in ("before", "after"):
        assert {"clip_score", "shapes_fid", "shapes_eval", "shift/token_kl_bits"} <= set(report[stage])
    assert report["before"] != report["after"]  # two RankE steps moved the policy and the decoder
    for name in ["model.safetensors", "decoder", "checkpoint-2"]:
        assert (tmp_path / name).exists(), name
    card = (tmp_path / "README.md").read_text()
    assert "## Evaluation" in card and "world_eval.json" in card and "| `shapes_fid` |" in card
    assert tiny_world not in card and "base_model:" not in card  # a local base model: no path, no Hub claim
    assert "(16 rows)" in card
