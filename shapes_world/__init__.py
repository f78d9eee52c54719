"""ShapesWorld: a procedural text-to-image world (1-4 coloured shapes on 64 px) and ShapesEval, its exact GenEval.

The whole RankE loop (tokenizer, policy, CLIP reward, GRPO, decoder adaptation, GenEval-style evaluation) runs on it
at CPU scale. `make_split` gives `datasets` splits; `ShapesEval` and `shapes_eval_reward` score images.

ShapesWorld is a package of its own on top of `ranke_trl`, which knows nothing of it: `plugin.register` (entry point
`ranke_trl.plugins`) gives its names to the library's registries, as any third-party package would: the policy,
dataset, prompt set and evaluation metric `shapes`, the rewards `shapes_clip` and `shapes_eval`, and the recipe key
`world_eval_prompts`.

The pretrained components (`pretrain.prepare_shapes_world`, `shapes_policy_path`, `shapes_clip_reward`,
`load_shapes_fid`), their evaluation (`evaluation.WorldEvaluator`) and the experiment (`experiment.run_experiment`)
live in submodules, imported on use: they pull in open_clip, transformers and matplotlib, which the world itself
does not need.
"""

from .data import make_split, sample_scenes, scene_split
from .prompts import as_metadata, parse_prompt
from .scenes import Scene, ShapeSpec, render_scene, sample_scene
from .shapes_eval import DetectedShape, ShapesEval, make_shapes_eval_reward, shapes_eval_reward, summarize
from .vocab import BACKGROUND, COLORS, FAMILIES, KINDS, PALETTE, RELATIONS, SIZES

__all__ = [
    "BACKGROUND",
    "COLORS",
    "FAMILIES",
    "KINDS",
    "PALETTE",
    "RELATIONS",
    "SIZES",
    "DetectedShape",
    "Scene",
    "ShapeSpec",
    "ShapesEval",
    "as_metadata",
    "make_shapes_eval_reward",
    "make_split",
    "parse_prompt",
    "render_scene",
    "sample_scene",
    "sample_scenes",
    "scene_split",
    "shapes_eval_reward",
    "summarize",
]
