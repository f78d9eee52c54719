"""ShapesWorld's pretrained components (`shapes_world.pretrain`): a tiny preparation, its cache and its loaders."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from shapes_world import pretrain
from shapes_world.features import CELL_CLASSES, ShapesAttributeNet, cell_targets
from shapes_world.perceptual import ShapesPerceptualDistance, l2_quantize
from shapes_world.scenes import Scene, ShapeSpec


@pytest.fixture
def cache(tiny_world):
    """The session's tiny ShapesWorld preparation (conftest.py); these tests only read it."""
    return tiny_world


def _refuse_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have been reused, not retrained")

    for name in ("train_attribute_net", "train_vqgan", "train_shapes_clip"):
        monkeypatch.setattr(pretrain, name, refuse)


def test_preparation_writes_a_manifest_with_seed_command_versions_times_and_quality(cache):
    manifest = json.loads((Path(cache) / "manifest.json").read_text())
    assert manifest["identity"]["seed"] == 0 and manifest["identity"]["tiny"] is True
    assert manifest["command"] and "prepare_shapes_world(" in manifest["call"]
    assert {"torch", "transformers", "open_clip"} <= set(manifest["versions"])
    assert list(manifest["stages"]) == list(pretrain.STAGES)
    assert all(record["wall_s"] >= 0 for record in manifest["stages"].values())
    assert {"recon_l1", "codebook_usage", "recon_shapes_eval"} <= set(manifest["stages"]["vq"]["quality"])
    assert {"retrieval_top1", "retrieval_chance"} <= set(manifest["stages"]["clip"]["quality"])
    policy_quality = manifest["stages"]["policy"]["quality"]
    assert {"sft_train_loss", "samples_shapes_eval", "samples_shapes_fid"} <= set(policy_quality)
    assert manifest["quality"]["vq_recon_l1"] == manifest["stages"]["vq"]["quality"]["recon_l1"]


def test_policy_and_processor_load_with_from_pretrained_and_hold_the_trained_vq(cache):
    from transformers import AutoProcessor, JanusForConditionalGeneration

    path = pretrain.shapes_policy_path(cache, prepare=False)
    model = JanusForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    vq = pretrain.load_shapes_vq(cache, prepare=False)
    assert type(processor).__name__ == "JanusProcessor"
    for name, tensor in vq.state_dict().items():
        assert torch.equal(model.model.vqmodel.state_dict()[name], tensor), name


def test_saved_policy_samples_and_decodes_images(cache):
    from transformers import AutoProcessor, JanusForConditionalGeneration

    from ranke_trl.policy import make_policy

    path = pretrain.shapes_policy_path(cache, prepare=False)
    model = JanusForConditionalGeneration.from_pretrained(path)
    policy = make_policy(model, AutoProcessor.from_pretrained(path))
    codes = policy.sample(model, policy.encode_prompts(["a red circle"]), guidance_scale=3.0)
    assert policy.codec(model).decode(codes).shape == (1, 3, 64, 64)


def test_shapes_clip_reward_loads_through_the_reward_registry(cache):
    from ranke_trl.rewards import load_reward

    reward = load_reward("shapes_clip", cache_dir=cache, prepare=False)
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    scores = reward.score(images, ["a red circle", "two squares"])
    scores.sum().backward()
    assert reward.__name__ == "shapes_clip"
    assert scores.shape == (2,) and bool(((scores >= -1) & (scores <= 1)).all())
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_shapes_fid_loads_its_reference_and_scores_images(cache):
    metric = pretrain.load_shapes_fid(cache, prepare=False)
    metric.update_fake(torch.rand(4, 3, 64, 64))
    assert metric.num_real == pretrain.TINY.num_eval_images
    assert np.isfinite(metric.compute())


def test_a_second_call_reuses_the_cache_without_training(cache, monkeypatch):
    before = (Path(cache) / "manifest.json").read_text()
    _refuse_training(monkeypatch)
    assert pretrain.prepare_shapes_world(cache, tiny=True, show_progress=False) == cache
    assert (Path(cache) / "manifest.json").read_text() == before


def test_a_missing_stage_is_retrained_from_the_stages_before_it(cache, tmp_path, monkeypatch):
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    shutil.rmtree(copy / "policy")
    _refuse_training(monkeypatch)  # features, VQ and CLIP load from the cache; only the SFT runs
    pretrain.prepare_shapes_world(copy, tiny=True, show_progress=False)
    assert (copy / "policy" / "model.safetensors").is_file()


def test_a_preparation_names_its_cache_stages_and_estimate_and_shows_progress(cache, tmp_path, capsys):
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    for stage in ("clip", "policy"):
        shutil.rmtree(copy / stage)
    pretrain.prepare_shapes_world(copy, tiny=True, show_progress=True)
    out, err = capsys.readouterr()
    assert (
        f"Preparing ShapesWorld (first run only) into {copy}: 4 stages (feature net, VQ tokenizer, CLIP, SFT policy), "
        "8x8 codes, under a minute on 2 cores; stages 1-2 are cached, resuming at stage 3" in out
    )
    assert "stage 3/4: CLIP" in out and "stage 4/4: SFT policy" in out and "stage 2/4" not in out
    for bar in ("rendering train scenes", "VQ tokenizer: encoding train images", "CLIP: decoding train images",
                "CLIP: training", "image-token SFT", "SFT policy: sampling", "SFT policy: decoding samples"):
        assert bar in err, bar
    assert "ShapesWorld prepared in" in out


def test_a_complete_cache_is_reused_silently(cache, capsys):
    pretrain.prepare_shapes_world(cache, tiny=True, show_progress=True)
    assert capsys.readouterr() == ("", "")


def test_saved_policy_config_agrees_with_its_tokenizer_so_trainers_realign_nothing(cache):
    from transformers import AutoProcessor, JanusForConditionalGeneration
    from transformers.trainer_utils import align_special_tokens

    path = pretrain.shapes_policy_path(cache, prepare=False)
    model, processor = JanusForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)
    names = ("bos_token_id", "eos_token_id", "pad_token_id")
    configs = (model.config.get_text_config(), model.generation_config)
    before = [[getattr(config, name) for name in names] for config in configs]
    align_special_tokens(model, processor)  # what Trainer does, warning about every id it changes
    assert [[getattr(config, name) for name in names] for config in configs] == before
    assert before[0] == [getattr(processor.tokenizer, name) for name in names]


def test_a_cache_prepared_with_another_seed_is_refused(cache):
    with pytest.raises(ValueError, match="force=True"):
        pretrain.prepare_shapes_world(cache, tiny=True, seed=1, show_progress=False)


def test_loading_a_missing_component_without_prepare_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_shapes_world"):
        pretrain.shapes_policy_path(tmp_path, prepare=False)


def test_cache_dir_defaults_to_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "world"))
    assert pretrain.shapes_cache_dir() == tmp_path / "world"
    assert pretrain.shapes_cache_dir(tiny=True) == tmp_path / "world_tiny"


def test_l2_quantize_gives_the_codes_of_the_codec_lookup_and_decode():
    from transformers import JanusVQVAE

    from ranke_trl.policy.janus import JanusVQCodec
    from ranke_trl.tiny import tiny_janus_config

    torch.manual_seed(0)
    vq = JanusVQVAE(tiny_janus_config().vq_config).eval()
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        quantized, codes, _, _ = l2_quantize(vq, pixels)
        assert torch.equal(codes, JanusVQCodec(vq).encode(pixels))
        assert torch.allclose(vq.decoder(vq.post_quant_conv(quantized)), vq.decode(codes), atol=1e-5)


def test_cell_targets_put_each_shape_in_its_grid_cell():
    scene = Scene(
        (ShapeSpec("circle", "red", "small", 16, 16), ShapeSpec("square", "blue", "large", 48, 48)),
        {"prompt": "a circle and a square", "tag": "two_object"},
    )
    names = [CELL_CLASSES[i] for i in cell_targets(scene)]
    assert names == ["red circle", "empty", "empty", "blue square"]


def test_perceptual_distance_is_zero_for_equal_images_and_positive_otherwise():
    distance = ShapesPerceptualDistance(ShapesAttributeNet())
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(distance(x, x), torch.zeros(2), atol=1e-6)
    assert bool((distance(x, y) > 0).all())


def test_a_cache_written_before_patch_size_existed_is_reused_as_the_8x8_world(cache, tmp_path, monkeypatch):
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["identity"]["settings"]["patch_size"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _refuse_training(monkeypatch)
    assert pretrain.prepare_shapes_world(copy, tiny=True, show_progress=False) == str(copy)
    with pytest.raises(ValueError, match="patch_size=8 .* but seed=0, tiny=True, patch_size=4 was asked for"):
        pretrain.prepare_shapes_world(copy, tiny=True, show_progress=False, patch_size=4)


def test_until_stops_after_the_stage_and_a_later_call_resumes_with_the_recorded_grid(tmp_path, capsys):
    root = tmp_path / "world"
    pretrain.prepare_shapes_world(root, tiny=True, patch_size=4, until="vq", show_progress=True)
    manifest = pretrain.read_manifest(root)
    assert list(manifest["stages"]) == ["features", "vq"] and "quality" not in manifest
    assert not (root / "clip").exists() and not (root / "policy").exists()
    out = capsys.readouterr().out
    assert "16x16 codes" in out and "stopping after stage 2 (VQ tokenizer) as asked" in out
    vq = pretrain.load_shapes_vq(root, prepare=False)
    assert vq.config.num_patches == 16
    # the gate's pre-RL check runs on a world prepared up to its VQ
    from shapes_world.rendering import run_perturbation_check

    rows = run_perturbation_check(root, num_images=4, corpus_images=8, fractions=(0.0, 0.25))["rows"]
    assert [row["p"] for row in rows] == [0.0, 0.25] and rows[0]["l1_to_unperturbed"] == 0.0
    assert rows[1]["l1_to_unperturbed"] > 0
    # a loader that needs a later stage finishes the world with the grid the cache was prepared with
    policy_path = pretrain.shapes_policy_path(root)
    from transformers import AutoProcessor, JanusForConditionalGeneration

    model = JanusForConditionalGeneration.from_pretrained(policy_path)
    assert model.config.vision_config.num_image_tokens == 256
    assert AutoProcessor.from_pretrained(policy_path).num_image_tokens == 256
    manifest = pretrain.read_manifest(root)
    assert list(manifest["stages"]) == list(pretrain.STAGES) and manifest["identity"]["settings"]["patch_size"] == 4
    for name, tensor in vq.state_dict().items():  # the VQ was kept, not retrained
        assert torch.equal(model.model.vqmodel.state_dict()[name], tensor), name


def test_bad_until_and_patch_size_are_refused_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match="until='decoder' is not a stage; use one of"):
        pretrain.prepare_shapes_world(tmp_path, tiny=True, until="decoder")
    with pytest.raises(ValueError, match="patch_size=6: use 4, 8 or 16"):
        pretrain.prepare_shapes_world(tmp_path, tiny=True, patch_size=6)


def test_a_second_clip_is_added_to_a_prepared_world_and_loads_as_its_own_reward(cache, tmp_path, monkeypatch):
    from ranke_trl.rewards import load_reward

    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    with pytest.raises(FileNotFoundError, match="--second_clip"):
        pretrain.shapes_clip_reward(copy, prepare=False, second=True)
    for name in ("train_attribute_net", "train_vqgan"):  # only the CLIP trainer may run
        monkeypatch.setattr(pretrain, name, lambda *a, **k: pytest.fail("the world was retrained"))
    before = {stage: (copy / stage / "model.safetensors").read_bytes() for stage in ("vq", "policy")}
    second = load_reward("shapes_clip_second", cache_dir=str(copy))  # prepares the stage on first use
    first = load_reward("shapes_clip", cache_dir=str(copy))
    assert second.__name__ == "shapes_clip_second" and second.is_differentiable
    record = pretrain.read_manifest(copy)["stages"][pretrain.SECOND_CLIP_STAGE]
    assert record["seed"] == pretrain.SECOND_CLIP_SEED_OFFSET and "retrieval_top1" in record["quality"]
    weights = [dict(r.model.named_parameters()) for r in (first, second)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert before == {stage: (copy / stage / "model.safetensors").read_bytes() for stage in ("vq", "policy")}
    images = torch.rand(2, 3, 64, 64)
    assert second.score(images, ["a red circle", "a blue square"]).shape == (2,)
