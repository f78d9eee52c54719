"""ShapesWorld as a `ranke_trl` plugin: what its names mean in recipes, registered through the library's public
registries exactly as a third-party package would (`setup.py`: entry point `ranke_trl.plugins`).

- policy `shapes` (`model_name_or_path`): the SFT'd tiny Janus of the prepared world (`pretrain.shapes_policy_path`),
  or its tiny LlamaGen with the recipe key `shapes_backbone: llamagen`;
- dataset `shapes` (`dataset_name`, `reference_dataset`): `make_split` rows, 4096 by default, split "test" when
  none is named;
- rewards `shapes_clip` (the world's CLIP), `shapes_clip_second` (a second CLIP, on other scenes from other
  weights) and `shapes_eval` (ShapesEval's partial credit, a black box);
- prompt set `shapes` (`ranke-trl eval`): the test split, 64 prompts by default, with GenEval-like metadata;
- metric `shapes` (`ranke-trl eval`): the world's own metrics on those prompts (`evaluation.WorldEvalMetric`),
  rendering measures included (`render/*`, `rendering.py`);
- metric `shapes_d0` (`ranke-trl eval`): the same metrics of the same codes decoded by the world's original decoder
  D0, under `d0/*` (`evaluation.DecoderSwapMetric`), the decoder swap;
- recipe keys `world_eval_prompts`, `world_eval_seed` and their before/after report (`evaluation.py`).

Each name imports the heavy parts (open_clip, the cache) only when it is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

DEFAULT_TRAIN_ROWS = 4096
DEFAULT_PROMPTS = 64


@dataclass
class WorldPolicyArguments:
    """Recipe key choosing which of the world's SFT'd policies `model_name_or_path: shapes` names."""

    shapes_backbone: str = field(
        default="janus",
        metadata={
            "help": "ShapesWorld plugin. The architecture of the policy `model_name_or_path: shapes` loads: 'janus' "
            "(the world's tiny Janus) or 'llamagen' (a tiny LlamaGen SFT'd on the same codes, with the world's VQ "
            "and its own frozen T5 caption encoder; prepared once, on first use, beside the Janus one)."
        },
    )

    def __post_init__(self):
        if self.shapes_backbone not in ("janus", "llamagen"):
            raise ValueError(f"shapes_backbone={self.shapes_backbone!r}: choose 'janus' or 'llamagen'.")


@dataclass
class WorldEvalArguments:
    """Recipe keys of ShapesWorld's train-time report (a `ranke_trl.recipes` extension)."""

    world_eval_prompts: int = field(
        default=256,
        metadata={
            "help": "ShapesWorld plugin. With `model_name_or_path: shapes`, score the policy + decoder on this many "
            "fixed ShapesWorld validation prompts before and after training (CLIP score, ShapesFID, ShapesEval, "
            "token KL), sampled as the rollouts are (guidance_scale, temperature, top_k, top_p), and write "
            "`world_eval.json` to output_dir; 0 skips it (ours: 256)."
        },
    )
    world_eval_seed: int = field(
        default=1234,
        metadata={"help": "ShapesWorld plugin. Seed of the report's validation prompts and sampling noise (ours)."},
    )


def _policy(script_args, config):
    from .pretrain import shapes_policy_path

    chosen = getattr(script_args, "extensions", {}).get("shapes_world_policy")  # absent in SFT recipes
    backbone = chosen.shapes_backbone if chosen is not None else "janus"
    return shapes_policy_path(backbone=backbone), None  # prepared and cached on first use; the trainer loads it


def _dataset(split: str, num_rows: int | None, seed: int):
    from .data import make_split

    return make_split(split, num_examples=DEFAULT_TRAIN_ROWS if num_rows is None else num_rows, seed=seed)


def prompt_scenes(split: str | None, max_prompts: int | None, seed: int):
    """The scenes behind the `shapes` prompt set, in its order: the rows of `make_split(split or "test", ...)`."""
    from .data import sample_scenes

    return sample_scenes(split or "test", DEFAULT_PROMPTS if max_prompts is None else max_prompts, seed)


def _prompts(*, split, max_prompts, seed, **_):
    from ranke_trl.evaluation.eval_sets import PromptRecord

    scenes = prompt_scenes(split, max_prompts, seed)
    return [PromptRecord(i, s.prompt, metadata=json.loads(json.dumps(s.metadata))) for i, s in enumerate(scenes)]


def _world_metric(args, codec, accelerator):
    from .evaluation import WorldEvalMetric

    return WorldEvalMetric(args, codec, accelerator)


def _decoder_swap_metric(args, codec, accelerator):
    from .evaluation import DecoderSwapMetric

    return DecoderSwapMetric(args, codec, accelerator)


def _check_world_metric(args) -> None:
    if args.prompt_set != "shapes":
        raise ValueError("The 'shapes' metric scores ShapesWorld images against their scenes: set prompt_set: shapes.")
    if "shift" in args.metrics:
        raise ValueError("The 'shapes' metric reports shift/* against the prompts' own real renders (Appendix C); "
                         "drop 'shift' from metrics.")


def _shapes_clip(**kwargs):
    """The world's CLIP reward (`pretrain.shapes_clip_reward`); it prepares the world on first use."""
    from .pretrain import shapes_clip_reward

    return shapes_clip_reward(**kwargs)


def _shapes_clip_second(**kwargs):
    """The second CLIP's reward (other scenes and weights), for L_rbp apart from the evaluation's CLIP."""
    from .pretrain import shapes_clip_reward

    return shapes_clip_reward(second=True, **kwargs)


def _shapes_eval(**_):
    """ShapesEval's black-box reward (partial credit in [0, 1]; no gradient, no model to place)."""
    from .shapes_eval import shapes_eval_reward

    return shapes_eval_reward


def _world_eval_callback(arguments, script_args, config, trainer):
    from .evaluation import world_eval_callback

    return world_eval_callback(arguments, script_args, config, trainer)


def register() -> None:
    """Register ShapesWorld's names with `ranke_trl` (called once per process by `ranke_trl.plugins`)."""
    from ranke_trl.data import register_dataset
    from ranke_trl.evaluation import register_metric
    from ranke_trl.evaluation.eval_sets import register_prompt_set
    from ranke_trl.recipes import register_model_source, register_recipe_extension
    from ranke_trl.rewards import register_reward

    register_model_source("shapes", _policy)
    register_dataset("shapes", _dataset, default_split="test")
    register_reward("shapes_clip", _shapes_clip)
    register_reward("shapes_clip_second", _shapes_clip_second)
    register_reward("shapes_eval", _shapes_eval)
    register_prompt_set("shapes", _prompts, geneval_metadata=True)
    register_metric("shapes", _world_metric, check=_check_world_metric)
    register_metric("shapes_d0", _decoder_swap_metric, check=_check_world_metric)
    register_recipe_extension("shapes_world", WorldEvalArguments, _world_eval_callback)
    register_recipe_extension("shapes_world_policy", WorldPolicyArguments)
