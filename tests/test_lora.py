"""LoRA on the policy: only the adapter (and, in full, the decoder) trains; the reference is the adapter-disabled base
model; the saved adapter and decoder merge back into the trained system."""

import copy
import logging

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import JanusVQVAE, TrainerCallback

from ranke_trl import RankEConfig, RankEGRPOTrainer
from tiny_data import colour_squares
from ranke_trl.recipes import build_peft_config, parse_recipe
from ranke_trl.rewards import CLIPReward


def _args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=8, num_generations=4, max_steps=2,
        learning_rate=1e-2, decoder_learning_rate=1e-3, discriminator_learning_rate=1e-3, logging_steps=1,
        report_to=[], save_strategy="no", decoder_batch_size=4, lambda_lpips=0.0, log_images_steps=0, seed=0,
        data_seed=0, lr_scheduler_type="constant", sync_ref_model=False,
    )
    defaults.update(overrides)
    return RankEConfig(**defaults)


def _lora(**overrides):
    return LoraConfig(**{"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, **overrides})


def _trainer(tmp_path, model, processor, peft_config=None, **overrides):
    return RankEGRPOTrainer(
        model=model, reward_funcs=[CLIPReward.tiny()], args=_args(tmp_path, **overrides), train_dataset=colour_squares(),
        processing_class=processor, peft_config=peft_config or _lora(),
    )


def _adapted_modules(trainer) -> set[str]:
    base = trainer.model.get_base_model()
    return {name for name, module in base.named_modules() if hasattr(module, "lora_A")}


def test_lora_trains_only_the_adapter_and_the_decoder(tmp_path, tiny_janus, tiny_processor):
    policy_before = {n: p.detach().clone() for n, p in tiny_janus.named_parameters() if "vqmodel" not in n}
    vq_before = {k: v.clone() for k, v in tiny_janus.model.vqmodel.state_dict().items()}
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor)
    trainer.train()
    after = dict(trainer.model.get_base_model().named_parameters())
    for name, value in policy_before.items():  # adapted modules keep their weights under `<module>.base_layer.`
        module, leaf = name.rsplit(".", 1)
        current = after[name] if name in after else after[f"{module}.base_layer.{leaf}"]
        assert torch.equal(value, current), f"{name} changed"
    lora_b = {n: p for n, p in after.items() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # B starts at zero: every adapter trained
    vq = trainer.codec.module.state_dict()
    assert any(not torch.equal(vq_before[k], vq[k]) for k in vq if k.startswith("decoder."))


def test_default_targets_are_the_generation_path(tmp_path, tiny_janus, tiny_processor):
    adapted = _adapted_modules(_trainer(tmp_path, tiny_janus, tiny_processor))
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    language = {n for n in adapted if n.startswith("model.language_model.")}
    assert {n.rsplit(".", 1)[1] for n in language} == projections and len(language) == 2 * len(projections)
    assert {n for n in adapted if not n.startswith("model.language_model.")} == {
        "model.generation_aligner.fc1", "model.generation_aligner.hidden_layers.0",
        "model.generation_head.proj_out", "model.generation_head.vision_head",
    }


def test_named_targets_stay_inside_the_generation_path(tmp_path, tiny_janus, tiny_processor):
    # Both names also exist in the vision tower (q_proj) and the understanding aligner (fc1), which must stay bare.
    adapted = _adapted_modules(_trainer(tmp_path, tiny_janus, tiny_processor, _lora(target_modules=["q_proj", "fc1"])))
    assert adapted == {
        "model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.1.self_attn.q_proj",
        "model.generation_aligner.fc1",
    }


class _LogProbSpy:
    """Records, for each teacher-forced pass, whether the adapter was disabled, its inputs and its log-probs."""

    def __init__(self, trainer):
        self.calls, policy = [], trainer.policy
        self.lora_layer = trainer.model.get_base_model().model.generation_head.vision_head
        original = policy._teacher_forced

        def spy(janus, input_ids, attention_mask, codes, **kwargs):
            out = original(janus, input_ids, attention_mask, codes, **kwargs)
            inputs = (input_ids.clone(), attention_mask.clone(), codes.clone(), kwargs)
            self.calls.append((self.lora_layer.disable_adapters, inputs, out.log_probs.detach().clone()))
            return out

        policy._teacher_forced = spy


def test_reference_is_the_base_model_with_the_adapter_disabled(tmp_path, tiny_janus, tiny_processor):
    from ranke_trl.policy import JanusPolicy
    from ranke_trl.tiny import build_tiny_janus

    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, learning_rate=5e-2, beta=0.5)
    assert trainer.ref_model is None
    spy = _LogProbSpy(trainer)
    trainer.train()
    reference_calls = [call for call in spy.calls if call[0]]
    assert reference_calls and len(reference_calls) < len(spy.calls)  # the loss itself runs with the adapter on
    base = build_tiny_janus(seed=0)
    JanusPolicy(tiny_processor, base).prepare_for_training(base)
    input_ids, mask, codes, kwargs = reference_calls[-1][1]  # step 2: the adapter has trained by now
    with torch.no_grad():
        expected = base(input_ids=input_ids, attention_mask=mask, image_codes=codes, image_code_kwargs=kwargs)
    torch.testing.assert_close(reference_calls[-1][2], expected.log_probs)
    assert trainer.state.log_history[1]["kl"] > 0


def test_sync_ref_model_is_switched_off_with_a_warning(tmp_path, tiny_janus, tiny_processor, caplog):
    with caplog.at_level(logging.WARNING, logger="ranke_trl.trainer"):
        trainer = _trainer(tmp_path, tiny_janus, tiny_processor, sync_ref_model=True)
    assert trainer.args.sync_ref_model is False
    assert "adapter disabled" in caplog.text


def test_saved_adapter_and_decoder_merge_into_the_trained_system(tmp_path, tiny_janus, tiny_processor):
    from ranke_trl.tiny import build_tiny_janus

    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, max_steps=1)
    trainer.train()
    out = tmp_path / "final"
    trainer.save_model(str(out))
    assert (out / "adapter_model.safetensors").exists() and (out / "decoder" / "model.safetensors").exists()

    merged = PeftModel.from_pretrained(build_tiny_janus(seed=0), out).merge_and_unload()
    merged.model.vqmodel = JanusVQVAE.from_pretrained(out, subfolder="decoder")
    expected = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    loaded = merged.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, msg=key)
    for key, value in trainer.codec.module.state_dict().items():
        assert torch.equal(loaded[f"model.vqmodel.{key}"], value), key


def test_lora_output_dir_loads_as_the_merged_system_for_evaluation(tmp_path, tiny_janus_dir, tiny_processor):
    from ranke_trl.evaluation.runner import EvalArguments, load_system

    trainer = _trainer(tmp_path, tiny_janus_dir, tiny_processor, max_steps=1)  # a path: the adapter names its base
    trainer.train()
    out = tmp_path / "final"
    trainer.save_model(str(out))
    model, policy, codec = load_system(EvalArguments(policy_name_or_path=str(out), prompt_set="shapes", metrics=["clip_score"]), "cpu")
    expected = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    loaded = model.state_dict()
    for key, value in expected.items():
        if not key.startswith("model.vqmodel."):
            torch.testing.assert_close(loaded[key], value, msg=key)
    for key, value in trainer.codec.module.state_dict().items():  # the co-evolved VQ, not the base model's
        assert torch.equal(codec.module.state_dict()[key], value), key


def test_lora_output_without_a_base_model_fails_with_the_fix(tmp_path, tiny_janus, tiny_processor):
    from ranke_trl.policy import load_policy_model

    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, max_steps=1)  # built in memory: no base path
    trainer.save_model(str(tmp_path / "final"))
    with pytest.raises(ValueError, match="names no base model"):
        load_policy_model(str(tmp_path / "final"), RankEConfig(output_dir=str(tmp_path), bf16=False))


class _RecordAtTrainBegin(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.adapter, self.decoder = trainer, None, None

    def on_train_begin(self, args, state, control, **kwargs):
        named = self.trainer.model.named_parameters()
        self.adapter = {n: p.detach().clone() for n, p in named if "lora_" in n}
        self.decoder = {k: v.clone() for k, v in self.trainer.codec.module.state_dict().items()}


def test_checkpoint_resumes_adapter_and_decoder(tmp_path, tiny_processor):
    from ranke_trl.tiny import build_tiny_janus

    first = _trainer(tmp_path, build_tiny_janus(seed=0), tiny_processor, save_strategy="steps", save_steps=2)
    first.train()
    resumed = _trainer(tmp_path, build_tiny_janus(seed=0), tiny_processor, max_steps=3)
    recorder = _RecordAtTrainBegin(resumed)
    resumed.add_callback(recorder)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    trained = {n: p for n, p in first.model.named_parameters() if "lora_" in n}
    assert recorder.adapter.keys() == trained.keys()
    assert all(torch.equal(recorder.adapter[n], trained[n].detach()) for n in trained)
    assert all(torch.equal(recorder.decoder[k], v) for k, v in first.codec.module.state_dict().items())
    assert resumed.state.global_step == 3


def test_recipe_keys_build_the_lora_config():
    script_args, _ = parse_recipe(
        ["--recipe", "recipes/tiny_janus_clip.yaml", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
         "--lora_dropout", "0.1", "--lora_target_modules", "q_proj", "v_proj"]
    )
    config = build_peft_config(script_args)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    script_args, _ = parse_recipe(["--recipe", "recipes/tiny_janus_clip.yaml"])
    assert build_peft_config(script_args) is None


def test_example_script_trains_and_saves_a_lora_run(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_janus", "examples/train_janus.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--recipe", "recipes/tiny_janus_clip.yaml", "--use_peft", "true", "--max_steps", "1",
                 "--output_dir", str(tmp_path), "--report_to", "none", "--save_strategy", "no",
                 "--max_train_samples", "8", "--sync_ref_model", "false"])
    assert (tmp_path / "adapter_config.json").exists() and (tmp_path / "decoder" / "config.json").exists()
