"""Evaluation results as JSON, and the Markdown table comparing runs in the paper's row format."""

import json

import pytest

from ranke_trl.evaluation.results import read_results, results_table, write_results

FID_META = {"feature_extractor": "inception-v3-compat", "feature_dim": 2048, "num_fake_images": 30000}
CLIP_META = {"model": "ViT-L-14 (openai)", "formula": "100 * max(cos, 0)"}


def test_results_json_round_trip(tmp_path):
    metrics = {"clip_score": 33.76, "fid": 15.21, "shift/token_kl_bits": 0.12}
    meta = {"clip_score": CLIP_META, "fid": FID_META, "shift": {"smoothing": 1.0}, "checkpoint": "runs/ranke"}
    written = write_results(tmp_path / "ranke.json", "RankE", metrics, meta)
    assert read_results(tmp_path / "ranke.json") == written == {"run_name": "RankE", "metrics": metrics, "meta": meta}


def test_table_of_two_runs_with_different_metric_subsets(tmp_path):
    write_results(tmp_path / "std.json", "Std. RL", {"fid": 17.764, "clip_score": 32.45}, {"fid": {}, "clip_score": {}})
    ranke = {
        "run_name": "RankE",
        "metrics": {"clip_score": 33.756, "hps/photo": 27.5, "shift/entropy_bits": 12.3456},
        "meta": {"clip_score": {}, "hps": {"version": "v2.1"}, "shift": {}},
    }
    assert results_table([tmp_path / "std.json", ranke]) == (
        "| Method | CLIP ↑ | FID ↓ | HPS photo ↑ | Entropy (bits) |\n"
        "|---|---:|---:|---:|---:|\n"
        "| Std. RL | 32.45 | 17.76 | – | – |\n"
        "| RankE | 33.76 | – | 27.50 | 12.35 |\n"
    )


def test_unknown_metrics_follow_the_known_ones_without_a_direction():
    run = {"run_name": "Base", "metrics": {"aesthetic": 5.0, "fid": 20.0}, "meta": {"aesthetic": {}, "fid": {}}}
    assert results_table([run]).splitlines()[0] == "| Method | FID ↓ | aesthetic |"


def test_metrics_without_a_meta_description_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\['hps'\]"):
        write_results(tmp_path / "run.json", "SFT", {"fid": 1.0, "hps/anime": 27.0}, {"fid": FID_META})


def test_non_finite_metrics_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        write_results(tmp_path / "run.json", "SFT", {"fid": float("nan")}, {"fid": FID_META})


def test_a_json_file_that_is_not_a_results_file_is_rejected(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"fid": 1.0}))
    with pytest.raises(ValueError, match="not a results file"):
        read_results(tmp_path / "other.json")
