"""Calling reward functions safely: which objects are rewards, and what a reward must return.

`RankEGRPOTrainer` wraps every (synchronous, non-module) reward function in `NamedReward`, so an exception or a bad
return anywhere in a run names the reward that caused it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from trl.trainer.utils import get_callable_name


class NamedReward:
    """Wraps a reward function so that an exception or a bad return names the reward that failed.

    A reward returns one score per image: a list (or 1-D tensor) of real numbers, `None`/NaN for an image it
    cannot score. Infinite scores, strings, nested lists, 2-D or meta tensors and a wrong count are refused, in
    every mode, with the reward's name.
    """

    def __init__(self, func: Callable, name: str):
        self.func, self.__name__ = func, name

    def __getattr__(self, item):  # expose `score`, `is_differentiable`, ... of the wrapped reward
        return getattr(self.func, item)

    def __call__(self, *args, **kwargs):
        try:
            out = self.func(*args, **kwargs)
        except Exception as err:
            raise RuntimeError(f"Reward function '{self.__name__}' raised {type(err).__name__}: {err}") from err
        return self._check(out, len(kwargs.get("completions", args[1] if len(args) > 1 else [])))

    def _check(self, out, expected: int) -> list:
        name = self.__name__
        if isinstance(out, torch.Tensor):
            if out.is_meta:
                raise TypeError(f"Reward function '{name}' returned a meta tensor (no values); compute the scores on "
                                "a real device.")
            if out.dim() > 1 and out.numel() != out.size(0):
                raise ValueError(f"Reward function '{name}' returned a tensor of shape {tuple(out.shape)}; it must "
                                 "return one score per image, (B,).")
            out = out.detach().float().cpu().reshape(-1).tolist()
        if not isinstance(out, (list, tuple)):
            raise TypeError(f"Reward function '{name}' returned {type(out).__name__}; it must return a list of "
                            "floats, one per image (None for an image it cannot score).")
        for i, value in enumerate(out):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Reward function '{name}' returned {value!r} ({type(value).__name__}) for image {i}; "
                                "scores must be real numbers (None for an image it cannot score).")
            if math.isinf(value):
                raise ValueError(f"Reward function '{name}' returned {value} for image {i}; scores must be finite "
                                 "(return None for an image it cannot score).")
        if expected and len(out) != expected:
            raise ValueError(f"Reward function '{name}' returned {len(out)} scores for {expected} images; it must "
                             "return exactly one per image.")
        return list(out)


def check_reward_funcs(reward_funcs) -> list:
    """The reward functions as a list, each a plain callable (not a model, not a model id), or a named error."""
    if reward_funcs is None:
        raise ValueError("RankEGRPOTrainer needs at least one reward function scoring images.")
    reward_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    for func in reward_funcs:
        if isinstance(func, (str, nn.Module)):
            raise TypeError(
                f"Reward {get_callable_name(func) if callable(func) else func!r} is a model or a model id; TRL "
                "would treat it as a text classifier. Image rewards must be plain callables "
                "`f(prompts, completions, **kwargs) -> list[float]` (they may hold a model), e.g. "
                "`ranke_trl.rewards.CLIPReward`."
            )
        if not callable(func):
            raise TypeError(f"Reward function {func!r} is not callable.")
    return reward_funcs
