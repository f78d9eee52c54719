"""Recipes: YAML files of dataclass fields, with command-line overrides, read by one parser on TRL's `TrlParser`.

    parse_recipe(["--recipe", "recipes/janus_clip.yaml", "--learning_rate", "2e-6"])  # (RecipeArguments, RankEConfig)
    RecipeParser((EvalArguments,)).parse_args_and_config(["--recipe", "recipes/eval_tiny.yaml"])

`RecipeParser` is `TrlParser` with this library's rules: the file is given as `--recipe FILE` (TRL's `--config FILE`
works too), command-line values win over the file, and every key of both is checked before anything loads. An
unknown key, a value of the wrong type or a value the dataclasses reject raises `RecipeError` naming the key and
where it came from (and, for a typo, the closest valid key).

Names in recipes are open registries: a policy (`register_model_source`), a dataset (`ranke_trl.data`), a reward
(`ranke_trl.rewards`), recipe keys with a training callback (`register_recipe_extension`). Plugins fill them
(`ranke_trl.plugins`), as ShapesWorld does.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields

from trl import TrlParser

from .config import RankEConfig
from .plugins import load_plugins, lookup

DEFAULT_OUTPUT_DIR = "outputs/ranke"


class RecipeError(ValueError):
    """A recipe or command-line override that cannot be used, with what to change."""


@dataclass
class RecipeArguments:
    """What to train on and with which rewards: the recipe fields that are not `RankEConfig` settings."""

    model_name_or_path: str = field(
        default="deepseek-community/Janus-Pro-1B",
        metadata={
            "help": "Policy: a Hub id or local directory of a Janus checkpoint, or a registered name "
            "(`register_model_source`): 'tiny' (random, offline) or a plugin's ('shapes': ShapesWorld's SFT'd policy)."
        },
    )
    dataset_name: str = field(
        default="tiny",
        metadata={
            "help": "Prompt dataset (`ranke_trl.data.open_dataset`): a Hub id, a local `datasets` directory, a data "
            "folder or file, or a registered name: 'tiny' (64 coloured squares, offline) or a plugin's ('shapes')."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Dataset split to train on."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the text prompts."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training rows."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["clip"],
        metadata={"help": "Rewards by name (`ranke_trl.rewards.load_reward`): 'clip', 'hps', 'tiny_clip', or a "
                  "plugin's ('shapes_clip', 'shapes_eval')."},
    )
    rbp_reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Differentiable rewards by name that Stage 2's L_rbp back-propagates instead of the "
                  "differentiable ones among reward_funcs (ours): e.g. a second reward model, so that the reward "
                  "evaluated is not the one the decoder is optimised against. None: reward_funcs (the paper)."},
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
    # Instances of the plugins' recipe sections (`register_recipe_extension`), by name; filled by `parse_recipe`.
    extensions: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.reward_batch_size < 1:
            raise ValueError(f"reward_batch_size must be >= 1, got {self.reward_batch_size}.")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1 (or unset for the whole dataset), got "
                             f"{self.max_train_samples}.")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}.")


class RecipeParser(TrlParser):
    """`trl.TrlParser` with strict keys, typed file values, `--recipe FILE` and `RecipeError`s.

    Args:
        dataclass_types: the dataclasses whose fields are the recipe keys.
        defaults: field values that replace the dataclasses' defaults (the file and the command line still win).

    `parse_args_and_config(argv)` returns one instance per dataclass type. A file value is converted by its field's
    type as the same value on the command line would be, so `learning_rate: fast` fails here, naming the key.
    """

    def __init__(self, dataclass_types: Iterable[type], defaults: dict | None = None):
        super().__init__(tuple(dataclass_types), allow_abbrev=False)
        self.source = "the command line"
        if defaults:
            self.set_defaults(**defaults)

    def error(self, message):  # argparse would print usage and exit; a recipe error should say what to fix
        raise RecipeError(f"{message} (in {self.source})")

    def parse_args_and_config(self, args: Iterable[str] | None = None, **kwargs) -> tuple:
        """Parse `[--recipe FILE] [--key value ...]` (default: `sys.argv[1:]`) into the dataclasses."""
        argv = list(sys.argv[1:] if args is None else args)
        path = None
        for flag in ("--recipe", "--config"):
            for index, token in enumerate(argv):
                if token == flag and index + 1 < len(argv):
                    path, argv = argv[index + 1], argv[:index] + argv[index + 2 :]
                    break
                if token.startswith(flag + "="):
                    path, argv = token.split("=", 1)[1], argv[:index] + argv[index + 1 :]
                    break
        if path is not None and not os.path.isfile(path):
            raise RecipeError(f"Recipe file not found: {path}")
        for token in argv:
            if token.startswith("--") and len(token) > 2:
                self._check_key(token[2:].split("=", 1)[0], "the command line", command_line=True)
        self.source = path or "the command line"
        try:
            return super().parse_args_and_config((["--config", path] if path else []) + argv, **kwargs)
        except RecipeError:
            raise
        except (ValueError, TypeError, FileNotFoundError) as error:  # the dataclasses' own validation
            overrides = any(token.startswith("--") for token in argv)
            where = f"{path} and the command line" if path and overrides else (path or "the command line")
            raise RecipeError(f"Invalid settings (from {where}): {error}") from error
        finally:
            self.source = "the command line"

    def set_defaults_with_config(self, **recipe) -> list[str]:
        """TRL's hook for the file's values: each key is checked and each value typed before it becomes a default."""
        typed = {}
        for key, value in recipe.items():
            action = self._check_key(str(key), self.source)
            typed[key] = self._typed(action, key, value)
        return super().set_defaults_with_config(**typed)

    def _check_key(self, key: str, source: str, command_line: bool = False) -> argparse.Action | None:
        """The action of recipe key `key`; a file key must be a field name, the command line may also use an
        option's other spellings (`--no_bf16`, `--learning-rate`) and `--help`."""
        if command_line and key == "help":
            return None
        action = self._option_string_actions.get(f"--{key}")
        if action is None or action.dest == "help" or (not command_line and action.dest != key):
            valid = sorted({a.dest for a in self._actions if a.dest != "help"})
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"Unknown recipe key '{key}' in {source}.{hint}")
        return action

    def _typed(self, action: argparse.Action, key: str, value):
        """A file value converted as the command line would convert it; lists and mappings of free-form fields
        (e.g. `report_to`, `model_init_kwargs`) are kept as they are."""
        many = action.nargs in ("+", "*")
        free_form = action.type is str and not many  # e.g. report_to: [tensorboard], model_init_kwargs: {...}
        if value is None or action.type is None or (free_form and isinstance(value, (list, dict))):
            return value
        if isinstance(value, dict) or (isinstance(value, list) and not many):
            raise RecipeError(f"Invalid value {value!r} for '{key}' in {self.source}: it takes a single value.")
        values = value if isinstance(value, list) else [value]
        try:
            converted = [action.type(v if isinstance(v, str) else str(v)) for v in values]
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            kind = getattr(action.type, "__name__", "value")
            raise RecipeError(f"Invalid value {value!r} for '{key}' in {self.source}: expected {kind} ({error}).")
        return converted if many else converted[0]


# ------------------------------------------------------------------------ training recipes


@dataclass(frozen=True)
class RecipeExtension:
    """Recipe keys a plugin adds (`arguments`, a dataclass) and its optional training callback factory."""

    arguments: type
    callback: Callable | None = None


RECIPE_EXTENSIONS: dict[str, RecipeExtension] = {}
#: name -> resolver(script_args, config) returning (model or path, processing class or None)
MODEL_SOURCES: dict[str, Callable] = {}


def register_recipe_extension(name: str, arguments: type, callback: Callable | None = None) -> None:
    """Add the fields of the dataclass `arguments` to the training recipe keys of `parse_recipe`.

    After parsing, `script_args.extensions[name]` is the `arguments` instance. `callback(arguments, script_args,
    config, trainer)`, if given, returns a `transformers.TrainerCallback` for the trainer, or None when the recipe
    does not ask for it; `build_callbacks` collects them. Field names must not clash with existing recipe keys.
    """
    taken = {f.name for cls in (RecipeArguments, RankEConfig) for f in fields(cls)}
    taken |= {f.name for other, ext in RECIPE_EXTENSIONS.items() if other != name for f in fields(ext.arguments)}
    clashes = sorted({f.name for f in fields(arguments)} & taken)
    if clashes:
        raise ValueError(f"Recipe extension {name!r} redefines recipe keys {clashes}; rename its fields.")
    RECIPE_EXTENSIONS[name] = RecipeExtension(arguments, callback)


def register_model_source(name: str, resolver: Callable) -> None:
    """Make `name` a `model_name_or_path`: `resolver(script_args, config)` returns `(model_or_path, processor)`,
    what `RankEGRPOTrainer(model=..., processing_class=...)` takes (processor None: loaded with the model).
    A registered name wins over a local directory of the same name."""
    MODEL_SOURCES[name] = resolver


def parse_recipe(argv: list[str] | None = None) -> tuple[RecipeArguments, RankEConfig]:
    """Parse `--recipe FILE` plus `--key value` overrides (overrides win) into `(RecipeArguments, RankEConfig)`.

    The keys are those of `RecipeArguments`, `RankEConfig` and every registered recipe extension (plugins are loaded
    first); the extensions' instances go to `script_args.extensions`. `output_dir` defaults to "outputs/ranke".
    """
    load_plugins()
    names = list(RECIPE_EXTENSIONS)
    types = (RecipeArguments, RankEConfig, *(RECIPE_EXTENSIONS[name].arguments for name in names))
    parser = RecipeParser(types, defaults={"output_dir": DEFAULT_OUTPUT_DIR})
    script_args, config, *extra = parser.parse_args_and_config(argv)
    script_args.extensions = dict(zip(names, extra))
    return script_args, config


def _tiny_policy(script_args: RecipeArguments, config: RankEConfig):
    from .distributed import zero3_init_disabled
    from .tiny import build_tiny_janus, build_tiny_janus_processor

    with zero3_init_disabled(config):  # the same random model as on one process; DeepSpeed partitions it later
        return build_tiny_janus(seed=config.seed), build_tiny_janus_processor()


register_model_source("tiny", _tiny_policy)


def _tiny_llamagen_policy(script_args: RecipeArguments, config: RankEConfig):
    from .distributed import zero3_init_disabled
    from .models.llamagen.tiny_llamagen import build_tiny_llamagen, build_tiny_llamagen_processor

    with zero3_init_disabled(config):  # as 'tiny': built whole, partitioned by DeepSpeed later
        return build_tiny_llamagen(seed=config.seed), build_tiny_llamagen_processor()


register_model_source("tiny_llamagen", _tiny_llamagen_policy)


def build_policy(script_args: RecipeArguments, config: RankEConfig):
    """The policy to hand to the trainer: `(model_or_path, processing_class_or_None)`.

    A registered name (`register_model_source`: 'tiny' builds a random tiny Janus offline; plugins add theirs) is
    resolved; anything else is a Hub id or local directory the trainer loads.
    """
    resolver = lookup(MODEL_SOURCES, script_args.model_name_or_path)
    if resolver is not None:
        return resolver(script_args, config)
    return script_args.model_name_or_path, None


def build_callbacks(script_args: RecipeArguments, config: RankEConfig, trainer) -> list:
    """The training callbacks of the recipe's extensions (`register_recipe_extension`), for `trainer.add_callback`."""
    callbacks = []
    for name, extension in RECIPE_EXTENSIONS.items():
        if extension.callback is not None and name in script_args.extensions:
            callback = extension.callback(script_args.extensions[name], script_args, config, trainer)
            if callback is not None:
                callbacks.append(callback)
    return callbacks


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


def build_rewards(script_args: RecipeArguments, names: list[str] | None = None, **extra) -> list:
    """Instantiate rewards by name, each loaded once: `names`, default the recipe's `reward_funcs`; `extra` keyword
    arguments go to every reward's loader (e.g. a plugin's `cache_dir`)."""
    from .rewards import load_reward

    common = {"batch_size": script_args.reward_batch_size, "dtype": script_args.reward_dtype}
    per_reward = {
        "clip": {"model_name": script_args.clip_model_name, "pretrained": script_args.clip_pretrained},
        "hps": {"version": script_args.hps_version, "checkpoint": script_args.hps_checkpoint},
        "hpsv2": {"version": script_args.hps_version, "checkpoint": script_args.hps_checkpoint},
    }
    names = script_args.reward_funcs if names is None else names
    return [load_reward(name, **common, **extra, **per_reward.get(name, {})) for name in names]


def build_rbp_rewards(script_args: RecipeArguments, **extra) -> list | None:
    """The recipe's `rbp_reward_funcs` as reward objects for `RankEGRPOTrainer(rbp_reward_funcs=...)`, or None."""
    if script_args.rbp_reward_funcs is None:
        return None
    return build_rewards(script_args, script_args.rbp_reward_funcs, **extra)
