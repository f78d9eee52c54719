"""RankEGRPOTrainer on a tiny LlamaGen (64 px, 4x4 codes, codebook 256, 2-layer GPT, 2-layer T5), unchanged trainer:
Std. RL, Decoder-only and RankE steps, and the saved output reloading as the whole system and as `decoder/`."""

import pytest
import torch
from tiny_data import colour_squares

from ranke_trl import RankEConfig, RankEGRPOTrainer
from ranke_trl.models.llamagen import LlamaGenForImageGeneration, LlamaGenVQVAE
from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen, build_tiny_llamagen_processor
from ranke_trl.rewards import CLIPReward


@pytest.fixture
def llamagen():
    return build_tiny_llamagen(seed=0)


@pytest.fixture(scope="module")
def processor():
    return build_tiny_llamagen_processor()


def _trainer(tmp_path, model, processor, **overrides):
    args = dict(
        output_dir=str(tmp_path),
        bf16=False,
        per_device_train_batch_size=8,
        num_generations=4,
        max_steps=2,
        learning_rate=1e-3,
        decoder_learning_rate=1e-3,
        discriminator_learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        decoder_batch_size=4,
        lambda_lpips=0.0,  # LPIPS needs ImageNet weights, unavailable offline
        log_images_steps=0,
        guidance_scale=7.5,  # LlamaGen's default
        seed=0,
    )
    args.update(overrides)
    return RankEGRPOTrainer(
        model=model,
        reward_funcs=[CLIPReward.tiny()],
        args=RankEConfig(**args),
        train_dataset=colour_squares(),
        processing_class=processor,
    )


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module, prefix=""):
    after = module.state_dict()
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def test_std_rl_trains_the_gpt_and_leaves_the_vq_and_the_text_encoder_bit_identical(tmp_path, llamagen, processor):
    gpt_before = _snapshot(llamagen.model.language_model)
    head_before, projector_before = _snapshot(llamagen.lm_head), _snapshot(llamagen.model.caption_projector)
    frozen_before = _snapshot(llamagen.model.text_encoder), _snapshot(llamagen.model.vqmodel)
    trainer = _trainer(tmp_path, llamagen, processor, train_decoder=False)
    trainer.train()
    assert _changed(gpt_before, llamagen.model.language_model, "layers.0.self_attn.q_proj")
    assert _changed(head_before, llamagen.lm_head)
    assert _changed(projector_before, llamagen.model.caption_projector, "fc1")
    assert not _changed(projector_before, llamagen.model.caption_projector, "uncond_embedding")
    assert not _changed(frozen_before[0], llamagen.model.text_encoder)
    assert not _changed(frozen_before[1], trainer.codec.module)
    assert any(k.startswith("rewards/") for entry in trainer.state.log_history for k in entry)


def test_decoder_only_trains_the_decoder_and_leaves_the_policy_bit_identical(tmp_path, llamagen, processor):
    policy_before = {n: p.detach().clone() for n, p in llamagen.named_parameters() if "vqmodel" not in n}
    vq_before = _snapshot(llamagen.model.vqmodel)
    trainer = _trainer(tmp_path, llamagen, processor, train_policy=False)
    trainer.train()
    after = dict(llamagen.named_parameters())
    assert all(torch.equal(p, after[n]) for n, p in policy_before.items())
    vq = trainer.codec.module
    assert _changed(vq_before, vq, "decoder.")
    assert not _changed(vq_before, vq, "encoder.") and not _changed(vq_before, vq, "quantize.")


def test_ranke_output_reloads_as_the_whole_system_and_decoder_alone(tmp_path, llamagen, processor):
    from transformers import AutoModel, AutoProcessor

    head_before = _snapshot(llamagen.lm_head)
    trainer = _trainer(tmp_path, llamagen, processor)
    trainer.train()
    trainer.save_model()
    assert _changed(head_before, llamagen.lm_head)
    trained_vq = trainer.codec.module.state_dict()
    assert _changed(_snapshot(build_tiny_llamagen(seed=0).model.vqmodel), trainer.codec.module, "decoder.")

    whole = AutoModel.from_pretrained(tmp_path)
    assert isinstance(whole, LlamaGenForImageGeneration)
    assert all(torch.equal(trained_vq[k], v) for k, v in whole.model.vqmodel.state_dict().items())
    assert torch.equal(whole.lm_head.weight, llamagen.lm_head.weight)
    decoder = LlamaGenVQVAE.from_pretrained(tmp_path, subfolder="decoder")
    assert all(torch.equal(trained_vq[k], v) for k, v in decoder.state_dict().items())
    processor_again = AutoProcessor.from_pretrained(tmp_path)
    codes = whole.generate(**processor_again(["a red square"]), generator=torch.Generator().manual_seed(0))
    assert whole.decode_image_tokens(codes).shape == (1, 3, 64, 64)


def test_the_llamagen_recipe_trains_a_saved_llamagen_through_the_training_script(tmp_path, capsys):
    import os

    import examples_loader

    from ranke_trl.models.llamagen.tiny_llamagen import save_tiny_llamagen

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model_dir = save_tiny_llamagen(tmp_path / "tiny-llamagen")  # stands in for the converted LlamaGen-XL
    examples_loader.load("train_janus").main(
        [
            "--recipe", os.path.join(repo, "recipes/llamagen_clip.yaml"),
            "--model_name_or_path", model_dir, "--model_init_kwargs", '{"dtype": "float32"}',
            "--dataset_name", "tiny", "--prompt_column", "prompt", "--image_column", "image",
            "--reward_funcs", "tiny_clip", "--output_dir", str(tmp_path / "run"),
            "--bf16", "false", "--decoder_bf16", "false", "--lambda_lpips", "0", "--max_steps", "1",
            "--per_device_train_batch_size", "8", "--num_generations", "4", "--decoder_batch_size", "4",
            "--max_train_samples", "8", "--save_strategy", "no", "--log_images_steps", "0", "--report_to", "none",
        ]
    )  # fmt: skip
    assert "RankE finished 1 steps." in capsys.readouterr().out
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "decoder").is_dir()


def test_lora_trains_the_generation_path_and_its_output_loads_as_the_merged_system(tmp_path, processor):
    import copy

    from peft import LoraConfig

    from ranke_trl.models.llamagen.tiny_llamagen import save_tiny_llamagen
    from ranke_trl.policy import load_policy_model

    base = save_tiny_llamagen(tmp_path / "base")  # a path, so the adapter names its base model
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0)
    trainer = RankEGRPOTrainer(
        model=base, reward_funcs=[CLIPReward.tiny()], train_dataset=colour_squares(), processing_class=processor,
        args=RankEConfig(output_dir=str(tmp_path / "run"), bf16=False, per_device_train_batch_size=8,
                         num_generations=4, max_steps=1, learning_rate=1e-2, report_to=[], save_strategy="no",
                         decoder_batch_size=4, lambda_lpips=0.0, log_images_steps=0, sync_ref_model=False),
        peft_config=lora,
    )  # fmt: skip
    trainer.train()
    adapted = {n for n, m in trainer.model.get_base_model().named_modules() if hasattr(m, "lora_A")}
    assert "lm_head" in adapted and not any(n.startswith(("model.text_encoder", "model.vqmodel")) for n in adapted)
    out = tmp_path / "final"
    trainer.save_model(str(out))
    model, _ = load_policy_model(str(out), RankEConfig(output_dir=str(tmp_path), bf16=False))
    expected = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    loaded = model.state_dict()
    for key, value in expected.items():
        if not key.startswith("model.vqmodel."):
            torch.testing.assert_close(loaded[key], value, msg=key)
    for key, value in trainer.codec.module.state_dict().items():  # the co-evolved decoder, from `decoder/`
        assert torch.equal(loaded[f"model.vqmodel.{key}"], value), key


def test_tiny_llamagen_is_a_recipe_model_source_built_offline():
    import os

    from ranke_trl.models.llamagen import LlamaGenProcessor
    from ranke_trl.recipes import build_policy, parse_recipe

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipe = os.path.join(repo, "recipes/tiny_llamagen_clip.yaml")
    script_args, config = parse_recipe(["--recipe", recipe, "--seed", "3"])
    model, processor = build_policy(script_args, config)
    assert isinstance(model, LlamaGenForImageGeneration) and isinstance(processor, LlamaGenProcessor)
    expected = build_tiny_llamagen(seed=3).state_dict()  # the recipe's seed
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
