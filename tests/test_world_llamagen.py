"""ShapesWorld's LlamaGen policy (`prepare_shapes_world(backbone="llamagen")`, `shapes_world/llamagen_policy.py`):
an existing tiny world gains it without retraining the rest, its SFT trains it, it reloads and samples the world's
codes, and `recipes/shapes_llamagen_clip.yaml` trains it with RankE in the world."""

import json
import os
import shutil
import types
from pathlib import Path

import examples_loader
import pytest
import torch
from safetensors.torch import load_file

from shapes_world import pretrain
from shapes_world.llamagen_policy import (
    LLAMAGEN_TINY,
    build_world_llamagen,
    caption_encoder_config,
    caption_retrieval_top1,
    train_caption_encoder,
    world_caption_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
JANUS_STAGES = [(stage, name) for stage in pretrain.STAGES for name in ("model.safetensors", "config.json")]


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """A copy of the session's tiny world (conftest.py) that gained the LlamaGen policy; training anything else
    fails the preparation."""
    root = tmp_path_factory.mktemp("llamagen_world") / "cache"
    shutil.copytree(tiny_world, root)

    def refuse(*args, **kwargs):
        raise AssertionError("the world's own stages should have been loaded, not retrained")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("train_attribute_net", "train_vqgan", "train_shapes_clip", "_train_policy"):
            patch.setattr(pretrain, name, refuse)
        pretrain.prepare_shapes_world(root, tiny=True, seed=0, show_progress=False, backbone="llamagen")
    return root


def _policy(world):
    from ranke_trl.policy import load_policy_model, make_policy

    path = pretrain.shapes_policy_path(world, prepare=False, backbone="llamagen")
    model, processor = load_policy_model(path, types.SimpleNamespace(model_init_kwargs=None, trust_remote_code=False))
    return model, make_policy(model, processor)


def test_an_existing_world_gains_the_llamagen_policy_and_keeps_everything_else(world, tiny_world):
    before, after = (json.loads((Path(root) / "manifest.json").read_text()) for root in (tiny_world, world))
    assert {stage: after["stages"][stage] for stage in pretrain.STAGES} == before["stages"]
    for stage, name in JANUS_STAGES:
        if (Path(tiny_world) / stage / name).is_file():
            assert (world / stage / name).read_bytes() == (Path(tiny_world) / stage / name).read_bytes(), stage
    record = after["stages"][pretrain.LLAMAGEN_STAGE]
    assert record["settings"]["caption_dim"] == LLAMAGEN_TINY.caption_dim and record["wall_s"] >= 0
    assert {"caption_encoder_retrieval_top1", "sft_eval_loss", "samples_shapes_eval", "samples_shapes_fid"} <= set(
        record["quality"]
    )
    assert after["quality"]["llamagen_sft_eval_loss"] == record["quality"]["sft_eval_loss"]
    assert (world / pretrain.LLAMAGEN_STAGE / "model.safetensors").is_file()


def test_a_second_request_reuses_the_llamagen_policy(world, monkeypatch):
    before = (world / "manifest.json").read_text()
    monkeypatch.setattr("shapes_world.llamagen_policy.train_llamagen_policy", lambda *a, **k: pytest.fail("retrained"))
    pretrain.prepare_shapes_world(world, tiny=True, show_progress=False, backbone="llamagen")
    assert (world / "manifest.json").read_text() == before


def test_the_sft_trains_gpt_projector_and_head_and_lowers_the_loss_on_the_worlds_codes(world):
    from ranke_trl.policy import make_policy
    from ranke_trl.sft import image_token_nll
    from shapes_world.data import sample_scenes

    trained, policy = _policy(world)
    vq = pretrain.load_shapes_vq(world, prepare=False)
    initial = build_world_llamagen(pretrain.TINY, LLAMAGEN_TINY, vq, trained.model.text_encoder, seed=0)
    start, end = initial.state_dict(), trained.state_dict()
    changed = {name for name in start if not torch.equal(start[name], end[name])}
    assert any(n.startswith("model.language_model.") for n in changed) and "lm_head.weight" in changed
    assert "model.caption_projector.fc1.weight" in changed
    assert not any(n.startswith(("model.text_encoder.", "model.vqmodel.")) for n in changed)  # frozen, shared
    assert "model.caption_projector.uncond_embedding" not in changed  # random, never trained: the same start

    scenes = sample_scenes("train", pretrain.TINY.num_train_images, 0)  # the SFT's own pairs
    prompts = [scene.prompt for scene in scenes]
    codes = policy.codec(trained).encode(pretrain._render("train", len(scenes), 0)[1].float() / 127.5 - 1)
    losses = []
    for model in (initial, trained):
        scorer = make_policy(model, policy.tokenizer)
        scorer.prepare_for_training(model)
        with torch.no_grad():
            losses.append(image_token_nll(scorer, model.eval(), scorer.encode_prompts(prompts), codes).item())
    assert losses[1] < losses[0]
    quality = json.loads((world / "manifest.json").read_text())["stages"][pretrain.LLAMAGEN_STAGE]["quality"]
    assert quality["sft_eval_loss"] < quality["sft_initial_eval_loss"]


def test_the_saved_policy_reloads_and_samples_codes_of_the_worlds_codebook(world):
    from ranke_trl.policy import LlamaGenPolicy

    model, policy = _policy(world)
    assert isinstance(policy, LlamaGenPolicy) and model.config.model_type == "llamagen"
    assert not any(p.requires_grad for p in model.model.text_encoder.parameters())
    prompts = policy.encode_prompts(["a red circle to the left of a blue square", "three triangles"])
    codes = policy.sample(model, prompts, guidance_scale=3.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 64) and codes.min() >= 0 and codes.max() < pretrain.TINY.codebook_size
    assert policy.codec(model).decode_images(codes).shape == (2, 3, 64, 64)


def test_both_backbones_share_the_worlds_vq_codes_and_decoder(world):
    from ranke_trl.policy.janus import JanusVQCodec

    model, policy = _policy(world)
    world_codec, codec = JanusVQCodec(pretrain.load_shapes_vq(world, prepare=False)), policy.codec(model)
    pixels = pretrain._render("validation", 8, 0)[1].float() / 127.5 - 1
    codes = world_codec.encode(pixels)
    assert torch.equal(codec.encode(pixels), codes)
    with torch.no_grad():
        assert torch.equal(codec.decode(codes), world_codec.decode(codes))


def test_the_caption_encoder_learns_the_clip_text_embeddings_of_the_captions():
    from ranke_trl.models.llamagen import LlamaGenProcessor

    processor = LlamaGenProcessor(tokenizer=world_caption_tokenizer())
    captions = ["a red circle", "a blue circle", "a red square", "two squares", "a circle to the left of a square",
                "a square to the left of a circle"]
    targets = torch.nn.functional.normalize(torch.randn(len(captions), 16, generator=torch.Generator().manual_seed(0)))
    config = caption_encoder_config(LLAMAGEN_TINY, len(processor.tokenizer))
    encoder, head, losses = train_caption_encoder(config, processor, captions, targets, 60, 6, 1e-2, 0, False)
    assert losses[-1] < 0.5 * losses[0]
    assert caption_retrieval_top1(encoder, head, processor, captions, targets) == 1.0  # order is read, too
    assert not any(p.requires_grad for p in encoder.parameters())


def test_the_world_tokenizer_reads_world_captions_as_whole_words():
    tokens = world_caption_tokenizer().tokenize("three purple rectangles above a yellow triangle")
    assert tokens == ["▁three", "▁purple", "▁rectangles", "▁above", "▁a", "▁yellow", "▁triangle"]


def test_a_missing_llamagen_policy_without_prepare_names_the_command(tiny_world):
    with pytest.raises(FileNotFoundError, match="--backbone llamagen"):
        pretrain.shapes_policy_path(tiny_world, prepare=False, backbone="llamagen")
    with pytest.raises(ValueError, match="'janus', 'llamagen'"):
        pretrain.prepare_shapes_world(tiny_world, tiny=True, backbone="llama")


def test_the_recipe_key_routes_model_name_shapes_to_the_llamagen_policy(world, monkeypatch):
    from ranke_trl.recipes import RecipeError, build_policy, parse_recipe

    monkeypatch.setenv(pretrain.CACHE_ENV, str(world))
    recipe = str(REPO / "recipes" / "shapes_llamagen_clip.yaml")
    script_args, config = parse_recipe(["--recipe", recipe])
    assert build_policy(script_args, config) == (str(world / pretrain.LLAMAGEN_STAGE), None)
    script_args, config = parse_recipe(["--recipe", recipe, "--shapes_backbone", "janus"])
    assert build_policy(script_args, config) == (str(world / "policy"), None)
    with pytest.raises((RecipeError, ValueError), match="shapes_backbone"):
        parse_recipe(["--recipe", recipe, "--shapes_backbone", "llama"])


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_the_shapes_llamagen_recipe_trains_policy_and_decoder_with_ranke_in_the_world(world, tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.setenv(pretrain.CACHE_ENV, str(world))
    examples_loader.load("train_janus").main([
        "--recipe", str(REPO / "recipes" / "shapes_llamagen_clip.yaml"), "--output_dir", str(tmp_path),
        "--max_steps", "2", "--save_steps", "2", "--log_images_steps", "0", "--report_to", "none",
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_train_samples", "16",
        "--world_eval_prompts", "4",
    ])
    out = capsys.readouterr().out
    assert "RankE finished 2 steps." in out and "ShapesWorld evaluation" in out
    start, end = _weights(world / pretrain.LLAMAGEN_STAGE), _weights(tmp_path)
    changed = {name for name in start if not torch.equal(start[name], end[name])}
    assert "lm_head.weight" in changed and any(n.startswith("model.language_model.layers.") for n in changed)
    assert any(n.startswith("model.vqmodel.decoder.") for n in changed)  # RankE's decoder phase
    assert not any(n.startswith("model.text_encoder.") for n in changed)
    assert not any(n.startswith("model.vqmodel.encoder.") for n in changed)  # the codes stay the world's
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llamagen"
    assert os.path.isdir(tmp_path / "decoder")
