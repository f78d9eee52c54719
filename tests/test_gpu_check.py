"""`benchmarks/gpu_check.py`, the one-script GPU check, runs end to end at tiny scale on CPU and reports its figures,
for Janus and for LlamaGen; its full-scale configurations have the published shapes."""

import importlib.util
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_janus_pro_1b_config_has_the_published_shapes(gpu_check):
    config = gpu_check.janus_pro_1b_config()
    text, vision, vq = config.text_config, config.vision_config, config.vq_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (2048, 24, 16)
    assert (text.vocab_size, text.intermediate_size) == (102400, 5632)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (1024, 24, 384, 16)
    assert (vq.num_embeddings, vq.embed_dim, vq.num_patches, vq.base_channels) == (16384, 8, 24, 128)
    assert vision.num_image_tokens == vq.num_patches**2 == 576
    assert vision.projection_dim == vq.projection_dim == vq.image_token_embed_dim == text.hidden_size


def test_tiny_run_reports_every_figure(gpu_check, capsys):
    results = gpu_check.main(["--tiny", "--decoder_gradient_checkpointing"])
    printed = capsys.readouterr().out
    assert results["greedy_codes_identical"] is True  # fp32: our sampler and HF generate agree code for code
    assert results["rollout_rows"] == 8 and results["rollouts_per_step"] == 8
    for key in ("ours_tokens_per_s", "hf_generate_tokens_per_s", "step_s", "policy_phase_s", "decoder_phase_s"):
        assert results[key] > 0, key
        assert key in printed
    assert results["decoder_overhead_ratio"] > 1  # the decoder phase adds time to the policy phase
    assert results["policy_peak_gib"] is None and "n/a (CPU)" in printed  # peak memory is measured on CUDA only
    assert results["options"]["decoder_gradient_checkpointing"] is True
    # cost_model.py's projection for the same shapes, beside the measured ratio
    assert "paper: 1.05x time, 1.70x memory" in printed
    for key in ("h200_rollout_roofline_tokens_per_s", "projected_time_ratio_this_schedule",
                "projected_memory_ratio_paper_schedule"):
        assert results[key] > 0, key
        assert key in printed
    assert results["projected_time_ratio_this_schedule"] > 1 and results["measured_time_ratio"] > 1


@pytest.mark.parametrize("image_size", [256, 512])
def test_llamagen_xl_config_has_the_published_shapes(gpu_check, image_size):
    from ranke_trl.models.llamagen import LlamaGenForImageGeneration

    config = gpu_check.llamagen_xl_config(image_size)
    text, vq, t5 = config.text_config, config.vq_config, config.caption_encoder_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (
        1280, 36, 20, 3584
    )
    assert text.vocab_size == vq.num_embeddings == 16384 and (vq.embed_dim, vq.base_channels) == (8, 128)
    assert config.caption_dim == t5.d_model == 2048 and config.caption_max_length == 120
    grid = image_size // 16
    assert config.image_size == image_size and vq.num_patches == config.image_grid_size == grid
    assert text.max_position_embeddings == 120 + grid**2
    with torch.device("meta"):  # shapes only, no memory
        model = LlamaGenForImageGeneration(config)
    gpt = model.model.language_model, model.lm_head, model.model.caption_projector
    assert sum(p.numel() for m in gpt for p in m.parameters()) == 777_678_080  # LLAMAGEN.md: upstream GPT-XL
    assert sum(p.numel() for p in model.model.vqmodel.parameters()) == 71_883_403  # VQ-16


def test_llamagen_tiny_run_reports_every_figure(gpu_check, capsys):
    results = gpu_check.main(["--tiny", "--backbone", "llamagen"])
    printed = capsys.readouterr().out
    assert "tiny llamagen" in printed and "CFG 7.5" in printed
    assert results["greedy_codes_identical"] is True  # fp32: with and without the KV cache, code for code
    assert results["rollout_rows"] == 8 and results["rollouts_per_step"] == 8
    for key in ("ours_tokens_per_s", "no_kv_cache_tokens_per_s", "speedup_vs_no_kv_cache", "step_s",
                "policy_phase_s", "decoder_phase_s"):  # fmt: skip
        assert results[key] > 0, key
        assert key in printed
    assert results["decoder_overhead_ratio"] > 1


def test_image_size_is_for_llamagen_at_full_scale(gpu_check):
    with pytest.raises(SystemExit, match="--image_size"):
        gpu_check.main(["--tiny", "--backbone", "llamagen", "--image_size", "512"])


def test_llamagen_baseline_runs_on_the_first_rows_only(gpu_check):
    model = gpu_check.build_model("llamagen", tiny=True, device=torch.device("cpu"))
    results = gpu_check.rollout_throughput("llamagen", model, torch.device("cpu"), prompts=2, samples=4,
                                           guidance_scale=7.5, baseline_rows=2)  # fmt: skip
    assert results["rollout_rows"] == 8 and results["baseline_rows"] == 2
    assert results["greedy_codes_identical"] is True and results["speedup_vs_no_kv_cache"] > 0


def test_a_static_cache_sampler_is_timed_beside_the_eager_one(gpu_check):
    model = gpu_check.build_model("janus", tiny=True, device=torch.device("cpu"))
    results = gpu_check.rollout_throughput("janus", model, torch.device("cpu"), prompts=1, samples=2,
                                           guidance_scale=5.0, sampler="static")  # fmt: skip
    assert results["sampler"] == "static" and results["greedy_codes_identical"] is True
    assert results["ours_tokens_per_s"] > 0 and results["eager_tokens_per_s"] > 0
