"""The LlamaGen adapter: T5 caption prompts, the CFG sampler, teacher-forced log-probs, the VQ codec, LoRA targets."""

import pytest
import torch

from ranke_trl.models.llamagen.tiny_llamagen import build_tiny_llamagen, build_tiny_t5_tokenizer
from ranke_trl.policy import ImageCodeLogProbs, LlamaGenPolicy, backbone_for_checkpoint, make_policy
from ranke_trl.policy.llamagen import LlamaGenVQCodec

PROMPTS = ["a red square", "Two BLUE circles, and a yellow triangle!"]


@pytest.fixture
def model():
    return build_tiny_llamagen(seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_t5_tokenizer()


def _generators(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# ------------------------------------------------------------------------------------------------ loading
def test_a_saved_llamagen_is_routed_to_this_adapter(tmp_path):
    from ranke_trl.models.llamagen.tiny_llamagen import save_tiny_llamagen

    save_tiny_llamagen(tmp_path)
    assert backbone_for_checkpoint(str(tmp_path)) is LlamaGenPolicy
    model, processor = LlamaGenPolicy.load_model(str(tmp_path), dtype=torch.float32)
    policy = make_policy(model, processor)
    assert isinstance(policy, LlamaGenPolicy)
    assert (policy.num_image_tokens, policy.codebook_size) == (16, 256)


# ------------------------------------------------------------------------------------------------ prompts
def test_prompts_become_cleaned_t5_captions_ending_with_eos(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    ids = policy.prompt_token_ids(PROMPTS + ["word " * 300])
    assert ids[0] == tokenizer("a red square")["input_ids"]
    assert ids[1] == tokenizer("two blue circles, and a yellow triangle!")["input_ids"]
    assert all(row[-1] == tokenizer.eos_token_id for row in ids)
    assert len(ids[2]) == 120


def test_chat_messages_use_the_last_user_turn(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "a red square"}]
    assert policy.prompt_token_ids([messages]) == policy.prompt_token_ids(["a red square"])


def test_batches_are_left_padded_and_the_unconditional_branch_keeps_the_ids(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    batch = policy.encode_prompts(PROMPTS)
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[:, -1].all()
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()
    assert torch.equal(batch.uncond_input_ids, batch.input_ids)


# ------------------------------------------------------------------------------------------------ sampling and scoring
@pytest.mark.parametrize("guidance_scale, temperature", [(7.5, 1.0), (2.0, 0.7), (1.0, 1.0)])
def test_log_probs_equal_the_samplers_distribution(model, tokenizer, guidance_scale, temperature):
    policy = LlamaGenPolicy(tokenizer, model)
    batch = policy.encode_prompts(PROMPTS)
    settings = dict(guidance_scale=guidance_scale, temperature=temperature, top_k=50, top_p=0.9)
    codes = policy.sample(model, batch, **settings, generator=_generators(2))
    again, logits = model.generate_images(
        batch.input_ids, batch.attention_mask, **settings, generator=_generators(2), output_logits=True
    )
    assert torch.equal(codes, again)
    policy.prepare_for_training(model)
    with torch.no_grad():
        out = policy.code_log_probs(
            model, batch.input_ids, batch.attention_mask, codes, guidance_scale=guidance_scale, temperature=temperature
        )
    expected = (logits / temperature).log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1)
    torch.testing.assert_close(out.log_probs, expected, atol=1e-5, rtol=0)


def test_cfg_interval_is_followed_by_sampler_and_scores(model, tokenizer):
    model.generation_config.cfg_interval = 3  # codes 0 ... 4 guided, later ones conditional
    policy = LlamaGenPolicy(tokenizer, model)
    batch = policy.encode_prompts(PROMPTS)
    codes, logits = model.generate_images(
        batch.input_ids, batch.attention_mask, guidance_scale=5.0, do_sample=False, cfg_interval=3, output_logits=True
    )
    assert torch.equal(policy.sample(model, batch, guidance_scale=5.0, do_sample=False), codes)
    policy.prepare_for_training(model)
    with torch.no_grad():
        guided = policy.code_log_probs(model, batch.input_ids, batch.attention_mask, codes, guidance_scale=5.0)
        cond = policy.code_log_probs(
            model, batch.input_ids, batch.attention_mask, codes, guidance_scale=5.0, mode="conditional"
        )
    expected = logits.log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1)
    torch.testing.assert_close(guided.log_probs, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(guided.log_probs[:, 5:], cond.log_probs[:, 5:])
    assert not torch.allclose(guided.log_probs[:, :5], cond.log_probs[:, :5])


def test_conditional_mode_ignores_guidance(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    policy.prepare_for_training(model)
    batch = policy.encode_prompts(PROMPTS)
    codes = torch.randint(0, 256, (2, 16))
    score = lambda **kw: policy.code_log_probs(model, batch.input_ids, batch.attention_mask, codes, **kw).log_probs
    with torch.no_grad():
        cond = score(guidance_scale=5.0, mode="conditional")
        plain, guided = score(guidance_scale=1.0), score(guidance_scale=5.0)
    torch.testing.assert_close(cond, plain)
    assert not torch.allclose(cond, guided)


def test_entropy_is_that_of_the_scored_distribution(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    batch = policy.encode_prompts(PROMPTS)
    codes, logits = model.generate_images(batch.input_ids, batch.attention_mask, guidance_scale=3.0,
                                          do_sample=False, output_logits=True)  # fmt: skip
    policy.prepare_for_training(model)
    with torch.no_grad():
        out = policy.code_log_probs(model, batch.input_ids, batch.attention_mask, codes, guidance_scale=3.0,
                                    temperature=0.5, compute_entropy=True)  # fmt: skip
    log_p = (logits / 0.5).log_softmax(-1)
    torch.testing.assert_close(out.entropy, -(log_p.exp() * log_p).sum(-1), atol=1e-5, rtol=0)


def test_per_row_generators_make_each_image_independent_of_its_batch(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    together = policy.sample(model, policy.encode_prompts(PROMPTS), guidance_scale=4.0, generator=_generators(2))
    second = policy.sample(model, policy.encode_prompts(PROMPTS[1:]), guidance_scale=4.0, generator=_generators(1, 1))
    assert torch.equal(together[1:], second)


def test_left_padding_does_not_change_log_probs(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    policy.prepare_for_training(model)
    alone, padded = policy.encode_prompts(PROMPTS[:1]), policy.encode_prompts(PROMPTS)
    codes = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        a = policy.code_log_probs(model, alone.input_ids, alone.attention_mask, codes, guidance_scale=3.0)
        b = policy.code_log_probs(model, padded.input_ids[:1], padded.attention_mask[:1], codes, guidance_scale=3.0)
    torch.testing.assert_close(a.log_probs, b.log_probs, atol=1e-5, rtol=0)


def test_gradients_reach_the_generation_path_and_never_the_text_encoder(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    policy.prepare_for_training(model)
    model.train()
    batch = policy.encode_prompts(PROMPTS)
    out = policy.code_log_probs(model, batch.input_ids, batch.attention_mask, torch.randint(0, 256, (2, 16)),
                                guidance_scale=5.0)  # fmt: skip
    out.log_probs.sum().backward()
    inner = model.model
    for param in (model.lm_head.weight, inner.caption_projector.fc1.weight, inner.language_model.embed_tokens.weight,
                  inner.language_model.layers[0].self_attn.q_proj.weight):  # fmt: skip
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in inner.text_encoder.parameters())
    assert inner.caption_projector.uncond_embedding.grad is None  # a buffer, as upstream


# ------------------------------------------------------------------------------------------------ the VQ model
def test_prepare_detaches_the_vq_and_restore_gives_the_model_back_whole(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    vq = model.model.vqmodel
    codec = policy.prepare_for_training(model)
    assert codec.module is vq and model.model.vqmodel is None
    assert all(not name.startswith("model.vqmodel.") for name, _ in model.named_parameters())
    batch = policy.encode_prompts(PROMPTS)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, image_codes=torch.zeros(2, 16).long(),
                image_code_kwargs={"guidance_scale": 2.0})  # fmt: skip
    assert isinstance(out, ImageCodeLogProbs) and out.log_probs.shape == (2, 16)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # other calls unchanged
    assert logits.shape == (2, batch.input_ids.size(1), 256)
    policy.restore_model(model, codec)
    assert model.model.vqmodel is vq and "forward" not in model.__dict__
    with policy.codec_attached(model, codec):
        assert policy.attached_codec_module(model) is vq


def test_codec_encodes_by_cosine_and_decodes_to_images(model, tokenizer, tmp_path):
    codec = LlamaGenPolicy(tokenizer, model).codec(model)
    assert isinstance(codec, LlamaGenVQCodec)
    assert (codec.codebook_size, codec.num_tokens, codec.image_size) == (256, 16, 64)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = codec.encode(pixels)
    vq = codec.module
    latents = torch.nn.functional.normalize(vq.quant_conv(vq.encoder(pixels)).flatten(2).transpose(1, 2), dim=-1)
    codebook = torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1)
    assert torch.equal(codes, (latents @ codebook.T).argmax(-1))
    images = codec.decode_images(codes)
    assert images.shape == (2, 3, 64, 64) and 0 <= images.min() and images.max() <= 1
    codec.save_pretrained(tmp_path)
    assert torch.equal(LlamaGenPolicy.load_codec(str(tmp_path)).decode(codes), codec.decode(codes))
    trainable = {id(p) for p in codec.decoder_parameters()}
    assert id(vq.decoder.conv_in.weight) in trainable and id(vq.encoder.conv_in.weight) not in trainable


# ------------------------------------------------------------------------------------------------ LoRA
def _adapted_modules(model, target_modules):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=target_modules))
    return {name.removeprefix("base_model.model.").removesuffix(".lora_A") for name, _ in
            peft_model.named_modules() if name.endswith("lora_A")}  # fmt: skip


def test_lora_targets_the_generation_path_only(model, tokenizer):
    policy = LlamaGenPolicy(tokenizer, model)
    policy.prepare_for_training(model)
    adapted = _adapted_modules(model, policy.lora_target_modules())
    assert "lm_head" in adapted and "model.caption_projector.fc1" in adapted
    assert "model.language_model.layers.1.mlp.down_proj" in adapted
    assert not any(name.startswith(("model.text_encoder", "model.vqmodel")) for name in adapted)


def test_lora_named_modules_stay_inside_the_generation_path(tokenizer):
    model = build_tiny_llamagen()
    policy = LlamaGenPolicy(tokenizer, model)
    adapted = _adapted_modules(model, policy.lora_target_modules(["q_proj", "fc1", "q"]))  # T5 has `q` layers
    assert adapted == {f"model.language_model.layers.{i}.self_attn.q_proj" for i in range(2)} | {
        "model.caption_projector.fc1"
    }
