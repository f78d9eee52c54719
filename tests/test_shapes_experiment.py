"""The ShapesWorld experiment runner, end to end on a tiny prepared world (2 policy steps per run)."""

import json

import pytest

from ranke_trl.world.experiment import ExperimentSettings, markdown_table, run_experiment


def test_experiment_writes_table_curves_and_figures(tiny_world, tmp_path):
    settings = ExperimentSettings(
        steps=2, eval_every=2, seeds=[0], num_eval_prompts=8, num_train_prompts=8, rollouts_per_step=8,
        num_generations=4, rows=["Base", "SFT", "RankE"], workers=2,
    )
    payload = run_experiment(settings, str(tmp_path), cache_dir=tiny_world)
    assert set(payload["rows"]) == {"Base", "SFT", "RankE"}
    for row in payload["rows"].values():
        assert {"clip_score", "shapes_fid", "shapes_eval", "shift/token_kl_bits", "shift/entropy_bits"} <= set(row)
    assert [p["step"] for p in payload["curves"]["RankE"][0]] == [0, 2]  # before training, then every eval_every
    assert payload["curves"]["RankE"][0][0] == payload["curves"]["SFT"][0][0]  # same start, same sampling seeds
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == payload["rows"]
    table = (tmp_path / "results.md").read_text()
    assert "| RankE (n=1) |" in table and "ShapesFID ↓" in table
    for figure in ["quality_curves.png", "shift_curves.png", "samples_by_mode.png"]:
        assert (tmp_path / figure).stat().st_size > 0


def test_table_reports_mean_and_std_over_seeds():
    payload = {"rows": {"RankE": {"clip_score": {"mean": 30.0, "std": 0.5}}}, "seeds": {"RankE": 3}}
    assert "| RankE (n=3) | 30.000 ± 0.500 |" in markdown_table(payload)


def test_unknown_rows_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="Unknown experiment rows"):
        run_experiment(ExperimentSettings(rows=["RankE++"]), str(tmp_path), cache_dir=tmp_path / "no-world")
