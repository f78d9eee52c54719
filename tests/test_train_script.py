"""examples/train_janus.py on the tiny recipe: the README's offline main job, shortened."""

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
