"""RankEGRPOTrainer with the decoder phase: modes, checkpoints and resume, the saved system, the Hub push."""

import os
from pathlib import Path
from unittest import mock

import pytest
import torch
from datasets import Dataset

from ranke_trl import RankEConfig, RankEGRPOTrainer
from tiny_data import colour_squares
from ranke_trl.rewards import CLIPReward


def _args(tmp_path, **overrides):
    defaults = dict(
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
        seed=0,
        data_seed=0,
        lr_scheduler_type="constant",  # so a run stopped early follows the same schedule as a full one
    )
    defaults.update(overrides)
    return RankEConfig(**defaults)


def _trainer(tmp_path, model, processor, reward=None, dataset=None, **overrides):
    return RankEGRPOTrainer(
        model=model,
        reward_funcs=[reward or CLIPReward.tiny()],
        args=_args(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else colour_squares(),
        processing_class=processor,
    )


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module, prefix=""):
    after = module.state_dict()
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_processor):
    """One default RankE run (2 steps, a checkpoint at step 2, then `save_model`), read by every test of what such a
    run changes, logs and saves: `(trainer, model, before)`, `before` holding the generation head, the VQ and the
    decoding of fixed codes from before training."""
    from ranke_trl.tiny import build_tiny_janus

    torch.manual_seed(0)
    model = build_tiny_janus(seed=0)
    trainer = _trainer(tmp_path_factory.mktemp("ranke"), model, tiny_processor, save_strategy="steps", save_steps=2)
    codes = torch.randint(0, 256, (2, 64))
    before = {"policy": _snapshot(model.model.generation_head), "vq": _snapshot(model.model.vqmodel), "codes": codes,
              "decoded": trainer.codec.decode_images(codes)}
    trainer.train()
    trainer.save_model()
    return trainer, model, before


def test_ranke_trains_both_policy_and_decoder(trained):
    trainer, model, before = trained
    policy_before, vq_before = before["policy"], before["vq"]
    assert _changed(policy_before, model.model.generation_head)
    vq = trainer.codec.module
    assert _changed(vq_before, vq, "decoder.") and _changed(vq_before, vq, "post_quant_conv.")
    assert not _changed(vq_before, vq, "encoder.") and not _changed(vq_before, vq, "quant_conv.")
    assert not _changed(vq_before, vq, "quantize.")  # codebook frozen by default


def test_decoder_only_leaves_policy_bit_identical(tmp_path, tiny_janus, tiny_processor):
    policy_params = {n: p.detach().clone() for n, p in tiny_janus.named_parameters() if "vqmodel" not in n}
    vq_before = _snapshot(tiny_janus.model.vqmodel)
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, train_policy=False, max_steps=1)
    trainer.train()
    assert all(torch.equal(p, dict(tiny_janus.named_parameters())[n]) for n, p in policy_params.items())
    assert _changed(vq_before, trainer.codec.module, "decoder.")


def test_next_rollouts_are_decoded_by_the_updated_decoder(trained):
    trainer, _, before = trained
    assert not torch.allclose(before["decoded"], trainer.codec.decode_images(before["codes"]))


def test_decoder_phase_metrics_are_logged(trained):
    trainer, _, _ = trained
    logged = {k for entry in trainer.state.log_history for k in entry}
    expected = {
        "decoder/loss_rbp", "decoder/loss_gan", "decoder/loss_rec", "decoder/loss_cons",
        "decoder/disc_real_logit", "decoder/disc_fake_logit", "decoder/rank_weight_max", "decoder/rank_weight_ess",
        "decoder/heldout_rec_l1", "shift/batch_token_kl_bits", "shift/batch_entropy_bits",
    }
    assert expected <= logged


@pytest.mark.parametrize("term", ["rbp", "gan", "rec", "cons"])
def test_zero_weight_ablation_leaves_its_term_uncomputed(tmp_path, tiny_janus, tiny_processor, term):
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, max_steps=1, **{f"lambda_{term}": 0.0})
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert f"decoder/loss_{term}" not in logged
    assert {f"decoder/loss_{t}" for t in {"rbp", "gan", "rec", "cons"} - {term}} <= logged


def test_explicit_reward_backprop_without_differentiable_reward_fails_at_start(tmp_path, tiny_janus, tiny_processor):
    def black_box(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="lambda_rbp=0.5 needs a differentiable reward"):
        _trainer(tmp_path, tiny_janus, tiny_processor, reward=black_box, lambda_rbp=0.5)


def test_ranke_defaults_run_with_a_plain_black_box_trl_reward(tmp_path, tiny_janus, tiny_processor, caplog):
    def black_box(prompts, completions, **kwargs):
        return [float(image[0].mean()) for image in completions]

    config = RankEConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=8, num_generations=4,
                         max_steps=1, report_to=[], save_strategy="no", lambda_lpips=0.0, log_images_steps=0)
    assert config.lambda_rbp is None  # on when a differentiable reward is present
    with caplog.at_level("INFO", logger="ranke_trl.trainer"):
        trainer = RankEGRPOTrainer(model=tiny_janus, reward_funcs=black_box, args=config,
                                   train_dataset=colour_squares(), processing_class=tiny_processor)
    assert trainer.args.lambda_rbp == 0.0 and "L_rbp: off" in caplog.text
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "decoder/loss_gan" in logged and "decoder/loss_rbp" not in logged
    trainer.save_model()
    assert "no reward back-propagation" in (tmp_path / "README.md").read_text()


def test_reward_backprop_is_on_by_default_with_a_differentiable_reward(trained):
    trainer, _, _ = trained  # CLIPReward.tiny() is differentiable
    assert trainer.args.lambda_rbp == 0.5


def test_reconstruction_without_image_column_fails_at_start(tmp_path, tiny_janus, tiny_processor):
    prompts_only = Dataset.from_dict({"prompt": ["a red square"] * 8})
    with pytest.raises(ValueError, match="image"):
        _trainer(tmp_path, tiny_janus, tiny_processor, dataset=prompts_only)


def test_final_output_loads_as_the_whole_co_evolved_system(trained):
    from transformers import AutoProcessor, JanusForConditionalGeneration, JanusVQVAE

    trainer, model, _ = trained
    out = trainer.args.output_dir
    decoder_state = trainer.codec.module.state_dict()
    whole = JanusForConditionalGeneration.from_pretrained(out)
    decoder = JanusVQVAE.from_pretrained(out, subfolder="decoder")
    assert all(torch.equal(decoder_state[k], v) for k, v in whole.model.vqmodel.state_dict().items())
    assert all(torch.equal(decoder_state[k], v) for k, v in decoder.state_dict().items())
    head = model.model.generation_head.vision_head.weight
    assert torch.equal(whole.model.generation_head.vision_head.weight, head)
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "JanusProcessor"


def test_model_card_names_method_rewards_steps_and_decoder_loading(trained):
    trainer, _, _ = trained
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    for needle in ["RankE", "`clip`", "training steps | 2", 'subfolder="decoder"', "decoder/loss", "rewards/clip/mean"]:
        assert needle in card


def test_push_to_hub_uploads_system_decoder_and_card(tmp_path, tiny_janus, tiny_processor):
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, max_steps=1, hub_model_id="me/tiny-ranke")
    trainer.train()
    api = mock.MagicMock()
    api.create_repo.return_value.repo_id = "me/tiny-ranke"
    with mock.patch("transformers.trainer.hf_api", return_value=api):  # the Hub boundary
        trainer.push_to_hub()
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["repo_id"] == "me/tiny-ranke" and kwargs["folder_path"] == str(tmp_path)
    assert (tmp_path / "decoder" / "model.safetensors").exists()
    assert (tmp_path / "README.md").exists() and (tmp_path / "model.safetensors").exists()


def test_checkpoint_is_complete(trained):
    trainer, _, _ = trained
    checkpoint = Path(trainer.args.output_dir) / "checkpoint-2"
    for name in ["model.safetensors", "decoder", "ema_decoder", "ranke_stage2.pt", "optimizer.pt", "rng_state.pth"]:
        assert (checkpoint / name).exists(), name
    state = torch.load(checkpoint / "ranke_stage2.pt", weights_only=True)
    assert {"decoder_phase", "rollout_buffer", "decoder_phases"} <= set(state)


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory, tiny_processor):
    """`(straight, resumed, first, reference_at_resume_start)`: 3 uninterrupted steps, and 2 steps with a checkpoint
    then 1 step resumed from it in a fresh trainer. The reference is synced every step (an EMA), so by step 2 it is
    no longer the initial policy and a resume must restore it too."""
    from ranke_trl.tiny import build_tiny_janus

    out = tmp_path_factory.mktemp("resume")
    sync = dict(max_steps=3, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5)
    straight = _trainer(out / "a", build_tiny_janus(seed=0), tiny_processor, **sync)
    straight.train()
    first = _trainer(out / "b", build_tiny_janus(seed=0), tiny_processor, save_strategy="steps", save_steps=2, **sync)
    # Stop after step 2 as a crash would: train to 2 steps with the 3-step schedule, then resume in a fresh trainer.
    first.args.max_steps = 2
    first.train()
    resumed = _trainer(out / "b", build_tiny_janus(seed=0), tiny_processor, **sync)
    initial_reference = {k: v.clone() for k, v in resumed.ref_model.state_dict().items()}
    resumed.train(resume_from_checkpoint=str(out / "b" / "checkpoint-2"))
    return straight, resumed, first, initial_reference


def test_resume_restores_the_ema_reference_policy(resume_runs):
    straight, resumed, first, initial = resume_runs
    assert os.path.isfile(os.path.join(first.args.output_dir, "checkpoint-2", "ref_model.safetensors"))
    a, b = straight.ref_model.state_dict(), resumed.ref_model.state_dict()
    key = "model.generation_head.vision_head.weight"
    assert not torch.equal(b[key], initial[key])
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


def test_resume_matches_an_uninterrupted_run(resume_runs):
    straight, resumed, _, _ = resume_runs
    assert resumed.state.global_step == 3
    a, b = straight.codec.module.state_dict(), resumed.codec.module.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    pa = straight.model.model.generation_head.vision_head.weight
    pb = resumed.model.model.generation_head.vision_head.weight
    torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)


def test_model_card_code_runs_and_generates_images(trained):
    import re

    trainer, _, _ = trained
    card = open(os.path.join(trainer.args.output_dir, "README.md")).read()
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", card, flags=re.S):
        exec(block, namespace)  # noqa: S102 - the card's own snippets, run as a user would
    assert len(namespace["images"]) == 2 and namespace["images"][0].size == (64, 64)
    assert torch.equal(namespace["decoder"].state_dict()["decoder.conv_in.weight"],
                       trainer.codec.module.state_dict()["decoder.conv_in.weight"])


def test_decoder_counters_are_logged_as_counts_not_window_means(tmp_path, tiny_janus, tiny_processor):
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, max_steps=2, logging_steps=2)
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "decoder/phases" in e)
    # The running totals at step 2, not their means over the logging window (1.5 phases, fewer steps).
    assert entry["decoder/phases"] == 2 and entry["decoder/decoder_steps"] == trainer.decoder_phase.num_steps
    assert entry["decoder/nonfinite_skipped"] == 0


def test_model_card_names_a_hub_base_model_by_id_and_never_a_local_path(tmp_path):
    from types import SimpleNamespace

    from ranke_trl.hub import base_model_name

    assert base_model_name(SimpleNamespace(_name_or_path="deepseek-community/Janus-Pro-1B", model_type="janus")) == (
        "deepseek-community/Janus-Pro-1B", True)
    name, on_hub = base_model_name(SimpleNamespace(_name_or_path=str(tmp_path / "policy"), model_type="janus"))
    assert not on_hub and str(tmp_path) not in name and "`policy`" in name


def test_stored_ground_truth_codes_are_used_instead_of_encoding(tmp_path, tiny_janus, tiny_processor, monkeypatch):
    dataset = colour_squares()
    stored = [[i % 256] * 64 for i in range(len(dataset))]
    dataset = dataset.add_column("gt_codes", stored)
    monkeypatch.setattr("ranke_trl.trainer.encode_corpus", lambda *a, **k: pytest.fail("re-encoded the images"))
    trainer = _trainer(tmp_path, tiny_janus, tiny_processor, dataset=dataset, max_steps=1)
    trainer.train()
    assert trainer.corpus_codes().tolist() == stored


def test_rbp_reward_funcs_drive_l_rbp_instead_of_the_grpo_reward(tmp_path, tiny_janus, tiny_processor):
    def black_box(prompts, completions, **kwargs):
        return [float(image[0].mean()) for image in completions]

    second = CLIPReward.tiny(seed=1)
    calls = []
    score = second.score
    second.score = lambda images, prompts: calls.append(len(images)) or score(images, prompts)
    trainer = RankEGRPOTrainer(model=tiny_janus, reward_funcs=[black_box], rbp_reward_funcs=[second],
                               args=_args(tmp_path, max_steps=1), train_dataset=colour_squares(),
                               processing_class=tiny_processor)
    assert trainer.args.lambda_rbp == 0.5  # on, through the second reward, though the GRPO reward is a black box
    assert trainer.decoder_phase.rbp_fns == [second]
    trainer.train()
    assert calls  # L_rbp scored decoded rollouts with the second reward
    assert "decoder/loss_rbp" in {k for entry in trainer.state.log_history for k in entry}


def test_a_black_box_rbp_reward_is_refused_by_name(tmp_path, tiny_janus, tiny_processor):
    def black_box(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="rbp_reward_funcs: 'black_box' is not differentiable"):
        RankEGRPOTrainer(model=tiny_janus, reward_funcs=[CLIPReward.tiny()], rbp_reward_funcs=[black_box],
                         args=_args(tmp_path), train_dataset=colour_squares(), processing_class=tiny_processor)
