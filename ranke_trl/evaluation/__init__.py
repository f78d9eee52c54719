"""Evaluation of text-to-image runs: FID, CLIP score, HPSv2 benchmark, GenEval export and results tables.

`register_metric` adds a named metric to `ranke-trl eval` (a plugin's, e.g. ShapesWorld's `shapes`).
"""

from .metrics_registry import register_metric

__all__ = ["register_metric"]
