"""The SFT row from a recipe (`examples/train_sft.py`): next-token cross-entropy on a curated set's stored
ground-truth codes through the adapter interface, resumable, saving a directory RankE and evaluation load."""

import os

import pytest
import torch

import examples_loader
from ranke_trl.data import colour_squares
from ranke_trl.data.encode import add_gt_codes, load_codec
from ranke_trl.recipes import parse_recipe
from ranke_trl.sft import ImageTokenSFT, ImageTokenSFTConfig, parse_sft_recipe, sft_config_from_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_RUN = ["--bf16", "false", "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--gradient_accumulation_steps", "2", "--save_steps", "1", "--learning_rate", "1e-3",
            "--model_init_kwargs", '{"dtype": "float32"}', "--disable_tqdm", "true"]


def curated_like(model_dir, folder, rows=8):
    """A saved dataset shaped like the curated set: prompt, image and the codec's gt_codes."""
    codec, _ = load_codec(model_dir, device="cpu")
    dataset = add_gt_codes(colour_squares(rows, image_size=codec.image_size), codec, show_progress=False)
    dataset.save_to_disk(str(folder))
    return str(folder), dataset


@pytest.mark.parametrize("name", ["janus_sft.yaml", "llamagen_sft.yaml"])
def test_the_sft_recipes_state_rankes_data_and_budget_with_the_training_keys(name):
    script_args, config, sft_args = parse_sft_recipe(["--recipe", os.path.join(REPO, "recipes", name), "--bf16",
                                                      "false"])
    sft = sft_config_from_recipe(config, sft_args)
    assert (sft.num_train_steps, sft.batch_size, sft.gradient_accumulation_steps) == (6000, 128, 8)
    assert sft.prompt_dropout == 0.1 and script_args.dataset_name.startswith("outputs/data/blip3o_15k")
    rankes = "janus_clip.yaml" if name.startswith("janus") else "llamagen_clip.yaml"
    rank_args, rank_config = parse_recipe(["--recipe", os.path.join(REPO, "recipes", rankes), "--bf16", "false"])
    assert (script_args.dataset_name, script_args.prompt_column) == (rank_args.dataset_name, rank_args.prompt_column)
    assert (config.max_steps, config.per_device_train_batch_size) == (rank_config.max_steps,
                                                                      rank_config.per_device_train_batch_size)


def test_sft_trains_on_the_stored_codes_and_its_output_trains_with_ranke(tmp_path, tiny_janus_dir, monkeypatch,
                                                                        capsys):
    data, _ = curated_like(tiny_janus_dir, tmp_path / "data")
    monkeypatch.setattr("ranke_trl.corpus.encode_corpus", lambda *a, **k: pytest.fail("the codes are stored"))
    out = tmp_path / "sft"
    examples_loader.load("train_sft").main(["--recipe", os.path.join(REPO, "recipes/janus_sft.yaml"),
                                            "--model_name_or_path", tiny_janus_dir, "--dataset_name", data,
                                            "--output_dir", str(out), *TINY_RUN])
    assert "SFT finished 2 steps on 8 pairs" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "sampling_config.json").is_file()
    monkeypatch.undo()
    examples_loader.load("train_janus").main([
        "--recipe", os.path.join(REPO, "recipes/janus_clip.yaml"), "--model_name_or_path", str(out),
        "--model_init_kwargs", '{"dtype": "float32"}', "--dataset_name", data, "--reward_funcs", "tiny_clip",
        "--output_dir", str(tmp_path / "ranke"), "--bf16", "false", "--decoder_bf16", "false", "--lambda_lpips", "0",
        "--max_steps", "1", "--per_device_train_batch_size", "8", "--num_generations", "4", "--decoder_batch_size",
        "4", "--save_strategy", "no", "--log_images_steps", "0", "--report_to", "none",
    ])
    assert "RankE finished 1 steps." in capsys.readouterr().out


def test_the_sft_output_generates_images_for_evaluation(tmp_path, tiny_janus_dir):
    from ranke_trl.generation import TextToImagePipeline

    data, _ = curated_like(tiny_janus_dir, tmp_path / "data", rows=4)
    out = tmp_path / "sft"
    examples_loader.load("train_sft").main(["--recipe", os.path.join(REPO, "recipes/janus_sft.yaml"),
                                            "--model_name_or_path", tiny_janus_dir, "--dataset_name", data,
                                            "--output_dir", str(out), *TINY_RUN, "--save_strategy", "no"])
    images = TextToImagePipeline.from_pretrained(str(out))(["a red square"], seed=0)
    assert len(images) == 1 and not list(out.glob("checkpoint-*"))


def test_llamagen_sft_goes_through_the_same_script(tmp_path, capsys):
    from ranke_trl.models.llamagen.tiny_llamagen import save_tiny_llamagen
    from ranke_trl.policy import load_policy_model

    model_dir = save_tiny_llamagen(tmp_path / "llamagen")
    data, _ = curated_like(model_dir, tmp_path / "data", rows=4)
    out = tmp_path / "sft"
    examples_loader.load("train_sft").main(["--recipe", os.path.join(REPO, "recipes/llamagen_sft.yaml"),
                                            "--model_name_or_path", model_dir, "--dataset_name", data,
                                            "--output_dir", str(out), *TINY_RUN, "--save_strategy", "no"])
    assert "SFT finished 2 steps on 4 pairs" in capsys.readouterr().out
    model, _ = load_policy_model(str(out), parse_sft_recipe(["--bf16", "false"])[1])
    assert type(model).__name__ == "LlamaGenForImageGeneration"


def _tiny_sft(model_dir, **overrides):
    from ranke_trl.policy import load_policy_model, make_policy

    model, processor = load_policy_model(model_dir, parse_sft_recipe(["--bf16", "false"])[1])
    settings = dict(num_train_steps=4, batch_size=3, learning_rate=3e-3, warmup_ratio=0.25, show_progress=False,
                    prompt_dropout=0.5)
    return ImageTokenSFT(make_policy(model, processor), model, ImageTokenSFTConfig(**{**settings, **overrides}))


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_janus_dir):
    _, dataset = curated_like(tiny_janus_dir, tmp_path / "data", rows=5)  # 5 rows, batches of 3: epochs straddle
    prompts, codes = dataset["prompt"], torch.tensor(dataset["gt_codes"])
    straight = _tiny_sft(tiny_janus_dir)
    losses = straight.fit(prompts, codes, tmp_path / "straight", save_steps=2)
    stopped = _tiny_sft(tiny_janus_dir)
    step = stopped.step

    def killed_after_two_steps(*args):
        if stopped.global_step == 2:
            raise KeyboardInterrupt
        return step(*args)

    stopped.step = killed_after_two_steps
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(prompts, codes, tmp_path / "stopped", save_steps=2)
    resumed = _tiny_sft(tiny_janus_dir)  # fresh weights: all state comes from the checkpoint
    assert resumed.fit(prompts, codes, tmp_path / "resumed", resume_from_checkpoint=tmp_path / "stopped" /
                       "checkpoint-2") == losses
    expected, got = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert resumed.global_step == 4 and len(losses) == 4
    assert not torch.equal(expected["model.generation_head.vision_head.weight"],
                           _tiny_sft(tiny_janus_dir).model.state_dict()["model.generation_head.vision_head.weight"])


def test_without_stored_codes_the_images_are_encoded(tmp_path, tiny_janus_dir):
    from ranke_trl.corpus import image_to_tensor
    from ranke_trl.sft import ground_truth_codes

    codec, _ = load_codec(tiny_janus_dir, device="cpu")
    images = colour_squares(3, image_size=codec.image_size)
    expected = codec.encode(torch.stack([image_to_tensor(image, codec.image_size) for image in images["image"]]))
    assert torch.equal(ground_truth_codes(images, codec), expected)
    wrong = images.add_column("gt_codes", [[0, 1]] * 3)  # another backbone's length: ignored
    assert torch.equal(ground_truth_codes(wrong, codec), expected)
