"""LlamaGen as a transformers model: parity with a clean-room reference of the original (LLAMAGEN.md §6).

A tiny original-format checkpoint goes through the converter and `from_pretrained`; the reference
(tests/reference/llamagen_ref.py) runs the ORIGINAL keys. fp32 throughout.
"""

import os

import pytest
import torch
from reference.llamagen_fixtures import GRID, NUM_HEADS, original_checkpoints
from reference.llamagen_ref import gpt_logits, guided_greedy_codes, left_pad_to_prefix, vq_decode, vq_encode

from ranke_trl.models.llamagen import LlamaGenForImageGeneration, LlamaGenProcessor, LlamaGenVQVAE, clean_caption

N = GRID * GRID
PROMPTS = ["a red square", "two blue circles and a yellow triangle"]


@pytest.fixture(scope="module")
def original():
    return original_checkpoints()


@pytest.fixture(scope="module")
def model(original):
    return LlamaGenForImageGeneration.from_pretrained(original.hf_dir).eval()


@pytest.fixture(scope="module")
def processor(original):
    return LlamaGenProcessor.from_pretrained(original.hf_dir)


def _reference_logits(original, model, batch, codes, uncond):
    """The reference's logits for codes (B, N) given a left-padded batch, on the full 120-slot layout."""
    features = model.model.encode_captions(batch["input_ids"], batch["attention_mask"])
    caption, mask = left_pad_to_prefix(features, batch["attention_mask"].float())
    return gpt_logits(original.gpt, caption, mask, codes[:, :-1], uncond, NUM_HEADS, GRID)[:, -N:]


# ------------------------------------------------------------------------------------------------ conversion
def test_conversion_consumes_every_key_and_reloads_strictly(original):
    model, info = LlamaGenForImageGeneration.from_pretrained(original.hf_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf_keys = {k for k in model.state_dict() if not k.startswith("model.text_encoder.")}
    layers = 2
    # every original GPT key but wqkv maps to one key, wqkv to three; every VQ key but codebook_used to one
    assert len(hf_keys) == len(original.gpt) + 2 * layers + len(original.vq) - 1


def test_conversion_splits_wqkv_and_permutes_rotary_pairs(original, model):
    wqkv = original.gpt["layers.0.attention.wqkv.weight"]
    attn = model.model.language_model.layers[0].self_attn
    head_dim = 64 // NUM_HEADS
    q_head0 = wqkv[:head_dim]
    assert torch.equal(attn.q_proj.weight[: head_dim // 2], q_head0[0::2])  # evens, then odds
    assert torch.equal(attn.q_proj.weight[head_dim // 2 : head_dim], q_head0[1::2])
    assert torch.equal(attn.v_proj.weight, wqkv[128:])
    assert torch.equal(model.model.caption_projector.uncond_embedding, original.gpt["cls_embedding.uncond_embedding"])


@pytest.mark.parametrize("top", ["model", "module", "state_dict", None])
def test_converter_accepts_checkpoint_tops_and_wrapper_prefixes(original, tmp_path, top):
    from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import load_original_state_dict

    prefixed = {f"module._orig_mod.{k}": v for k, v in original.gpt.items()}
    torch.save(prefixed if top is None else {top: prefixed, "steps": torch.tensor(3)}, tmp_path / "gpt.pt")
    loaded = load_original_state_dict(tmp_path / "gpt.pt", "GPT")
    assert loaded.keys() == original.gpt.keys()


def test_converter_names_a_swapped_file(original, tmp_path):
    from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import (
        LlamaGenConversionError,
        convert_llamagen_checkpoint,
    )

    with pytest.raises(LlamaGenConversionError, match="pass it as --vq_ckpt"):
        convert_llamagen_checkpoint(original.vq_path, original.gpt_path, str(original.t5_dir), 64, num_heads=4)


def test_converter_names_a_truncated_file(original, tmp_path):
    from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import (
        LlamaGenConversionError,
        convert_llamagen_checkpoint,
    )

    data = original.gpt_path.read_bytes()
    (tmp_path / "gpt.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(LlamaGenConversionError, match="truncated or corrupt"):
        convert_llamagen_checkpoint(tmp_path / "gpt.pt", original.vq_path, str(original.t5_dir), 64, num_heads=4)


def test_converter_names_mismatched_sizes(original, tmp_path):
    from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import (
        LlamaGenConversionError,
        convert_llamagen_checkpoint,
    )

    bad = dict(original.gpt, **{"layers.1.feed_forward.w2.weight": torch.zeros(64, 96)})
    torch.save({"model": bad}, tmp_path / "gpt.pt")
    with pytest.raises(LlamaGenConversionError, match=r"mismatched sizes: layers\.1\.feed_forward\.w2\.weight"):
        convert_llamagen_checkpoint(tmp_path / "gpt.pt", original.vq_path, str(original.t5_dir), 64, num_heads=4)
    narrow = dict(original.gpt, **{"cls_embedding.cap_proj.fc1.weight": torch.zeros(64, 48)})
    narrow["cls_embedding.uncond_embedding"] = torch.zeros(120, 48)
    torch.save({"model": narrow}, tmp_path / "gpt.pt")
    with pytest.raises(LlamaGenConversionError, match="Mismatched sizes: .* 32-d features"):
        convert_llamagen_checkpoint(tmp_path / "gpt.pt", original.vq_path, str(original.t5_dir), 64, num_heads=4)


def test_converter_refuses_pickled_training_objects(original, tmp_path):
    import argparse

    from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import (
        LlamaGenConversionError,
        load_original_state_dict,
    )

    torch.save({"model": original.gpt, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "gpt.pt")
    with pytest.raises(LlamaGenConversionError, match="weights_only"):
        load_original_state_dict(tmp_path / "gpt.pt", "GPT")


# ------------------------------------------------------------------------------------------------ GPT parity
@pytest.mark.parametrize("uncond", [False, True])
def test_logits_equal_the_reference(original, model, processor, uncond):
    batch = processor(PROMPTS, padding="longest")
    codes = torch.randint(0, 256, (2, N))
    flags = torch.full((2,), uncond)
    with torch.no_grad():
        ours = model(**batch, image_tokens=codes[:, :-1], uncond=flags).logits[:, -N:]
        reference = _reference_logits(original, model, batch, codes, flags)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_cached_step_logits_equal_the_full_forward(model, processor):
    batch = processor(PROMPTS, padding="longest")
    with torch.no_grad():
        codes, step_logits = model.generate_images(**batch, guidance_scale=3.0, do_sample=False, output_logits=True)
        flags = torch.tensor([False, False, True, True])
        both = {k: torch.cat([v, v]) for k, v in batch.items()}
        full = model(**both, image_tokens=torch.cat([codes, codes])[:, :-1], uncond=flags).logits[:, -N:]
    cond, null = full.chunk(2)
    # the guided logits 3 cond - 2 null scale each branch's fp32 rounding (1e-5, as above) by up to 3 + 2 = 5
    torch.testing.assert_close(step_logits, null + 3.0 * (cond - null), atol=5e-5, rtol=0)


def test_generation_without_the_kv_cache_reruns_the_prefix_and_draws_the_same_codes(model, processor):
    batch = processor(PROMPTS, padding="longest")
    lengths = []  # sequence length of every GPT forward
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].size(1)), with_kwargs=True
    )
    try:
        for settings in (dict(do_sample=False), dict(do_sample=True, top_k=20)):
            codes = {}
            for use_cache in (True, False):
                lengths.clear()
                codes[use_cache] = model.generate_images(**batch, guidance_scale=3.0, use_cache=use_cache, **settings,
                                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
            prefix = batch["input_ids"].size(1)
            assert lengths == [prefix + step for step in range(N)]  # the last (uncached) run
            assert torch.equal(codes[True], codes[False]), settings
    finally:
        hook.remove()


def test_guided_greedy_codes_equal_the_reference(original, model, processor):
    batch = processor(PROMPTS, padding="longest")
    with torch.no_grad():
        ours = model.generate_images(**batch, guidance_scale=7.5, do_sample=False)
        features = model.model.encode_captions(batch["input_ids"], batch["attention_mask"])
        caption, mask = left_pad_to_prefix(features, batch["attention_mask"].float())
        reference = guided_greedy_codes(original.gpt, caption, mask, NUM_HEADS, GRID, 7.5)
    assert torch.equal(ours, reference)


def test_values_in_padding_slots_do_not_change_image_logits(model, processor):
    batch = processor(PROMPTS, padding="max_length")
    features = model.model.encode_captions(batch["input_ids"], batch["attention_mask"])
    junk = torch.where(batch["attention_mask"].bool()[..., None], features, 100 * torch.randn_like(features))
    codes = torch.randint(0, 256, (2, N))
    with torch.no_grad():
        clean = model(caption_embeds=features, attention_mask=batch["attention_mask"], image_tokens=codes).logits
        dirty = model(caption_embeds=junk, attention_mask=batch["attention_mask"], image_tokens=codes).logits
    torch.testing.assert_close(clean[:, 119:], dirty[:, 119:], atol=1e-5, rtol=0)


def test_mixed_length_left_padded_batch_equals_single_sample_runs(model, processor):
    codes = torch.randint(0, 256, (2, N))
    with torch.no_grad():
        together = model(**processor(PROMPTS, padding="longest"), image_tokens=codes).logits[:, -N:]
        alone = [model(**processor([p], padding="longest"), image_tokens=c[None]).logits[:, -N:]
                 for p, c in zip(PROMPTS, codes)]  # fmt: skip
        full_prefix = model(**processor(PROMPTS, padding="max_length"), image_tokens=codes).logits[:, -N:]
        greedy_together = model.generate_images(**processor(PROMPTS, padding="longest"), do_sample=False)
        greedy_alone = [model.generate_images(**processor([p]), do_sample=False) for p in PROMPTS]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)
    torch.testing.assert_close(together, full_prefix, atol=1e-5, rtol=0)
    assert torch.equal(greedy_together, torch.cat(greedy_alone))


def test_padding_beyond_the_120_caption_slots_is_dropped(model, processor):
    batch = processor(PROMPTS, padding="max_length")
    wider = {k: torch.nn.functional.pad(v, (8, 0)) for k, v in batch.items()}  # e.g. padded to a multiple of 8
    codes = torch.randint(0, 256, (2, N))
    with torch.no_grad():
        expected = model(**batch, image_tokens=codes).logits[:, -N:]
        torch.testing.assert_close(model(**wider, image_tokens=codes).logits[:, -N:], expected, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="at most 120"):
            model(input_ids=torch.ones(1, 121, dtype=torch.long), image_tokens=codes[:1])


def test_labels_give_the_next_code_cross_entropy(model, processor):
    batch = processor(PROMPTS, padding="longest")
    codes = torch.randint(0, 256, (2, N))
    with torch.no_grad():
        out = model(**batch, labels=codes)
        logits = model(**batch, image_tokens=codes[:, :-1]).logits[:, -N:]
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), codes.flatten())
    torch.testing.assert_close(out.loss, expected)


def test_logits_equal_the_reference_at_xl_width_and_256_px(original, tmp_path):
    """GPT-XL's attention (width 1280, 20 heads of 64: 16 rotary frequencies per axis) on a 16x16 grid, one layer."""
    from reference.llamagen_ref import random_gpt_state_dict

    from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import convert_llamagen_checkpoint

    gpt = random_gpt_state_dict(dim=1280, layers=1, vocab=256, caption_dim=32, ffn=256, seed=3)
    torch.save({"model": gpt}, tmp_path / "gpt.pt")
    model = convert_llamagen_checkpoint(tmp_path / "gpt.pt", original.vq_path, str(original.t5_dir), 256)
    processor = LlamaGenProcessor.from_pretrained(original.hf_dir)
    batch = processor(PROMPTS, padding="longest")
    codes = torch.randint(0, 256, (2, 256))
    with torch.no_grad():
        ours = model(**batch, image_tokens=codes[:, :-1]).logits[:, -256:]
        features = model.model.encode_captions(batch["input_ids"], batch["attention_mask"])
        caption, mask = left_pad_to_prefix(features, batch["attention_mask"].float())
        reference = gpt_logits(gpt, caption, mask, codes[:, :-1], torch.zeros(2, dtype=torch.bool), 20, 16)[:, -256:]
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_bf16_generates_valid_codes(original):
    model = LlamaGenForImageGeneration.from_pretrained(original.hf_dir, dtype=torch.bfloat16)
    processor = LlamaGenProcessor.from_pretrained(original.hf_dir)
    codes = model.generate_images(**processor(PROMPTS), generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, N) and 0 <= codes.min() and codes.max() < 256
    assert torch.isfinite(model.decode_image_tokens(codes).float()).all()


# ------------------------------------------------------------------------------------------------ VQ
def test_vq_encode_is_argmax_cosine_and_equals_the_reference(original, model):
    vq = model.model.vqmodel
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        codes = vq.encode(pixels).image_tokens.view(2, -1)
        latents = torch.nn.functional.normalize(vq.quant_conv(vq.encoder(pixels)).flatten(2).transpose(1, 2), dim=-1)
        cosine = latents @ torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1).t()
    assert torch.equal(codes, cosine.argmax(-1))
    assert torch.equal(codes, vq_encode(original.vq, pixels))


def test_vq_decode_equals_the_reference(original, model):
    vq = model.model.vqmodel
    codes = torch.randint(0, 256, (2, N))
    with torch.no_grad():
        pixels = model.decode_image_tokens(codes)
        unit = torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1)[codes]
        direct = vq.decoder(vq.post_quant_conv(unit.transpose(1, 2).reshape(2, 8, GRID, GRID)))
    assert pixels.shape == (2, 3, 64, 64)
    torch.testing.assert_close(pixels, direct, atol=1e-4, rtol=0)  # conv algorithms differ by memory layout
    torch.testing.assert_close(pixels, vq_decode(original.vq, codes), atol=1e-4, rtol=1e-4)


def test_vq_decodes_any_square_grid(model):
    pixels = model.model.vqmodel.decode(torch.randint(0, 256, (1, 64)))
    assert pixels.shape == (1, 3, 128, 128)
    with pytest.raises(ValueError, match="square grid"):
        model.model.vqmodel.decode(torch.randint(0, 256, (1, 12)))


def test_saved_vq_loads_as_plain_janus_vqvae(model, tmp_path):
    from transformers import JanusVQVAE

    model.model.vqmodel.save_pretrained(tmp_path)
    codes = torch.randint(0, 256, (2, N))
    with torch.no_grad():
        ours = LlamaGenVQVAE.from_pretrained(tmp_path).decode(codes)
        janus = JanusVQVAE.from_pretrained(tmp_path).decode(codes)
    assert torch.equal(ours, model.model.vqmodel.decode(codes))
    torch.testing.assert_close(ours, janus, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ Hub I/O
def test_saved_directory_loads_with_the_auto_classes(original):
    from transformers import AutoConfig, AutoModel, AutoProcessor

    assert AutoConfig.from_pretrained(original.hf_dir).model_type == "llamagen"
    assert type(AutoModel.from_pretrained(original.hf_dir)).__name__ == "LlamaGenForImageGeneration"
    assert type(AutoProcessor.from_pretrained(original.hf_dir)).__name__ == "LlamaGenProcessor"
    assert (original.hf_dir / "model.safetensors").is_file()
    assert "LAION" in (original.hf_dir / "README.md").read_text()


def test_generation_defaults_are_upstream_sampling_defaults(model):
    config = model.generation_config
    assert (config.guidance_scale, config.top_k, config.top_p, config.temperature) == (7.5, 1000, 1.0, 1.0)
    assert config.cfg_interval == -1 and config.do_sample


def test_the_text_encoder_is_frozen_and_stays_in_eval_mode(model):
    model.train()
    try:
        assert not model.model.text_encoder.training
        assert not any(p.requires_grad for p in model.model.text_encoder.parameters())
    finally:
        model.eval()


def test_processor_left_pads_cleaned_captions_to_120_tokens_ending_with_eos(processor):
    batch = processor(["A  RED square!!", "x" * 500])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, 120)
    assert mask[0, -1] == 1 and mask[0, 0] == 0 and ids[0, -1] == processor.tokenizer.eos_token_id
    assert mask[1].all()  # truncated to exactly 120, `</s>` kept
    assert ids[1, -1] == processor.tokenizer.eos_token_id


def test_clean_caption_normalises_web_captions():
    assert clean_caption("A <b>Red</b> square @artist https://x.com/a.png") == "a red square"
    assert clean_caption("\u201cQuoted\u201d \u2014 text") == '"quoted" - text'


@pytest.mark.skipif(
    not os.environ.get("RANKE_LLAMAGEN_DIR"), reason="set RANKE_LLAMAGEN_DIR to run the real-weight test"
)
def test_real_weights_convert_and_match_the_reference_at_xl_scale(tmp_path):
    """RANKE_LLAMAGEN_DIR holds t2i_XL_stage1_256.pt, vq_ds16_t2i.pt and flan-t5-xl/ (a T5 directory)."""
    from ranke_trl.models.llamagen.convert_llamagen_weights_to_hf import (
        convert_llamagen_checkpoint,
        load_original_state_dict,
    )

    root = os.environ["RANKE_LLAMAGEN_DIR"]
    gpt = load_original_state_dict(os.path.join(root, "t2i_XL_stage1_256.pt"), "GPT")
    vq = load_original_state_dict(os.path.join(root, "vq_ds16_t2i.pt"), "VQ")
    assert (len(gpt), len(vq)) == (258, 344)
    model = convert_llamagen_checkpoint(
        os.path.join(root, "t2i_XL_stage1_256.pt"), os.path.join(root, "vq_ds16_t2i.pt"),
        os.path.join(root, "flan-t5-xl"), 256, tmp_path / "hf",
    )  # fmt: skip
    processor = LlamaGenProcessor.from_pretrained(tmp_path / "hf")
    batch = processor(["a photo of a corgi on the beach"], padding="longest")
    codes = torch.randint(0, 16384, (1, 8))
    with torch.no_grad():
        features = model.model.encode_captions(batch["input_ids"], batch["attention_mask"])
        caption, mask = left_pad_to_prefix(features, batch["attention_mask"].float())
        reference = gpt_logits(gpt, caption, mask, codes[:, :-1], torch.tensor([False]), 20, 16)[:, -8:]
        ours = model(**batch, image_tokens=codes[:, :-1]).logits[:, -8:]
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
