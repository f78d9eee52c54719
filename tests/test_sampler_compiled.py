"""The static-cache sampler (`sampler="static"`) and its compiled form (`"compiled"`) draw what the eager one draws.

Both backbones, CFG on, a batch of prompts of different lengths (so left padding is exercised). Greedy codes are
identical; sampled codes are identical too, since every per-row generator is consumed exactly as the eager loop does
and the logits agree to float rounding (`static_sampler.py` says when that could in principle differ).
"""

import pytest
import torch

from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen, build_tiny_t5_tokenizer
from ranke_trl.policy import JanusPolicy, LlamaGenPolicy
from ranke_trl.policy.janus import install_image_forward
from ranke_trl.policy.static_sampler import SAMPLERS, UnknownSamplerError
from ranke_trl.sampling import SamplingArguments
from ranke_trl.tiny import build_tiny_janus, build_tiny_janus_tokenizer

PROMPTS = ["a red square", "two blue circles and a big yellow triangle on the left", "x"]
BACKBONES = ["janus", "llamagen"]


def _policy_and_model(backbone):
    if backbone == "janus":
        model = build_tiny_janus(seed=0)
        return JanusPolicy(build_tiny_janus_tokenizer(), model), model
    model = build_tiny_llamagen(seed=0)
    return LlamaGenPolicy(build_tiny_t5_tokenizer(), model), model


def _generators(n=len(PROMPTS), seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.fixture(params=BACKBONES)
def backbone(request):
    return request.param


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_static_greedy_codes_equal_eager(backbone, guidance_scale):
    policy, model = _policy_and_model(backbone)
    batch = policy.encode_prompts(PROMPTS)
    assert not batch.attention_mask.all()  # mixed lengths: left padding
    eager = policy.sample_codes(model, batch, sampler="eager", guidance_scale=guidance_scale, do_sample=False)
    static = policy.sample_codes(model, batch, sampler="static", guidance_scale=guidance_scale, do_sample=False)
    assert torch.equal(static, eager)


@pytest.mark.parametrize("settings", [dict(guidance_scale=3.0, temperature=0.7, top_k=40, top_p=0.9),
                                      dict(guidance_scale=1.0)])  # fmt: skip
def test_static_sampled_codes_equal_eager_with_the_same_generators(backbone, settings):
    policy, model = _policy_and_model(backbone)
    batch = policy.encode_prompts(PROMPTS)
    eager = policy.sample_codes(model, batch, sampler="eager", generator=_generators(), **settings)
    static = policy.sample_codes(model, batch, sampler="static", generator=_generators(), **settings)
    assert torch.equal(static, eager)


def test_one_generator_for_the_batch_is_consumed_as_the_eager_sampler_does(backbone):
    policy, model = _policy_and_model(backbone)
    batch = policy.encode_prompts(PROMPTS)
    draws = [policy.sample_codes(model, batch, sampler=sampler, guidance_scale=5.0, top_p=0.9,
                                 generator=torch.Generator().manual_seed(7)) for sampler in ("eager", "static")]  # fmt: skip
    assert torch.equal(draws[1], draws[0])


def test_a_row_drawn_alone_equals_the_row_drawn_in_a_batch(backbone):
    policy, model = _policy_and_model(backbone)
    together = policy.sample_codes(model, policy.encode_prompts(PROMPTS), sampler="static", guidance_scale=4.0,
                                   generator=_generators())  # fmt: skip
    alone = policy.sample_codes(model, policy.encode_prompts(PROMPTS[1:2]), sampler="static", guidance_scale=4.0,
                                generator=_generators(1, seed=1))  # fmt: skip
    assert torch.equal(alone[0], together[1])


@pytest.mark.parametrize("mode", ["guided", "conditional"])
def test_static_log_probs_equal_the_scored_log_probs(backbone, mode):
    policy, model = _policy_and_model(backbone)
    batch = policy.encode_prompts(PROMPTS)
    settings = dict(guidance_scale=3.0, temperature=0.8)
    codes, log_probs = policy.static_sampler(model).sample(
        batch, **settings, top_p=0.9, generator=_generators(), logprob_mode=mode
    )
    assert torch.equal(codes, policy.sample(model, batch, **settings, top_p=0.9, generator=_generators()))
    if backbone == "janus":
        install_image_forward(model, policy)
    else:
        policy.prepare_for_training(model)
    with torch.no_grad():
        scored = policy.code_log_probs(model, batch.input_ids, batch.attention_mask, codes, mode=mode, **settings)
    assert log_probs.dtype == torch.float32
    torch.testing.assert_close(log_probs, scored.log_probs, atol=1e-5, rtol=0)


def test_llamagen_cfg_interval_is_followed():
    always, model = _policy_and_model("llamagen")  # cfg_interval -1: every code guided
    model.generation_config.cfg_interval = 3  # codes 0 ... 4 guided, later ones conditional
    policy = LlamaGenPolicy(build_tiny_t5_tokenizer(), model)
    batch = policy.encode_prompts(PROMPTS)
    eager = policy.sample_codes(model, batch, sampler="eager", guidance_scale=9.0, do_sample=False)
    static = policy.sample_codes(model, batch, sampler="static", guidance_scale=9.0, do_sample=False)
    assert torch.equal(static, eager)
    assert not torch.equal(always.sample_codes(model, batch, sampler="static", guidance_scale=9.0, do_sample=False),
                           static)  # fmt: skip


def test_the_cache_is_reused_and_reset_between_batches(backbone):
    policy, model = _policy_and_model(backbone)
    sampler = policy.static_sampler(model)
    assert policy.static_sampler(model) is sampler
    first = policy.encode_prompts(PROMPTS)
    second = policy.encode_prompts(["a tan square", "two pink circles and a big yellow triangle on the left", "y"])
    codes = [policy.sample_codes(model, b, sampler="static", guidance_scale=5.0, do_sample=False)
             for b in (first, second, first)]  # fmt: skip
    assert torch.equal(codes[0], codes[2])
    assert torch.equal(codes[1], policy.sample(model, second, guidance_scale=5.0, do_sample=False))
    assert len(sampler._caches) == 1  # the same shapes: one cache, reset for each batch


def test_an_unknown_sampler_is_a_named_error(tiny_janus, tiny_tokenizer):
    policy = JanusPolicy(tiny_tokenizer, tiny_janus)
    batch = policy.encode_prompts(PROMPTS)
    with pytest.raises(UnknownSamplerError, match="'eager'"):
        policy.sample_codes(tiny_janus, batch, sampler="fast", guidance_scale=5.0)
    with pytest.raises(UnknownSamplerError, match="sampler='cuda_graphs'"):
        SamplingArguments(sampler="cuda_graphs").resolve_sampling()
    assert SamplingArguments().sampler == "eager" and SAMPLERS == ("eager", "static", "compiled")


def test_the_trainer_rolls_out_with_the_configured_sampler(tmp_path, tiny_janus, tiny_processor, monkeypatch):
    from datasets import Dataset

    from ranke_trl import RankEConfig, RankEGRPOTrainer
    from ranke_trl.policy.static_sampler import StaticCacheSampler

    args = RankEConfig(output_dir=str(tmp_path), bf16=False, per_device_train_batch_size=4, num_generations=2,
                       max_steps=1, report_to=[], save_strategy="no", train_decoder=False, sampler="static")  # fmt: skip
    trainer = RankEGRPOTrainer(
        model=tiny_janus, reward_funcs=[lambda prompts, completions, **kw: [0.0] * len(prompts)], args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=tiny_processor,
    )  # fmt: skip
    calls = []
    original = StaticCacheSampler.sample
    monkeypatch.setattr(StaticCacheSampler, "sample", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    torch.manual_seed(3)
    static = torch.tensor(trainer._generate(PROMPTS)[1])
    assert calls
    trainer.args.sampler = "eager"
    torch.manual_seed(3)
    assert torch.equal(torch.tensor(trainer._generate(PROMPTS)[1]), static)
    assert len(calls) == 1


@pytest.mark.slow
def test_compiled_greedy_codes_equal_eager_on_cpu():
    """Inductor compiles the decoding step (C++ kernels; a cold cache costs about a minute on a loaded 2-core
    machine, seconds once `/tmp/torchinductor_<user>` holds the kernels). One backbone only, to keep the suite's
    cold-cache cost down: compilation is the shared `StaticCacheSampler` step, and LlamaGen's static path (the graph
    it compiles) is checked against eager above."""
    policy, model = _policy_and_model("janus")
    batch = policy.encode_prompts(PROMPTS)
    eager = policy.sample_codes(model, batch, sampler="eager", guidance_scale=5.0, do_sample=False)
    compiled = policy.sample_codes(model, batch, sampler="compiled", guidance_scale=5.0, do_sample=False)
    assert policy.static_sampler(model, compile=True).compiled
    assert torch.equal(compiled, eager)
