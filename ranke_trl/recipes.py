"""Recipes: YAML files of `RecipeArguments` and `RankEConfig` fields, with command-line overrides.

`parse_recipe(["--recipe", "recipes/janus_clip.yaml", "--learning_rate", "2e-6"])` returns the two dataclasses.
Every key is checked before anything loads: an unknown key or a value of the wrong type raises `RecipeError`
naming the key (and, for a typo, the closest valid key).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from dataclasses import dataclass, field, fields

import yaml
from transformers import HfArgumentParser

from .config import RankEConfig


class RecipeError(ValueError):
    """A recipe or command-line override that cannot be used, with what to change."""


@dataclass
class RecipeArguments:
    """What to train on and with which rewards: the recipe fields that are not `RankEConfig` settings."""

    model_name_or_path: str = field(
        default="deepseek-community/Janus-Pro-1B",
        metadata={
            "help": "Policy: a Hub id or local directory of a Janus checkpoint, 'shapes' (ShapesWorld's SFT'd policy, "
            "prepared offline on first use) or 'tiny' (random, offline)."
        },
    )
    dataset_name: str = field(
        default="tiny",
        metadata={
            "help": "Prompt dataset: a Hub id, a local `datasets` directory, a .json/.jsonl/.csv/.parquet file, "
            "'shapes' (ShapesWorld, generated offline) or 'tiny' (64 ShapesWorld rows)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Dataset split to train on."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the text prompts."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training rows."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["clip"],
        metadata={"help": "Rewards by name (see `ranke_trl.rewards.load_reward`): 'clip', 'hps', 'tiny_clip', ..."},
    )
    clip_model_name: str = field(default="ViT-L-14", metadata={"help": "open_clip model of the CLIP reward."})
    clip_pretrained: str = field(
        default="openai",
        metadata={"help": "CLIP weights: an open_clip tag, 'hf-hub:org/name', or a local .safetensors/.bin file."},
    )
    hps_version: str = field(default="v2.1", metadata={"help": "HPS checkpoint version for the 'hps' reward."})
    hps_checkpoint: str | None = field(
        default=None, metadata={"help": "Local HPS checkpoint file; None downloads it from the Hub (xswu/HPSv2)."}
    )
    reward_batch_size: int = field(default=32, metadata={"help": "Images per reward-model forward (Stage 1 chunks)."})
    reward_dtype: str | None = field(
        default=None, metadata={"help": "dtype of the reward models, e.g. 'bfloat16'; None keeps float32."}
    )
    world_eval_prompts: int = field(
        default=256,
        metadata={
            "help": "With `model_name_or_path: shapes`, score the policy + decoder on this many fixed ShapesWorld "
            "validation prompts before and after training (CLIP score, ShapesFID, ShapesEval, token KL) and write "
            "`world_eval.json` to output_dir; 0 skips it (ours: 256)."
        },
    )
    # LoRA on the policy, with TRL's `ModelConfig` names. The decoder always trains in full.
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train a LoRA adapter on the policy instead of all its weights; the reference policy is "
                  "then the base model with the adapter disabled (no EMA reference)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (ours: 16)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha / r (ours: 32)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input (ours: 0.05)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names to adapt, within the image-generation path only (e.g. q_proj v_proj). None: every "
            "attention and MLP projection of the language model, plus the generation aligner and head (ours)."
        },
    )


class _RaisingParser(HfArgumentParser):
    def error(self, message):  # argparse would print usage and exit; a recipe error should say what to fix
        raise RecipeError(message)


def _valid_keys() -> dict[str, type]:
    keys = {}
    for cls in (RecipeArguments, RankEConfig):
        keys.update({f.name: cls for f in fields(cls) if f.init})
    return keys


def _check_key(key: str, source: str) -> None:
    valid = _valid_keys()
    if key not in valid:
        close = difflib.get_close_matches(key, list(valid), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"Unknown recipe key '{key}' in {source}.{hint}")


def _to_argv(key: str, value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"--{key}", str(value).lower()]
    if isinstance(value, list):
        return [f"--{key}", *[json.dumps(v) if isinstance(v, dict) else str(v) for v in value]]
    if isinstance(value, dict):
        return [f"--{key}", json.dumps(value)]
    return [f"--{key}", str(value)]


def load_recipe_file(path: str) -> dict:
    """Read a recipe YAML into a dict, checking that it is a mapping of valid keys."""
    if not os.path.isfile(path):
        raise RecipeError(f"Recipe file not found: {path}")
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path} must be a YAML mapping of settings, got {type(recipe).__name__}.")
    for key in recipe:
        _check_key(str(key), path)
    return recipe


def parse_recipe(argv: list[str] | None = None) -> tuple[RecipeArguments, RankEConfig]:
    """Parse `--recipe FILE` plus `--key value` overrides (overrides win) into `(RecipeArguments, RankEConfig)`."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    known, overrides = pre.parse_known_args(argv)
    recipe = load_recipe_file(known.recipe) if known.recipe else {}
    for token in overrides:
        if token.startswith("--"):
            _check_key(token[2:].split("=", 1)[0], "the command line")
    recipe_argv = [token for key, value in recipe.items() for token in _to_argv(key, value)]
    if "output_dir" not in recipe and not any(t.split("=", 1)[0] == "--output_dir" for t in overrides):
        recipe_argv += ["--output_dir", "outputs/ranke"]
    parser = _RaisingParser((RecipeArguments, RankEConfig))
    try:
        script_args, config = parser.parse_args_into_dataclasses(recipe_argv + overrides)
    except RecipeError:
        raise
    except (ValueError, TypeError) as err:  # RankEConfig / TrainingArguments validation
        raise RecipeError(f"Invalid settings in {known.recipe or 'the command line'}: {err}") from err
    return script_args, config


def build_policy(script_args: RecipeArguments, config: RankEConfig):
    """The policy to hand to the trainer: `(model_or_path, processing_class_or_None)`.

    'tiny' builds a random tiny Janus offline; 'shapes' is ShapesWorld's SFT'd policy (prepared and cached on first
    use, see examples/prepare_shapes_world.py); anything else is a Hub id or local directory the trainer loads.
    """
    if script_args.model_name_or_path == "shapes":
        from .world.pretrain import shapes_policy_path

        return shapes_policy_path(), None
    if script_args.model_name_or_path == "tiny":
        from .distributed import zero3_init_disabled
        from .tiny import build_tiny_janus, build_tiny_janus_processor

        with zero3_init_disabled(config):  # the same random model as on one process; DeepSpeed partitions it later
            return build_tiny_janus(seed=config.seed), build_tiny_janus_processor()
    return script_args.model_name_or_path, None


def build_peft_config(script_args: RecipeArguments):
    """The recipe's `peft.LoraConfig`, or None without `use_peft`.

    `target_modules` stays None or a list of names; the trainer confines it to the policy's generation path.
    """
    if not script_args.use_peft:
        return None
    from peft import LoraConfig

    if script_args.lora_r < 1:
        raise RecipeError(f"lora_r must be >= 1, got {script_args.lora_r}.")
    return LoraConfig(
        r=script_args.lora_r,
        lora_alpha=script_args.lora_alpha,
        lora_dropout=script_args.lora_dropout,
        target_modules=script_args.lora_target_modules,
        bias="none",
    )


def build_rewards(script_args: RecipeArguments) -> list:
    """Instantiate the recipe's rewards by name, each loaded once."""
    from .rewards import load_reward

    common = {"batch_size": script_args.reward_batch_size, "dtype": script_args.reward_dtype}
    per_reward = {
        "clip": {"model_name": script_args.clip_model_name, "pretrained": script_args.clip_pretrained},
        "hps": {"version": script_args.hps_version, "checkpoint": script_args.hps_checkpoint},
        "hpsv2": {"version": script_args.hps_version, "checkpoint": script_args.hps_checkpoint},
    }
    return [load_reward(name, **common, **per_reward.get(name, {})) for name in script_args.reward_funcs]


# ------------------------------------------------------------------------ recipes of other dataclasses (evaluation)


def _check_key_among(key: str, valid: list[str], source: str) -> None:
    if key not in valid:
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"Unknown recipe key '{key}' in {source}.{hint}")


def parse_dataclass_recipe(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """`parse_recipe` for any dataclasses (e.g. `EvalArguments`): `--recipe FILE` plus `--key value` overrides.

    Every key of the file and of the command line is checked against the dataclasses' fields before anything
    loads: an unknown key raises `RecipeError` naming it and the closest valid key. Errors the dataclasses raise
    while validating (`__post_init__`) become `RecipeError`s naming the recipe. Returns one instance per type.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    valid = [f.name for cls in dataclass_types for f in fields(cls) if f.init]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    known, overrides = pre.parse_known_args(argv)
    recipe = {}
    if known.recipe:
        if not os.path.isfile(known.recipe):
            raise RecipeError(f"Recipe file not found: {known.recipe}")
        with open(known.recipe, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
        if not isinstance(recipe, dict):
            raise RecipeError(f"{known.recipe} must be a YAML mapping of settings, got {type(recipe).__name__}.")
        for key in recipe:
            _check_key_among(str(key), valid, known.recipe)
    for token in overrides:
        if token.startswith("--") and token != "--help":
            _check_key_among(token[2:].split("=", 1)[0], valid, "the command line")
    recipe_argv = [token for key, value in recipe.items() for token in _to_argv(key, value)]
    parser = _RaisingParser(tuple(dataclass_types))
    try:
        return tuple(parser.parse_args_into_dataclasses(recipe_argv + overrides))
    except RecipeError:
        raise
    except (ValueError, TypeError, FileNotFoundError) as err:  # the dataclasses' own validation
        raise RecipeError(f"Invalid settings in {known.recipe or 'the command line'}: {err}") from err
