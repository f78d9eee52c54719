"""Plugins: installed packages that add rewards, datasets, prompt sets, policies and recipe keys by name.

A plugin declares an entry point in the group `ranke_trl.plugins` that names a function taking no arguments; the
function registers its names with the library's public registries, exactly as code in a script could:

- `ranke_trl.rewards.register_reward(name, factory)`: a reward for `reward_funcs`;
- `ranke_trl.data.register_dataset(name, factory)`: a dataset for `dataset_name` / `reference_dataset`;
- `ranke_trl.evaluation.eval_sets.register_prompt_set(name, loader)`: a `prompt_set` of `ranke-trl eval`;
- `ranke_trl.evaluation.register_metric(name, factory)`: a metric for `ranke-trl eval`'s `metrics`;
- `ranke_trl.recipes.register_model_source(name, resolver)`: a policy for `model_name_or_path`;
- `ranke_trl.recipes.register_recipe_extension(name, arguments, callback)`: recipe keys, and a training callback.

In the plugin's `setup.py` (ShapesWorld, in this repository, is one)::

    entry_points={"ranke_trl.plugins": ["shapes_world = shapes_world.plugin:register"]}

Importing `ranke_trl` loads no plugin. A registry calls `load_plugins()` only when asked for a name it does not
hold, and the recipe parser calls it to learn every recipe key; so a plugin costs nothing to a run that does not
use it, and the library never imports a plugin's package itself.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TypeVar

GROUP = "ranke_trl.plugins"
_loaded: set[str] = set()

T = TypeVar("T")


class PluginError(RuntimeError):
    """A plugin's entry point could not be imported or its `register()` failed."""


def load_plugins() -> list[str]:
    """Load every `ranke_trl.plugins` entry point not loaded yet and call it; returns the names loaded so far.

    Idempotent: each plugin registers once per process, however often this is called (a plugin's `register()` may
    itself call registries that call this).
    """
    for entry_point in entry_points(group=GROUP):
        if entry_point.name in _loaded:
            continue
        _loaded.add(entry_point.name)  # before calling it, so a registry it calls does not load it again
        try:
            entry_point.load()()
        except Exception as error:
            raise PluginError(
                f"The ranke_trl plugin {entry_point.name!r} ({entry_point.value}) failed to register: {error}. "
                "Fix or uninstall the package that declares it."
            ) from error
    return sorted(_loaded)


def lookup(registry: dict[str, T], name: str) -> T | None:
    """`registry[name]`, loading the plugins first if it is not there yet; None if no plugin registers it."""
    if name not in registry:
        load_plugins()
    return registry.get(name)


__all__ = ["GROUP", "PluginError", "load_plugins", "lookup"]
