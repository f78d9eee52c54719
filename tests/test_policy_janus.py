"""The Janus adapter: CFG sampling, teacher-forced log-probs, VQ encode/decode."""

import pytest
import torch

from ranke_trl.policy import JanusPolicy, warp_logits
from ranke_trl.policy.janus import detach_vq, install_image_forward


def _policy(model, tokenizer):
    policy = JanusPolicy(tokenizer, model)
    install_image_forward(model, policy)
    return policy


def _generate_step_logprobs(model, batch, guidance_scale, monkeypatch):
    """Sample with HF generate(), recording the distribution it draws each code from (after CFG)."""
    seen = []
    multinomial = torch.multinomial

    def recording_multinomial(probs, num_samples, **kwargs):
        seen.append(probs.log())
        return multinomial(probs, num_samples, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    codes = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        generation_mode="image",
        do_sample=True,
        guidance_scale=guidance_scale,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
    )
    monkeypatch.undo()
    return codes, torch.stack(seen, dim=1)  # (B, N), (B, N, K)


@pytest.mark.parametrize("guidance_scale", [5.0, 2.0])
def test_log_probs_equal_generate_step_by_step_with_cfg(tiny_janus, tiny_tokenizer, guidance_scale, monkeypatch):
    policy = _policy(tiny_janus, tiny_tokenizer)
    batch = policy.encode_prompts(["a red square"])
    codes, step_logps = _generate_step_logprobs(tiny_janus, batch, guidance_scale, monkeypatch)
    with torch.no_grad():
        out = policy.code_log_probs(
            tiny_janus, batch.input_ids, batch.attention_mask, codes, guidance_scale=guidance_scale
        )
    expected = step_logps.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.log_probs, expected, atol=1e-5, rtol=0)


def test_log_probs_equal_step_by_step_without_cfg(tiny_janus, tiny_tokenizer):
    policy = _policy(tiny_janus, tiny_tokenizer)
    batch = policy.encode_prompts(["two blue circles"])
    janus = tiny_janus
    with torch.no_grad():
        codes = policy.sample(janus, batch, guidance_scale=1.0, do_sample=False)
        # Step by step with a plain loop over the language model (no cache), conditional branch only.
        embeds = janus.get_input_embeddings()(batch.input_ids)
        expected = []
        for t in range(codes.size(1)):
            hidden = janus.model.language_model(inputs_embeds=embeds).last_hidden_state[:, -1]
            expected.append(janus.model.generation_head(hidden).log_softmax(-1).gather(-1, codes[:, t : t + 1]))
            embeds = torch.cat([embeds, janus.prepare_embeddings_for_image_generation(codes[:, t : t + 1])], 1)
        out = policy.code_log_probs(janus, batch.input_ids, batch.attention_mask, codes, guidance_scale=1.0)
    torch.testing.assert_close(out.log_probs, torch.cat(expected, 1), atol=1e-5, rtol=0)


def test_sampler_greedy_matches_hf_generate(tiny_janus, tiny_tokenizer):
    policy = _policy(tiny_janus, tiny_tokenizer)
    batch = policy.encode_prompts(["a green triangle"])
    ours = policy.sample(tiny_janus, batch, guidance_scale=5.0, do_sample=False)
    theirs = tiny_janus.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_mode="image",
        do_sample=False, guidance_scale=5.0, top_k=0,
    )
    assert torch.equal(ours, theirs)


def test_left_padding_does_not_change_log_probs(tiny_janus, tiny_tokenizer):
    policy = _policy(tiny_janus, tiny_tokenizer)
    alone = policy.encode_prompts(["a"])
    padded = policy.encode_prompts(["a", "a much longer prompt about shapes"])
    codes = torch.randint(0, policy.codebook_size, (1, policy.num_image_tokens))
    with torch.no_grad():
        a = policy.code_log_probs(tiny_janus, alone.input_ids, alone.attention_mask, codes, guidance_scale=3.0)
        b = policy.code_log_probs(
            tiny_janus, padded.input_ids[:1], padded.attention_mask[:1], codes, guidance_scale=3.0
        )
    torch.testing.assert_close(a.log_probs, b.log_probs, atol=1e-5, rtol=0)


def test_guidance_scale_one_samples_without_unconditional_branch(tiny_janus, tiny_tokenizer):
    policy = _policy(tiny_janus, tiny_tokenizer)
    batch = policy.encode_prompts(["a", "b", "c"])
    codes = policy.sample(tiny_janus, batch, guidance_scale=1.0)
    assert codes.shape == (3, policy.num_image_tokens)
    assert codes.min() >= 0 and codes.max() < policy.codebook_size


def test_conditional_mode_ignores_guidance(tiny_janus, tiny_tokenizer):
    policy = _policy(tiny_janus, tiny_tokenizer)
    batch = policy.encode_prompts(["a red square"])
    codes = torch.randint(0, policy.codebook_size, (1, policy.num_image_tokens))
    with torch.no_grad():
        cond = policy.code_log_probs(
            tiny_janus, batch.input_ids, batch.attention_mask, codes, guidance_scale=5.0, mode="conditional"
        )
        plain = policy.code_log_probs(tiny_janus, batch.input_ids, batch.attention_mask, codes, guidance_scale=1.0)
        guided = policy.code_log_probs(tiny_janus, batch.input_ids, batch.attention_mask, codes, guidance_scale=5.0)
    torch.testing.assert_close(cond.log_probs, plain.log_probs)
    assert not torch.allclose(cond.log_probs, guided.log_probs)


def test_top_k_keeps_exactly_k_candidates():
    logits = torch.randn(4, 100)
    kept = torch.isfinite(warp_logits(logits, top_k=7)).sum(-1)
    assert kept.tolist() == [7, 7, 7, 7]


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(warp_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(warp_logits(logits, top_p=0.85)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(warp_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]


def test_sampler_respects_top_k_one_as_greedy(tiny_janus, tiny_tokenizer):
    policy = _policy(tiny_janus, tiny_tokenizer)
    batch = policy.encode_prompts(["a red square"])
    greedy = policy.sample(tiny_janus, batch, guidance_scale=5.0, do_sample=False)
    top1 = policy.sample(tiny_janus, batch, guidance_scale=5.0, top_k=1)
    assert torch.equal(greedy, top1)


def test_sampled_codes_stay_inside_top_p_nucleus(tiny_janus, tiny_tokenizer, monkeypatch):
    policy = _policy(tiny_janus, tiny_tokenizer)
    batch = policy.encode_prompts(["a", "b"])
    draws = []
    multinomial = torch.multinomial

    def recording_multinomial(probs, num_samples, **kwargs):
        out = multinomial(probs, num_samples, **kwargs)
        draws.append((probs, out))
        return out

    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    policy.sample(tiny_janus, batch, guidance_scale=3.0, top_p=0.3)
    assert len(draws) == policy.num_image_tokens
    for probs, code in draws:
        support = probs > 0
        assert support.sum(-1).max() < policy.codebook_size  # the nucleus truncated the distribution
        assert support.gather(-1, code).all()  # and every code was drawn from inside it
        assert torch.allclose(probs.sum(-1), torch.ones(2))


def test_encode_uses_l2_normalised_codebook_lookup(tiny_janus, tiny_tokenizer):
    import torch.nn.functional as F

    codec = JanusPolicy(tiny_tokenizer, tiny_janus).codec(tiny_janus)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    codes = codec.encode(pixels)
    vq = codec.module
    latents = vq.quant_conv(vq.encoder(pixels)).permute(0, 2, 3, 1).reshape(2, -1, 8)
    sims = F.normalize(latents, dim=-1) @ F.normalize(vq.quantize.embedding.weight, dim=-1).T
    assert codes.shape == (2, 64)
    assert torch.equal(codes, sims.argmax(-1))


def test_decode_returns_images_of_the_configured_size(tiny_janus, tiny_tokenizer):
    codec = JanusPolicy(tiny_tokenizer, tiny_janus).codec(tiny_janus)
    images = codec.decode(torch.randint(0, 256, (3, 64)))
    assert images.shape == (3, 3, 64, 64) and codec.image_size == 64 and codec.num_tokens == 64


def test_detached_vq_reattaches_for_saving(tiny_janus, tiny_tokenizer):
    policy = JanusPolicy(tiny_tokenizer, tiny_janus)
    codec = policy.codec(tiny_janus)
    detach_vq(tiny_janus)
    assert tiny_janus.model.vqmodel is None
    with policy.codec_attached(tiny_janus, codec):
        assert any(k.startswith("model.vqmodel.") for k in tiny_janus.state_dict())
    assert tiny_janus.model.vqmodel is None


def test_mismatched_codebook_sizes_are_rejected(tiny_tokenizer):
    from ranke_trl.tiny import build_tiny_janus

    model = build_tiny_janus()
    head = model.model.generation_head
    head.vision_head = torch.nn.Linear(head.vision_head.in_features, 128)
    with pytest.raises(ValueError, match="share one codebook"):
        JanusPolicy(tiny_tokenizer, model)


def test_per_row_generators_make_images_independent_of_the_batch(tiny_janus, tiny_tokenizer):
    policy = _policy(tiny_janus, tiny_tokenizer)
    alone = policy.sample(
        tiny_janus, policy.encode_prompts(["a"]), guidance_scale=3.0, generator=[torch.Generator().manual_seed(7)]
    )
    batch = policy.encode_prompts(["a", "b"])
    gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    together = policy.sample(tiny_janus, batch, guidance_scale=3.0, generator=gens)
    assert torch.equal(alone[0], together[0])
