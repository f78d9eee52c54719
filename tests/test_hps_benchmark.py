"""HPSv2 benchmark prompts from a local copy of zhwang/HPDv2's benchmark/*.json, and the score summary."""

import json

import pytest

from ranke_trl.evaluation import hps_benchmark
from ranke_trl.evaluation.hps_benchmark import load_hps_benchmark_prompts, summarize_hps


@pytest.fixture
def local_copy(tmp_path):
    for subset in ("photo", "concept-art", "anime"):
        (tmp_path / f"{subset}.json").write_text(json.dumps([f"{subset} prompt {i}" for i in range(5)]))
    return tmp_path


def test_prompts_load_per_subset_in_file_order(local_copy):
    prompts = load_hps_benchmark_prompts(["anime", "photo"], source=local_copy)
    assert list(prompts) == ["anime", "photo"]
    assert prompts["photo"] == [f"photo prompt {i}" for i in range(5)]


def test_default_subsets_are_the_papers_three(local_copy):
    assert list(load_hps_benchmark_prompts(source=local_copy)) == ["photo", "concept-art", "anime"]


def test_max_per_subset_keeps_the_first_prompts(local_copy):
    assert load_hps_benchmark_prompts("photo", source=local_copy, max_per_subset=2) == {
        "photo": ["photo prompt 0", "photo prompt 1"]
    }


def test_a_copy_laid_out_like_the_dataset_repository_is_found(tmp_path):
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "benchmark" / "paintings.json").write_text(json.dumps(["a painting"]))
    assert load_hps_benchmark_prompts("paintings", source=tmp_path) == {"paintings": ["a painting"]}


def test_unknown_subset_is_rejected_with_the_valid_names(local_copy):
    with pytest.raises(ValueError, match="concept-art"):
        load_hps_benchmark_prompts(["photos"], source=local_copy)


def test_missing_subset_file_is_reported(local_copy):
    with pytest.raises(FileNotFoundError, match="paintings.json"):
        load_hps_benchmark_prompts(["paintings"], source=local_copy)


def test_a_file_that_is_not_a_list_of_strings_is_rejected(tmp_path):
    (tmp_path / "photo.json").write_text(json.dumps({"prompts": ["a"]}))
    with pytest.raises(ValueError, match="list of prompt strings"):
        load_hps_benchmark_prompts("photo", source=tmp_path)


def test_hub_failure_asks_for_a_local_copy(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(RuntimeError, match=r"network unreachable\)\. Pass source=<dir>"):
        hps_benchmark.load_hps_benchmark_prompts("photo")


def test_summary_gives_subset_means_and_their_average():
    summary = summarize_hps({"photo": [20.0, 30.0], "anime": [27.0, 27.0, 30.0]})
    assert summary == pytest.approx({"hps/photo": 25.0, "hps/anime": 28.0, "hps/average": 26.5})


def test_summary_rejects_an_empty_subset():
    with pytest.raises(ValueError, match="anime"):
        summarize_hps({"photo": [1.0], "anime": []})
