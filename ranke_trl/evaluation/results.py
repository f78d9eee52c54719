"""Evaluation results of one run as JSON, and a Markdown table comparing runs in the paper's row format.

A results file is `{"run_name": str, "metrics": {key: float}, "meta": {family: description}}`. Metric keys are
`family` or `family/name`; every family present needs an entry in `meta` saying what it measured (CLIP model,
HPS version, FID extractor and resize, image counts, ...), so no metric silently changes meaning between runs.

The known keys and their table order are in `METRIC_COLUMNS`; they are produced by `clip_score.py` ("clip_score"),
`fid.FIDMetric` ("fid"), `hps_benchmark.summarize_hps` ("hps/..."), `geneval.read_geneval_results`
("geneval/...") and `ranke_trl.diagnostics.ShiftDiagnostics` ("shift/...").
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

# (key, column header, "↑" higher is better / "↓" lower is better / "" neither).
METRIC_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("clip_score", "CLIP", "↑"),
    ("fid", "FID", "↓"),
    ("hps/photo", "HPS photo", "↑"),
    ("hps/concept-art", "HPS concept-art", "↑"),
    ("hps/anime", "HPS anime", "↑"),
    ("hps/paintings", "HPS paintings", "↑"),
    ("hps/average", "HPS avg.", "↑"),
    ("geneval/overall", "GenEval", "↑"),
    ("geneval/single_object", "GenEval single obj.", "↑"),
    ("geneval/two_object", "GenEval two obj.", "↑"),
    ("geneval/counting", "GenEval counting", "↑"),
    ("geneval/colors", "GenEval colors", "↑"),
    ("geneval/position", "GenEval position", "↑"),
    ("geneval/color_attr", "GenEval color attr.", "↑"),
    # The paper reads a lower token KL as less latent covariate shift; entropy is best near the real-image
    # level (the gt entropy), not at either extreme, so it gets no arrow.
    ("shift/token_kl_bits", "Token KL (bits)", "↓"),
    ("shift/entropy_bits", "Entropy (bits)", ""),
    ("shift/gt_entropy_bits", "Real entropy (bits)", ""),
)

MISSING = "–"


def metric_family(key: str) -> str:
    """`"hps/photo"` -> `"hps"`; `"fid"` -> `"fid"`. Each family needs one entry in `meta`."""
    return key.split("/", 1)[0]


def _check_results(run_name: str, metrics: dict, meta: dict) -> None:
    if not run_name:
        raise ValueError("run_name must be a non-empty string, e.g. 'RankE'.")
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"Metric {key!r} of run {run_name!r} must be a finite number, got {value!r}.")
    undocumented = sorted({metric_family(key) for key in metrics} - set(meta))
    if undocumented:
        raise ValueError(
            f"meta of run {run_name!r} does not say what {undocumented} measured; add e.g. "
            "meta['fid'] = fid_metric.description, meta['clip_score'] = {'model': ...}, meta['hps'] = "
            "{'version': 'v2.1'}."
        )


def write_results(path_json: str | os.PathLike, run_name: str, metrics: dict, meta: dict) -> dict:
    """Write one run's results to `path_json` and return them as a dict.

    `metrics`: `{key: finite number}` (see `METRIC_COLUMNS` for the known keys); `meta`: JSON-serialisable,
    with one entry per metric family describing what it measured, plus anything else about the run.
    """
    _check_results(run_name, metrics, meta)
    results = {"run_name": run_name, "metrics": {key: float(value) for key, value in metrics.items()}, "meta": meta}
    path = Path(path_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return results


def read_results(path_json: str | os.PathLike) -> dict:
    """Read and check a results file written by `write_results`."""
    results = json.loads(Path(path_json).read_text(encoding="utf-8"))
    if not isinstance(results, dict) or not {"run_name", "metrics", "meta"} <= set(results):
        raise ValueError(f"{path_json} is not a results file: expected the keys 'run_name', 'metrics', 'meta'.")
    _check_results(results["run_name"], results["metrics"], results["meta"])
    return results


def _columns(runs: list[dict]) -> list[tuple[str, str, str]]:
    present = {key for run in runs for key in run["metrics"]}
    known = [column for column in METRIC_COLUMNS if column[0] in present]
    # Keys outside METRIC_COLUMNS still show, after the known ones, under their key and with no claimed direction.
    extra = [(key, key, "") for key in sorted(present - {key for key, _, _ in METRIC_COLUMNS})]
    return known + extra


def results_table(runs) -> str:
    """Markdown table with one row per run (in the given order) and one column per metric any run has.

    `runs`: paths of results files or dicts from `write_results`. Values have 2 decimals; a metric a run lacks
    shows "–". Headers carry ↑ (higher is better) or ↓ (lower is better).
    """
    runs = [read_results(run) if isinstance(run, (str, os.PathLike)) else run for run in runs]
    if not runs:
        raise ValueError("No runs given to results_table.")
    for run in runs:
        _check_results(run["run_name"], run["metrics"], run["meta"])
    columns = _columns(runs)
    header = ["Method"] + [f"{title} {arrow}".rstrip() for _, title, arrow in columns]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(columns) + "|"]
    for run in runs:
        cells = [f"{run['metrics'][key]:.2f}" if key in run["metrics"] else MISSING for key, _, _ in columns]
        lines.append("| " + " | ".join([run["run_name"], *cells]) + " |")
    return "\n".join(lines) + "\n"
