"""`benchmarks/gpu_check.py`, the one-script GPU check, runs end to end at tiny scale on CPU and reports its figures."""

import importlib.util
import os

import pytest

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
