"""Paired statistics of the ShapesWorld experiment: per-seed differences A − B of each metric, with a two-sided 95%
t-interval and the minimum detectable effect at 80% power, and the report built from the runs' result files."""

import json
import math
import os

import pytest
import torch

from shapes_world.experiment import (
    load_row,
    markdown_table,
    paired_differences,
    paired_summary,
    row_overrides,
    run_experiment,
    run_folder,
    settings_hash,
    write_report,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V2 = os.path.join(REPO, "recipes", "shapes_v2")
# Student t quantiles from a printed table (n - 1 = 3 degrees of freedom)
T_975_3, T_80_3 = 3.182446, 0.978472


def test_paired_summary_matches_a_hand_computation():
    summary = paired_summary([1.0, 2.0, 3.0, 6.0])  # mean 3, sd sqrt(14/3)
    se = math.sqrt(14 / 3) / 2
    assert summary["n"] == 4 and summary["mean"] == 3.0
    assert summary["sd"] == pytest.approx(math.sqrt(14 / 3))
    assert summary["ci95"] == pytest.approx([3 - T_975_3 * se, 3 + T_975_3 * se], rel=1e-5)
    assert summary["mde80"] == pytest.approx((T_975_3 + T_80_3) * se, rel=1e-5)


def test_the_protocols_mde_factor_for_eight_seeds():
    differences = [0.0, 1.0] * 4
    sd = paired_summary(differences)["sd"]
    assert paired_summary(differences)["mde80"] / sd == pytest.approx(1.153, abs=1e-3)  # PROTOCOL.md §5: ≈ 1.15


def test_a_single_seed_has_a_mean_but_no_interval():
    assert paired_summary([0.5]) == {"n": 1, "mean": 0.5, "sd": None, "ci95": None, "mde80": None}


def test_differences_pair_seeds_and_count_each_metric_where_both_runs_measured_it():
    a = {0: {"render/l1": 0.3, "clip_score": 20.0}, 1: {"render/l1": 0.5, "clip_score": 21.0}, 2: {"clip_score": 5.0}}
    b = {0: {"render/l1": 0.1, "clip_score": 19.0}, 1: {"clip_score": 20.0}}
    stats = paired_differences(a, b)
    assert stats["clip_score"]["n"] == 2 and stats["clip_score"]["mean"] == pytest.approx(1.0)
    assert stats["clip_score"]["sd"] == 0.0  # seed 2 has no partner in b
    assert stats["render/l1"]["n"] == 1 and stats["render/l1"]["mean"] == pytest.approx(0.2)


def _fake_run(out, row, seed, final):
    """A finished run's files as the runner writes them, with made-up metrics."""
    folder = run_folder(out, row.name, seed)
    os.makedirs(folder)
    curve = [{"step": 0, **final}]
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump({"row": row.name, "seed": seed, "settings_hash": settings_hash(row), "final": final,
                   "curve": curve, "seconds": 1.0}, f)
    torch.save(torch.zeros(8, 3, 64, 64), os.path.join(folder, "samples.pt"))


def _metrics(l1=None, clip=20.0):
    metrics = {"clip_score": clip, "shapes_fid": 1.0, "shapes_eval": 0.5, "shift/token_kl_bits": 0.1,
               "shift/entropy_bits": 7.0}
    return metrics if l1 is None else {**metrics, "render/l1": l1}


def test_the_report_uses_every_metric_of_any_seed_and_tabulates_the_paired_differences(tmp_path):
    base = load_row(os.path.join(V2, "01_base.yaml"), row_overrides("base", seeds=[0, 1, 2]))
    std_rl = load_row(os.path.join(V2, "02_std_rl.yaml"), row_overrides("grpo", seeds=[0, 1, 2]))
    for seed, (l1_base, l1_rl) in enumerate([(0.10, 0.30), (0.20, None), (0.15, 0.25)]):
        _fake_run(str(tmp_path), base, seed, _metrics(l1_base, clip=20.0))
        _fake_run(str(tmp_path), std_rl, seed, _metrics(l1_rl, clip=21.0 + seed))  # seed 1: render/l1 missing
    payload = write_report([base, std_rl], str(tmp_path), paired=[("Std. RL", "Base")])
    assert payload["rows"]["Std. RL"]["render/l1"] == {"mean": pytest.approx(0.275), "std": pytest.approx(0.0354,
                                                                                                     abs=1e-4), "n": 2}
    difference = payload["paired"]["Std. RL − Base"]
    assert difference["render/l1"]["n"] == 2 and difference["render/l1"]["mean"] == pytest.approx(0.15)
    assert difference["clip_score"]["mean"] == pytest.approx(2.0) and difference["clip_score"]["n"] == 3
    table = (tmp_path / "results.md").read_text()
    assert "0.275 ± 0.035 (n=2)" in table  # fewer seeds than the row's 3 say so
    assert "**Std. RL − Base** (n=3 paired seeds)" in table
    assert json.loads((tmp_path / "results.json").read_text())["paired"] == payload["paired"]


def test_the_table_lists_single_seed_rows_as_descriptive():
    payload = {"rows": {"w/o L_rec": {"clip_score": {"mean": 30.0, "std": 0.0}}}, "seeds": {"w/o L_rec": 1}}
    assert "(n=1, single seed), descriptive only: w/o L_rec" in markdown_table(payload)


def test_a_pair_naming_an_unknown_row_is_refused_before_any_work(tmp_path):
    base = load_row(os.path.join(V2, "01_base.yaml"))
    with pytest.raises(ValueError, match=r"paired names rows \['RankE\+\+'\]"):
        run_experiment([base], str(tmp_path), paired=[("RankE++", "Base")])
