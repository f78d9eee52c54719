"""Third-party extension: a reward, a dataset, a prompt set and recipe keys registered from outside the library are
used by name through the recipe, trainer and evaluation paths, as ShapesWorld's are (`ranke_trl.plugins`)."""

from dataclasses import dataclass, field

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

import examples_loader
from ranke_trl import plugins
from ranke_trl.cli import parse_eval_args
from ranke_trl.data import DATASETS, colour_squares, register_dataset
from ranke_trl.evaluation.eval_sets import PROMPT_SETS, PromptRecord, load_eval_prompts, register_prompt_set
from ranke_trl.evaluation.runner import evaluate
from ranke_trl.recipes import RECIPE_EXTENSIONS, RecipeError, register_recipe_extension
from ranke_trl.rewards import REWARDS, load_reward, register_reward

SEEN: dict = {"prompts": [], "callback": []}


def brightness_reward(**_):
    """A third-party reward factory: the reward is the mean brightness of each image in [0, 1]."""

    def brightness(prompts, completions, **kwargs):
        SEEN["prompts"].extend(prompts)
        return [float(image.mean()) for image in completions]

    return brightness


def stripes(split, num_rows, seed):
    """A third-party dataset: coloured squares captioned "stripes #i"."""
    rows = colour_squares(8 if num_rows is None else num_rows)
    return rows.map(lambda row, i: {"prompt": f"stripes #{i}"}, with_indices=True)


def stripe_prompts(*, max_prompts, **_):
    return [PromptRecord(i, f"stripes #{i}") for i in range(max_prompts or 4)]


@dataclass
class StripeArguments:
    stripe_callback: bool = field(default=False, metadata={"help": "Count the training steps (a test's key)."})


class _Count(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        SEEN["callback"].append(state.global_step)


def stripe_callback(arguments, script_args, config, trainer):
    return _Count() if arguments.stripe_callback else None


@pytest.fixture
def third_party(monkeypatch):
    """Register the names above through the public functions; the registries are restored afterwards."""
    for registry, name in [(REWARDS, "brightness"), (DATASETS, "stripes"), (PROMPT_SETS, "stripes"),
                           (RECIPE_EXTENSIONS, "stripes")]:
        monkeypatch.setitem(registry, name, None)
    register_reward("brightness", brightness_reward)
    register_dataset("stripes", stripes)
    register_prompt_set("stripes", stripe_prompts)
    register_recipe_extension("stripes", StripeArguments, stripe_callback)
    SEEN["prompts"].clear()
    SEEN["callback"].clear()


def test_registered_names_train_through_the_recipe_and_the_trainer(third_party, tmp_path):
    main = examples_loader.load("train_janus").main
    main([
        "--model_name_or_path", "tiny", "--dataset_name", "stripes", "--reward_funcs", "brightness",
        "--stripe_callback", "true", "--lambda_rbp", "0", "--output_dir", str(tmp_path), "--bf16", "false",
        "--max_steps", "1",
        "--num_generations", "4", "--per_device_train_batch_size", "4", "--lambda_lpips", "0", "--decoder_batch_size",
        "4", "--save_strategy", "no", "--log_images_steps", "0", "--report_to", "none",
    ])
    assert SEEN["prompts"] and all(prompt.startswith("stripes #") for prompt in SEEN["prompts"])
    assert SEEN["callback"] == [1]


def test_a_registered_prompt_set_evaluates_by_name(third_party, tiny_janus_dir, tmp_path):
    assert [r.prompt for r in load_eval_prompts("stripes", max_prompts=2)] == ["stripes #0", "stripes #1"]
    args = parse_eval_args([
        "--policy_name_or_path", str(tiny_janus_dir), "--prompt_set", "stripes", "--max_prompts", "2",
        "--metrics", "clip_score", "fid", "--clip_model_name", "tiny-clip", "--fid_feature_extractor", "tiny",
        "--reference_dataset", "stripes", "--max_reference_images", "4", "--output_dir", str(tmp_path),
    ])
    results = evaluate(args)
    assert {"clip_score", "fid"} <= set(results["metrics"])


def test_the_geneval_export_needs_a_prompt_set_with_geneval_metadata(third_party):
    with pytest.raises(RecipeError, match="needs prompts with GenEval metadata"):
        parse_eval_args(["--policy_name_or_path", "x", "--prompt_set", "stripes", "--metrics", "geneval"])


def test_a_registered_reward_loads_by_name_and_an_unknown_one_lists_the_known(third_party):
    assert load_reward("brightness")(["p"], [torch.full((3, 4, 4), 0.25)]) == [0.25]
    with pytest.raises(ValueError, match="Unknown reward 'glow'; known rewards: brightness, clip"):
        load_reward("glow")


def test_recipe_keys_may_not_redefine_existing_ones(third_party):
    @dataclass
    class Clash:
        learning_rate: float = 1.0

    with pytest.raises(ValueError, match=r"redefines recipe keys \['learning_rate'\]"):
        register_recipe_extension("clash", Clash)


def test_shapesworld_is_found_through_its_entry_point():
    assert "shapes_world" in plugins.load_plugins()
    assert {"shapes_clip", "shapes_eval"} <= set(REWARDS) and "shapes" in DATASETS and "shapes" in PROMPT_SETS


class _EntryPoint:
    """What `importlib.metadata.entry_points` yields: a name, a value and `load()`."""

    def __init__(self, name, load):
        self.name, self.value, self._load = name, f"somewhere:{name}", load

    def load(self):
        return self._load()


def test_plugins_register_once_and_a_broken_one_is_named(monkeypatch):
    calls = []
    monkeypatch.setattr(plugins, "_loaded", set())
    monkeypatch.setattr(plugins, "entry_points", lambda group: [_EntryPoint("good", lambda: lambda: calls.append(1))])
    assert plugins.load_plugins() == ["good"] and plugins.load_plugins() == ["good"]
    assert calls == [1]

    def broken():
        raise ImportError("No module named 'somewhere'")

    monkeypatch.setattr(plugins, "entry_points", lambda group: [_EntryPoint("broken", broken)])
    with pytest.raises(plugins.PluginError, match="plugin 'broken' \\(somewhere:broken\\) failed to register"):
        plugins.load_plugins()


def test_a_registered_factory_must_be_callable():
    with pytest.raises(TypeError, match="callable factory"):
        register_dataset("nothing", None)
    with pytest.raises(TypeError, match="callable factory"):
        register_reward("nothing", "clip")
