"""Metrics of `ranke-trl eval` known by name beyond the built-in ones: a plugin's (e.g. ShapesWorld's `shapes`).

`register_metric(name, factory)` makes `name` a value of the recipe key `metrics`. `MetricSuite` builds each chosen
one once per run, `factory(args, codec, accelerator)` (the `EvalArguments`, the `VQCodec` rendering the policy's
codes, the `Accelerator`), and treats what it returns exactly as its built-in metrics:

- `prepare_references()`: load or compute what the metric compares against, once, before any image is generated;
- `update(records, codes, images01)` for every batch: the batch's `PromptRecord`s, their codes (B, N) in [0, K) and
  images (B, 3, H, W) in [0, 1], `images_per_prompt` consecutive rows per record;
- `compute() -> (metrics, meta)` at the end, on every process: `{key: float}` over all processes' images, and one
  `meta` entry per metric family (`results.metric_family`) saying what it measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ranke_trl.plugins import lookup


class EvalMetric(Protocol):
    def prepare_references(self) -> None: ...

    def update(self, records: list, codes, images01) -> None: ...

    def compute(self) -> tuple[dict[str, float], dict]: ...


#: `factory(args: EvalArguments, codec: VQCodec, accelerator: Accelerator) -> EvalMetric`
MetricFactory = Callable[..., EvalMetric]


@dataclass(frozen=True)
class RegisteredMetric:
    """A metric known by name: its factory, and `check(args)`, which raises a ValueError on settings it cannot
    work with while the recipe is parsed (before any model loads)."""

    factory: MetricFactory
    check: Callable | None = None


EVAL_METRICS: dict[str, RegisteredMetric] = {}


def register_metric(name: str, factory: MetricFactory, *, check: Callable | None = None) -> None:
    """Make `name` a value of `ranke-trl eval`'s `metrics` (see the module docstring for the factory's object).

    `check(args)`, if given, validates the `EvalArguments` when they are parsed. Registering a name again replaces
    it; a built-in name (`runner.METRICS`) always means the built-in metric.
    """
    if not callable(factory):
        raise TypeError(f"register_metric({name!r}, ...) needs a callable factory, got {factory!r}.")
    EVAL_METRICS[name] = RegisteredMetric(factory, check)


def get_metric(name: str) -> RegisteredMetric | None:
    """The metric registered as `name`, loading plugins if needed; None if no plugin registers it."""
    return lookup(EVAL_METRICS, name)


__all__ = ["EVAL_METRICS", "EvalMetric", "MetricFactory", "RegisteredMetric", "get_metric", "register_metric"]
