"""Bad input and faults, one case per class: each is refused early with an error that names the problem (and the
fix), or the run is unharmed. Checkpoint damage and signals are in test_crash_safety.py and test_signals.py."""

import math
import pickle

import numpy as np
import pytest
import torch
from datasets import Dataset

from ranke_trl import RankEConfig, RankEGRPOTrainer
from ranke_trl.rewards import CLIPReward
from tiny_data import colour_squares


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=8, num_generations=4,
                  max_steps=1, report_to=[], save_strategy="no", lambda_lpips=0.0, log_images_steps=0,
                  decoder_batch_size=4)
    values.update(overrides)
    return RankEConfig(**values)


def _trainer(tmp_path, model, processor, reward=None, dataset=None, **overrides):
    return RankEGRPOTrainer(model=model, reward_funcs=[reward or CLIPReward.tiny()], args=_config(tmp_path, **overrides),
                            train_dataset=colour_squares() if dataset is None else dataset,
                            processing_class=processor)


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lambda_rec": math.nan}, "lambda_rec must be a finite number"),
        ({"guidance_scale": math.nan}, "guidance_scale must be a finite number"),
        ({"decoder_learning_rate": -1e-4}, "decoder_learning_rate must be a finite number >= 0"),
        ({"ema_dtype": "bf16"}, "ema_dtype='bf16' is not one of"),
        ({"ema_device": "gpu0"}, "ema_device='gpu0' is not a device"),
        ({"prompt_template": "a photo"}, r"has no '\{prompt\}' slot"),
        ({"top_p": 1.5}, r"top_p must lie in \(0, 1\]"),
        ({"rank_gan_temperature": -1.0}, "rank_gan_temperature must be > 0 or inf"),
    ],
)
def test_bad_settings_fail_at_config_time_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


# ------------------------------------------------------------------------------------------------ datasets
@pytest.mark.parametrize(
    "rows, message",
    [
        ({"text": ["a red square"] * 8}, "no 'prompt' column"),
        ({"prompt": ["a red square"] * 3 + [None] * 5}, r"Row 3 .* prompt None"),
        ({"prompt": ["a red square"] * 7 + ["  "]}, "Row 7"),
        ({"prompt": ["a red square"]}, "fewer than one generation batch"),
    ],
)
def test_bad_datasets_fail_before_the_model_is_touched(tmp_path, tiny_janus, tiny_processor, rows, message):
    vq = tiny_janus.model.vqmodel
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, tiny_janus, tiny_processor, dataset=Dataset.from_dict(rows), train_decoder=False)
    assert tiny_janus.model.vqmodel is vq


def test_an_unusable_corpus_image_is_named_by_its_row(tmp_path, tiny_janus, tiny_processor):
    images = [np.full((64, 64, 3), 200, dtype=np.uint8)] * 6 + [np.zeros((64, 64, 4), dtype=np.uint8)] * 2
    dataset = Dataset.from_dict({"prompt": ["a red square"] * 8, "image": images})
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, dataset=dataset)
    with pytest.raises(ValueError, match="row 6 of column 'image'"):
        trainer.train()


def test_grey_arrays_and_image_paths_are_usable_corpus_images(tmp_path):
    from PIL import Image

    from ranke_trl.corpus import image_to_tensor

    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    assert image_to_tensor(str(path), 16)[0].min() == 1.0
    assert image_to_tensor(np.zeros((32, 32), dtype=np.uint8), 16).shape == (3, 16, 16)


# ------------------------------------------------------------------------------------------------ rewards
@pytest.mark.parametrize(
    "output, message",
    [
        (lambda n: torch.zeros(n, 2), r"tensor of shape \(8, 2\)"),
        (lambda n: ["high"] * n, "returned 'high'"),
        (lambda n: torch.zeros(n, device="meta"), "meta tensor"),
        (lambda n: [0.0] * (n - 1) + [math.inf], "returned inf for image 7"),
        (lambda n: [0.0] * (n - 1), "returned 7 scores for 8 images"),
    ],
)
@pytest.mark.parametrize("mode", ["std_rl", "ranke"])
def test_bad_reward_outputs_name_the_reward_in_every_mode(tmp_path, tiny_janus, tiny_processor, output, message,
                                                          mode):
    def odd_reward(prompts, completions, **kwargs):
        return output(len(completions))

    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, reward=odd_reward, train_decoder=mode == "ranke")
    with pytest.raises((TypeError, ValueError), match=f"odd_reward.*{message}|{message}"):
        trainer.train()


def test_unscored_rollouts_train_without_stage_2_weight_and_are_counted(tmp_path, tiny_janus, tiny_processor):
    def partial_reward(prompts, completions, **kwargs):  # cannot score every fourth image
        return [None if i % 4 == 0 else float(image[0].mean()) for i, image in enumerate(completions)]

    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, reward=partial_reward, max_steps=2)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "decoder/unscored_rollouts" in entry]
    assert logged and logged[0]["decoder/unscored_rollouts"] == 4  # 2 of the 8 rollouts of each of the 2 phases


# ------------------------------------------------------------------------------------------------ model and VQ
def test_a_vq_with_a_smaller_codebook_than_the_policy_is_refused(tmp_path, tiny_processor):
    from transformers import JanusVQVAE

    from ranke_trl.tiny import build_tiny_janus, tiny_janus_config

    model = build_tiny_janus()
    model.model.vqmodel = JanusVQVAE(tiny_janus_config(codebook_size=128).vq_config)
    with pytest.raises(ValueError, match="attached VQ codebook has 128 entries"):
        _trainer(tmp_path, model, tiny_processor)


# ------------------------------------------------------------------------------------------------ launch
def test_a_cpu_deepspeed_launch_without_gloo_names_the_flag(tmp_path, tiny_janus, tiny_processor, monkeypatch):
    config = _config(tmp_path)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="--ddp_backend gloo"):
        RankEGRPOTrainer(model=tiny_janus, reward_funcs=[CLIPReward.tiny()], args=config,
                         train_dataset=colour_squares(), processing_class=tiny_processor)


# ------------------------------------------------------------------------------------------------ secrets
def test_the_hub_token_never_reaches_the_disk(tmp_path, tiny_janus, tiny_processor):
    secret = "hf_NOT_A_REAL_TOKEN_1234567890"
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, hub_token=secret, save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_model()
    assert trainer.args.hub_token == secret  # still there for push_to_hub
    assert secret.encode() not in pickle.dumps(trainer.args)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)
    assert not [p for p in written if secret.encode() in p.read_bytes()]


def test_a_data_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    from ranke_trl.data import load_prompt_dataset

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "a red square"}\n{"prompt": "a caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl is not UTF-8 text: line 2"):
        load_prompt_dataset(str(path))


@pytest.mark.parametrize("key, value", [("reward_batch_size", "0"), ("max_train_samples", "0")])
def test_recipe_arguments_out_of_range_are_refused_by_name(key, value):
    from ranke_trl.recipes import RecipeError, parse_recipe

    with pytest.raises(RecipeError, match=f"{key} must be >= 1"):
        parse_recipe(["--bf16", "false", f"--{key}", value])
