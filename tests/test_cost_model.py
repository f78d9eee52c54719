"""`benchmarks/cost_model.py` counts what a Std. RL and a RankE step cost: FLOPs of known modules equal their analytic
count, the saved activations exclude the weights, a RankE step is a Std. RL step plus Stage 2, and its memory holds
the trained decoder's and the discriminator's optimizer states and the EMA teacher."""

import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cost_model():
    spec = importlib.util.spec_from_file_location("cost_model", os.path.join(ROOT, "benchmarks", "cost_model.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["cost_model"] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_units(cost_model):
    return cost_model.count_units("janus", "tiny", cost_model.Settings())


def test_a_linear_layer_counts_2_flops_per_multiply_add_and_3x_with_its_backward(cost_model):
    with torch.device("meta"):
        layer = torch.nn.Linear(64, 32, bias=False)
        x = torch.zeros(5, 64, requires_grad=True)
    forward, _ = cost_model.count(lambda: layer(x))
    # x * 1: FlopCounterMode's module hooks refuse a leaf module input under autograd.grad
    both, _ = cost_model.count(lambda: torch.autograd.grad(layer(x * 1).sum(), [x, layer.weight]))
    assert forward == 2 * 5 * 64 * 32
    assert both == 3 * forward


def test_a_conv_counts_its_output_positions_times_kernel_volume(cost_model):
    with torch.device("meta"):
        conv = torch.nn.Conv2d(8, 16, 3, padding=1)
        flops, _ = cost_model.count(lambda: conv(torch.zeros(2, 8, 10, 10)))
    assert flops == 2 * 2 * 16 * 10 * 10 * 8 * 9


def test_saved_activations_exclude_the_weights(cost_model):
    with torch.device("meta"):
        layer = torch.nn.Linear(64, 32, bias=False)
        x = torch.zeros(5, 64, requires_grad=True)
    weights = frozenset(id(p) for p in layer.parameters())
    _, with_weights = cost_model.count(lambda: layer(x))
    _, saved = cost_model.count(lambda: layer(x), weights)
    assert saved == 5 * 64 * 4  # the input, in fp32
    assert with_weights == saved + 64 * 32 * 4


def test_ranke_step_is_std_rl_plus_stage_2(cost_model, tiny_units):
    settings = cost_model.Settings()
    std = cost_model.step_cost(tiny_units, settings, ranke=False)
    ranke = cost_model.step_cost(tiny_units, settings, ranke=True)
    stage2 = sum(v for k, v in ranke.flops.items() if k.startswith("stage2_"))
    assert stage2 > 0
    assert ranke.total_flops() == pytest.approx(std.total_flops() + stage2)
    assert ranke.time(cost_model.H200) > std.time(cost_model.H200)
    assert ranke.peak_bytes() > std.peak_bytes()


def test_ranke_memory_holds_decoder_and_discriminator_optimizer_states_and_the_ema_teacher(cost_model, tiny_units):
    settings = cost_model.Settings()
    ranke = cost_model.step_cost(tiny_units, settings, ranke=True)
    params = tiny_units.params
    assert params["decoder_trained"] > 0 and params["discriminator"] > 0
    assert params["decoder_trained"] < params["vq"]  # the frozen encoder is not trained
    assert ranke.memory["decoder_grads_adamw"] == 3 * params["decoder_trained"] * settings.policy_bytes
    assert ranke.memory["discriminator"] == 4 * params["discriminator"] * settings.fp32_bytes
    assert ranke.memory["ema_teacher"] == params["decoder_trained"] * settings.policy_bytes
    std = cost_model.step_cost(tiny_units, settings, ranke=False)
    assert not {"decoder_grads_adamw", "discriminator", "ema_teacher"} & set(std.memory)


def test_without_the_gan_there_is_no_discriminator_cost(cost_model, tiny_units):
    ranke = cost_model.step_cost(tiny_units, cost_model.Settings(lambda_gan=0.0), ranke=True)
    assert ranke.flops["stage2_gan_disc"] == ranke.flops["stage2_disc_step"] == ranke.memory["discriminator"] == 0


def test_stage_1_work_grows_with_the_rollouts_and_a_fixed_t_d_does_not(cost_model, tiny_units):
    small = cost_model.step_cost(tiny_units, cost_model.Settings(rollouts=16, decoder_steps=1), ranke=True)
    large = cost_model.step_cost(tiny_units, cost_model.Settings(rollouts=32, decoder_steps=1), ranke=True)
    assert large.flops["policy_fwdbwd"] == 2 * small.flops["policy_fwdbwd"]
    assert large.sampling_flops == 2 * small.sampling_flops
    assert large.flops["stage2_fake_decode_fwdbwd"] == small.flops["stage2_fake_decode_fwdbwd"]


def test_the_derived_t_d_draws_every_rollout_once(cost_model, tiny_units):
    one = cost_model.step_cost(tiny_units, cost_model.Settings(decoder_steps=1), ranke=True)
    derived = cost_model.step_cost(tiny_units, cost_model.Settings(rollouts=16, decoder_batch=8), ranke=True)
    assert derived.flops["stage2_fake_decode_fwdbwd"] == 2 * one.flops["stage2_fake_decode_fwdbwd"]  # 16 / 8


def test_sampling_reads_the_weights_and_a_growing_kv_cache_at_every_code(cost_model, tiny_units):
    cost = cost_model.step_cost(tiny_units, cost_model.Settings(), ranke=False)
    assert len(cost.sampling_bytes) == tiny_units.codes == 64
    assert cost.sampling_bytes[0] > tiny_units.generation_params * 2
    assert all(later > earlier for earlier, later in zip(cost.sampling_bytes, cost.sampling_bytes[1:]))


def test_tiny_run_prints_both_modes_and_the_papers_ratios(cost_model, capsys):
    results = cost_model.main(["--tiny", "--backbones", "llamagen"])
    out = capsys.readouterr().out
    assert "llamagen @ tiny" in out and "paper: 1.05x" in out and "paper: 1.70x" in out
    assert results[("llamagen", "tiny")]["time_ratio_H200"] > 1


def test_policy_activation_checkpointing_trades_stage_1_memory_for_a_second_forward(cost_model, tiny_units):
    plain = cost_model.step_cost(tiny_units, cost_model.Settings(), ranke=False)
    ckpt = cost_model.step_cost(tiny_units, cost_model.Settings(activation_checkpointing=True), ranke=False)
    assert ckpt.memory["act_stage1"] < plain.memory["act_stage1"]
    assert ckpt.flops["policy_fwdbwd"] - plain.flops["policy_fwdbwd"] == plain.flops["reference_fwd"]  # 2B rows
