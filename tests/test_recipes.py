"""Recipes: YAML + command-line overrides, read by one parser on TRL's `TrlParser`, checked before anything loads."""

import glob
import os

import pytest

from ranke_trl.cli import parse_eval_args
from ranke_trl.recipes import RecipeError, RecipeParser, parse_recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "*.yaml")))
TRAIN_RECIPES = [p for p in RECIPES if not os.path.basename(p).startswith("eval")]
EVAL_RECIPES = [p for p in RECIPES if os.path.basename(p).startswith("eval")]


@pytest.mark.parametrize("path", TRAIN_RECIPES, ids=os.path.basename)
def test_every_shipped_training_recipe_parses(path):
    script_args, config = parse_recipe(["--recipe", path, "--bf16", "false"])  # bf16 needs a GPU here
    assert script_args.reward_funcs and config.num_generations >= 2


@pytest.mark.parametrize("path", EVAL_RECIPES, ids=os.path.basename)
def test_every_shipped_evaluation_recipe_parses(path):
    args = parse_eval_args(["--recipe", path])
    assert args.metrics and args.output_dir


def test_the_parser_is_trls():
    from trl import TrlParser

    assert issubclass(RecipeParser, TrlParser)


def test_janus_clip_recipe_has_the_papers_stage1_settings():
    script_args, config = parse_recipe(["--recipe", os.path.join(REPO, "recipes/janus_clip.yaml"), "--bf16=false"])
    assert script_args.model_name_or_path == "deepseek-community/Janus-Pro-1B"
    assert script_args.reward_funcs == ["clip"] and script_args.clip_model_name == "ViT-L-14"
    assert (config.num_generations, config.temperature, config.top_p) == (8, 1.0, 0.9)
    assert (config.epsilon, config.beta, config.loss_type, config.sync_ref_model) == (0.2, 0.05, "grpo", True)
    assert config.weight_decay == 0.01 and config.train_policy and config.train_decoder


def _write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(RecipeError, match="Unknown recipe key 'lerning_rate'.*Did you mean 'learning_rate'"):
        parse_recipe(["--recipe", _write(tmp_path, "lerning_rate: 1.0e-6\n")])


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(RecipeError, match="'learning_rate' in .*recipe.yaml.*float"):
        parse_recipe(["--recipe", _write(tmp_path, "learning_rate: fast\n")])


def test_file_values_are_typed_like_command_line_values(tmp_path):
    with pytest.raises(RecipeError, match="'num_generations'.*int"):
        parse_recipe(["--recipe", _write(tmp_path, "bf16: false\nnum_generations: 4.5\n")])
    with pytest.raises(RecipeError, match="'beta'.*single value"):
        parse_recipe(["--recipe", _write(tmp_path, "bf16: false\nbeta: [0.1, 0.2]\n")])


def test_wrong_type_on_the_command_line_is_named():
    with pytest.raises(RecipeError, match="--learning_rate.*invalid float value: 'fast'"):
        parse_recipe(["--bf16", "false", "--learning_rate", "fast"])


def test_unknown_command_line_key_is_named(tmp_path):
    with pytest.raises(RecipeError, match="Unknown recipe key 'guidance' in the command line"):
        parse_recipe(["--recipe", _write(tmp_path, "bf16: false\n"), "--guidance", "3"])


def test_invalid_value_fails_with_the_reason(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe.yaml\): guidance_scale must be .*>= 1"):
        parse_recipe(["--recipe", _write(tmp_path, "bf16: false\nguidance_scale: 0.5\n")])
    with pytest.raises(RecipeError, match=r"recipe.yaml and the command line\): RankEConfig.lambda_rec must be"):
        parse_recipe(["--recipe", _write(tmp_path, "bf16: false\n"), "--lambda_rec", "nan"])


def test_command_line_overrides_win(tmp_path):
    recipe = _write(tmp_path, "bf16: false\nlearning_rate: 1.0e-6\nreward_funcs: [clip]\n")
    script_args, config = parse_recipe(
        ["--recipe", recipe, "--learning_rate", "3e-5", "--reward_funcs", "tiny_clip", "hps", "--guidance_scale=2"]
    )
    assert config.learning_rate == 3e-5 and config.guidance_scale == 2.0
    assert script_args.reward_funcs == ["tiny_clip", "hps"]


def test_trls_config_flag_reads_the_recipe_too(tmp_path):
    _, config = parse_recipe(["--config", _write(tmp_path, "bf16: false\nlearning_rate: 2.0e-6\n")])
    assert config.learning_rate == 2e-6


def test_output_dir_has_a_default_the_recipe_can_replace(tmp_path):
    assert parse_recipe(["--bf16", "false"])[1].output_dir == "outputs/ranke"
    assert parse_recipe(["--recipe", _write(tmp_path, "bf16: false\noutput_dir: runs/x\n")])[1].output_dir == "runs/x"


def test_uniform_gan_from_recipe(tmp_path):
    _, config = parse_recipe(["--recipe", _write(tmp_path, "bf16: false\nrank_gan_temperature: inf\n")])
    assert config.rank_gan_temperature == float("inf")


def test_missing_recipe_file_is_reported(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        parse_recipe(["--recipe", str(tmp_path / "nope.yaml")])


def test_plugin_recipe_keys_are_parsed_into_their_section():
    script_args, _ = parse_recipe(["--recipe", os.path.join(REPO, "recipes/shapes_clip.yaml"), "--world_eval_prompts",
                                   "8"])
    assert script_args.extensions["shapes_world"].world_eval_prompts == 8


def test_evaluation_recipes_have_the_same_rules(tmp_path):
    with pytest.raises(RecipeError, match="'clip_modle_name' in .*recipe.yaml.*Did you mean 'clip_model_name'"):
        parse_eval_args(["--recipe", _write(tmp_path, "policy_name_or_path: x\nclip_modle_name: ViT-B-32\n")])
    with pytest.raises(RecipeError, match="'max_promts' in the command line.*Did you mean 'max_prompts'"):
        parse_eval_args(["--recipe", os.path.join(REPO, "recipes/eval_tiny.yaml"), "--max_promts", "3"])
    with pytest.raises(RecipeError, match="'batch_size'.*int"):
        parse_eval_args(["--recipe", _write(tmp_path, "policy_name_or_path: x\nbatch_size: many\n")])
    args = parse_eval_args(["--recipe", os.path.join(REPO, "recipes/eval_tiny.yaml"), "--max_prompts", "3"])
    assert args.max_prompts == 3 and args.prompt_set == "shapes"


def test_unknown_prompt_set_lists_the_registered_ones(tmp_path):
    with pytest.raises(RecipeError, match="Unknown prompt_set 'coco'.*'dataset'.*'geneval'.*'hps'"):
        parse_eval_args(["--policy_name_or_path", "x", "--prompt_set", "coco"])


def test_recipe_errors_come_before_any_model_loads_as_one_named_line(tmp_path, monkeypatch, capsys):
    import examples_loader

    loaded = []
    monkeypatch.setattr("ranke_trl.recipes.build_policy", lambda *a, **k: loaded.append(1))
    main = examples_loader.load("train_janus").main
    with pytest.raises(SystemExit) as exit_info:
        main(["--recipe", _write(tmp_path, "bf16: false\nnum_generation: 4\n")])
    assert exit_info.value.code == 2 and not loaded
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown recipe key 'num_generation'") and "Traceback" not in err


def test_rbp_reward_funcs_name_the_rewards_l_rbp_uses_and_default_to_none():
    from ranke_trl.recipes import build_rbp_rewards

    recipe = os.path.join(REPO, "recipes/janus_clip.yaml")
    script_args, _ = parse_recipe(["--recipe", recipe, "--bf16", "false"])
    assert script_args.rbp_reward_funcs is None and build_rbp_rewards(script_args) is None
    script_args, _ = parse_recipe(["--recipe", recipe, "--bf16", "false", "--rbp_reward_funcs", "tiny_clip"])
    (reward,) = build_rbp_rewards(script_args)
    assert script_args.rbp_reward_funcs == ["tiny_clip"] and reward.is_differentiable
