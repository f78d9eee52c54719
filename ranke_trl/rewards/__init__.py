"""Rewards `R(x, c)` that score a decoded image against its prompt (METHOD.md, "The system").

Each reward loads its model once and is then a TRL reward function, `reward(prompts, completions, **kwargs)`
returning one float per image, plus a differentiable `reward.score(images, prompts)` for reward back-propagation.
"""

from __future__ import annotations

from .clip import CLIPReward, OpenClipReward, prompt_text
from .hps import HPSv2Reward, load_hps_state_dict
from .preprocessing import clip_image_transform


def _shapes_clip(**kwargs) -> OpenClipReward:
    """The ShapesWorld CLIP (`ranke_trl.world.pretrain.shapes_clip_reward`), imported on use: it trains on demand."""
    from ranke_trl.world.pretrain import shapes_clip_reward

    return shapes_clip_reward(**kwargs)


def _shapes_eval(**_):
    """ShapesWorld's black-box reward (ShapesEval's partial credit in [0, 1]; no gradient, no model to place)."""
    from ranke_trl.world.shapes_eval import shapes_eval_reward

    return shapes_eval_reward


REWARDS = {
    "clip": CLIPReward,
    "hps": HPSv2Reward,
    "hpsv2": HPSv2Reward,
    "tiny_clip": CLIPReward.tiny,
    "shapes_clip": _shapes_clip,
    "shapes_eval": _shapes_eval,
}


def load_reward(name: str, **kwargs) -> OpenClipReward:
    """Build the reward called `name` (`"clip"`, `"hps"`/`"hpsv2"`, `"tiny_clip"`), passing `kwargs` to it."""
    if name not in REWARDS:
        raise ValueError(f"Unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}.")
    return REWARDS[name](**kwargs)


__all__ = [
    "CLIPReward",
    "HPSv2Reward",
    "OpenClipReward",
    "clip_image_transform",
    "load_hps_state_dict",
    "load_reward",
    "prompt_text",
]
