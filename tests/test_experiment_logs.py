"""What the ShapesWorld experiment keeps at each evaluation point besides the evaluator's metrics: the trainer's
Stage 2 metrics since the previous point and the decoder's reconstruction error on fixed held-out world images."""

import json
import os

import pytest

from shapes_world.evaluation import WorldEvaluator
from shapes_world.experiment import (
    load_row,
    markdown_table,
    row_overrides,
    run_row,
    summarise_decoder_phases,
    write_curve_figures,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(REPO, "docs", "shapes_world", "results.json")
STAGE2 = ["decoder/loss", "decoder/loss_rbp", "decoder/loss_gan", "decoder/loss_rec", "decoder/loss_cons",
          "decoder/rank_weight_ess", "decoder/rank_weight_max", "decoder/rec_l1", "decoder/heldout_rec_l1",
          "decoder/disc_loss", "decoder/steps_this_phase", "decoder/decoder_steps", "decoder/phases"]


def _tiny_row(recipe: str):
    """A grpo row recipe shrunk to seconds: 2 steps evaluated after each, 8 prompts, 8 rollouts per step."""
    path = os.path.join(REPO, "recipes", "shapes_experiment", recipe)
    sizes = ["--num_eval_prompts", "8", "--max_train_samples", "8", "--per_device_train_batch_size", "8",
             "--num_generations", "4"]
    return load_row(path, row_overrides("grpo", seeds=[0], steps=2, eval_every=1) + sizes)


@pytest.fixture(scope="module")
def evaluator(tiny_world):
    return WorldEvaluator(tiny_world, 8, guidance_scale=3.0, temperature=1.0, top_k=0, top_p=0.9, seed=1234)


@pytest.mark.slow
def test_each_trained_point_keeps_the_stage2_metrics_and_the_held_out_reconstruction_error(tiny_world, evaluator):
    curve = run_row(_tiny_row("05_ranke.yaml"), 0, evaluator, tiny_world)["curve"]
    assert [point["step"] for point in curve] == [0, 1, 2]
    assert not any(key.startswith("decoder/") for key in curve[0])  # before training: no phase yet
    for point in curve[1:]:
        assert set(STAGE2) <= set(point), sorted(set(STAGE2) - set(point))
        assert 1.0 <= point["decoder/rank_weight_ess"] <= 8.0
        assert point["decoder/steps_this_phase"] == 1  # 8 rollouts, one batch of 8: one pass over the cache
    assert [point["decoder/phases"] for point in curve[1:]] == [1, 2]
    assert [point["decoder/decoder_steps"] for point in curve[1:]] == [1, 2]
    errors = [point["heldout_rec_l1"] for point in curve]
    assert all(error > 0 for error in errors) and errors[2] != errors[0]  # the co-evolving decoder moved


@pytest.mark.slow
def test_a_row_without_a_decoder_phase_keeps_a_constant_reconstruction_error_and_no_stage2_metrics(tiny_world,
                                                                                                 evaluator):
    curve = run_row(_tiny_row("03_std_rl.yaml"), 0, evaluator, tiny_world)["curve"]
    assert len({point["heldout_rec_l1"] for point in curve}) == 1  # the decoder never trains
    assert not any(key.startswith("decoder/") for point in curve for key in point)


def test_stage2_summary_means_metrics_sums_per_phase_counts_and_keeps_running_totals():
    phases = [{"loss_gan": 1.0, "rank_weight_ess": 4.0, "nonfinite_skipped": 1.0, "phases": 1.0, "decoder_steps": 4.0},
              {"loss_gan": 3.0, "rank_weight_ess": 6.0, "nonfinite_skipped": 0.0, "phases": 2.0, "decoder_steps": 8.0}]
    assert summarise_decoder_phases(phases) == {"decoder/loss_gan": 2.0, "decoder/rank_weight_ess": 5.0,
                                                "decoder/nonfinite_skipped": 1.0, "decoder/phases": 2.0,
                                                "decoder/decoder_steps": 8.0}
    assert summarise_decoder_phases([]) == {}


def test_results_written_before_these_logs_still_make_the_table_and_the_figures(tmp_path):
    committed = json.loads(open(COMMITTED).read())
    table = markdown_table(committed)
    assert "| RankE (n=3) |" in table and "held-out rec. L1" not in table  # no column for what was not measured
    for path in write_curve_figures(committed["curves"], str(tmp_path)):
        assert os.path.getsize(path) > 0


def test_the_table_shows_the_held_out_reconstruction_error_when_measured():
    row = {"clip_score": {"mean": 30.0, "std": 0.5}, "heldout_rec_l1": {"mean": 0.2, "std": 0.0}}
    payload = {"rows": {"RankE": row}, "seeds": {"RankE": 1}}
    assert "| run | CLIP ↑ | held-out rec. L1 ↓ |" in markdown_table(payload)
