"""Rewards `R(x, c)` that score a decoded image against its prompt (METHOD.md, "The system").

Each reward loads its model once and is then a TRL reward function, `reward(prompts, completions, **kwargs)`
returning one float per image, plus a differentiable `reward.score(images, prompts)` for reward back-propagation.
Recipes name them (`load_reward`); `register_reward` adds a name, as plugins do (`ranke_trl.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..plugins import lookup
from .clip import CLIPReward, OpenClipReward, prompt_text
from .hps import HPSv2Reward, load_hps_state_dict
from .preprocessing import clip_image_transform


#: name -> factory(**kwargs) returning a reward function; see `register_reward`
REWARDS: dict[str, Callable[..., Callable]] = {
    "clip": CLIPReward,
    "hps": HPSv2Reward,
    "hpsv2": HPSv2Reward,
    "tiny_clip": CLIPReward.tiny,
}


def register_reward(name: str, factory: Callable[..., Callable]) -> None:
    """Make `name` usable in a recipe's `reward_funcs`: `factory(**kwargs)` builds the reward once.

    The reward it returns is a TRL reward function, `reward(prompts, completions, **kwargs) -> list[float]`, where
    `completions` are images (3, H, W) in [0, 1]; it may add a differentiable `score(images, prompts)` for reward
    back-propagation. The factory receives `batch_size` and `dtype` from the recipe (and must accept them, e.g.
    through `**kwargs`). Registering a name again replaces it.
    """
    if not callable(factory):
        raise TypeError(f"register_reward({name!r}, ...) needs a callable factory, got {factory!r}.")
    REWARDS[name] = factory


def load_reward(name: str, **kwargs) -> Callable:
    """Build the reward registered as `name` (`"clip"`, `"hps"`/`"hpsv2"`, `"tiny_clip"`, or a plugin's), passing
    `kwargs` to its factory."""
    factory = lookup(REWARDS, name)
    if factory is None:
        raise ValueError(f"Unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}.")
    return factory(**kwargs)


__all__ = [
    "CLIPReward",
    "HPSv2Reward",
    "OpenClipReward",
    "clip_image_transform",
    "load_hps_state_dict",
    "load_reward",
    "register_reward",
    "prompt_text",
]
