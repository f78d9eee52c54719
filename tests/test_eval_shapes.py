"""`ranke-trl eval --recipe recipes/eval_shapes.yaml` scores any ShapesWorld policy by the world's own metrics (the
plugin's `shapes` metric, through the library's `register_metric`), and `ranke-trl table` compares the runs."""

import os
from pathlib import Path

import pytest

import examples_loader
from ranke_trl.cli import main as cli_main
from ranke_trl.cli import parse_eval_args
from ranke_trl.evaluation import register_metric
from ranke_trl.evaluation.metrics_registry import EVAL_METRICS
from ranke_trl.evaluation.results import read_results
from ranke_trl.evaluation.runner import evaluate

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "eval_shapes.yaml")
WORLD_KEYS = {"shapes_clip_score", "shapes_fid", "shapes_fid_content", "unreadable_shapes", "shapes_eval",
              "shift/token_kl_bits", "shift/entropy_bits", "shift/gt_entropy_bits"}


@pytest.fixture(scope="module")
def world(tiny_world):
    """The tiny world as the default cache, as $RANKE_SHAPES_CACHE makes it for the commands."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RANKE_SHAPES_CACHE", tiny_world)
        yield tiny_world


@pytest.fixture(scope="module")
def trained_dir(world, tmp_path_factory):
    """The README's main command on the tiny world, 2 steps (as in test_train_script.py)."""
    output_dir = tmp_path_factory.mktemp("shapes-ranke-clip")
    examples_loader.load("train_janus").main([
        "--recipe", str(REPO / "recipes" / "shapes_clip.yaml"), "--output_dir", str(output_dir),
        "--max_steps", "2", "--save_steps", "0", "--log_images_steps", "0", "--report_to", "none",
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_train_samples", "16",
        "--world_eval_prompts", "0",
    ])
    return output_dir


def eval_shapes(policy, output_dir, *overrides) -> int:
    return cli_main(["eval", "--recipe", RECIPE, "--policy_name_or_path", str(policy), "--output_dir",
                     str(output_dir), "--max_prompts", "6", "--batch_size", "4", *overrides])


@pytest.fixture(scope="module")
def base_results(world, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("eval-shapes-base")
    assert eval_shapes(Path(world) / "policy", output_dir, "--run_name", "Base") == 0
    return output_dir


@pytest.fixture(scope="module")
def trained_results(trained_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("eval-shapes")
    assert eval_shapes(trained_dir, output_dir) == 0
    return output_dir


def test_the_worlds_policy_is_scored_by_the_worlds_metrics(base_results):
    results = read_results(base_results / "results.json")
    metrics, meta = results["metrics"], results["meta"]
    assert WORLD_KEYS <= set(metrics) and results["run_name"] == "Base"
    assert any(key.startswith("shapes_eval/") for key in metrics)  # ShapesEval by prompt family
    assert 0.0 <= metrics["shapes_eval"] <= 1.0 and 0.0 <= metrics["shapes_clip_score"] <= 100.0
    assert 0.0 < metrics["shift/entropy_bits"] <= 8.0  # a codebook of 256 holds at most 8 bits
    assert meta["shapes_eval"]["num_images"] == 6 and meta["shift"]["num_policy_codes"] == 6 * 64
    assert "6 prompts' real renders" in meta["shift"]["reference"]
    assert meta["shapes_world"]["tiny"] is True and meta["sampling"]["guidance_scale"] == 3.0
    assert (base_results / "results.md").read_text().startswith("| Method |")


def test_a_trained_output_directory_is_scored_alike(trained_results):
    results = read_results(trained_results / "results.json")
    assert WORLD_KEYS <= set(results["metrics"])
    assert results["meta"]["prompts"] == {"prompt_set": "shapes", "source": None, "num_prompts": 6}


def test_table_compares_the_two_runs_row_by_row(base_results, trained_results, trained_dir, capsys):
    capsys.readouterr()
    assert cli_main(["table", str(base_results / "results.json"), str(trained_results / "results.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "shapes_eval" in lines[0] and "Token KL (bits) ↓" in lines[0]
    assert lines[2].startswith("| Base |") and lines[3].startswith(f"| {trained_dir.name} |")


def test_the_shapes_metric_needs_the_shapes_prompt_set(world):
    with pytest.raises(ValueError, match="set prompt_set: shapes"):
        parse_eval_args(["--recipe", RECIPE, "--prompt_set", "dataset", "--prompt_dataset", "x.jsonl"])


def test_the_shapes_metric_and_the_builtin_shift_are_not_chosen_together(world):
    with pytest.raises(ValueError, match="drop 'shift'"):
        parse_eval_args(["--recipe", RECIPE, "--metrics", "shapes", "shift", "--reference_dataset", "shapes"])


def test_an_unknown_metric_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match="'shapes'"):
        parse_eval_args(["--recipe", RECIPE, "--metrics", "no_such_metric"])


class _CountImages:
    """A toy registered metric: how many images and prompts it saw, and that references came first."""

    def __init__(self, args, codec, accelerator):
        self.images, self.prompts, self.prepared = 0, 0, False

    def prepare_references(self):
        self.prepared = True

    def update(self, records, codes, images01):
        assert self.prepared and images01.shape[0] == codes.shape[0]
        self.images, self.prompts = self.images + len(images01), self.prompts + len(records)

    def compute(self):
        return {"count/images": self.images, "count/prompts": self.prompts}, {"count": {"what": "a test metric"}}


def test_a_registered_metric_is_driven_like_the_builtin_ones(tiny_janus_dir, tmp_path):
    register_metric("count_images", _CountImages)
    try:
        results = evaluate(parse_eval_args([
            "--recipe", str(REPO / "recipes" / "eval_tiny.yaml"), "--policy_name_or_path", tiny_janus_dir,
            "--output_dir", str(tmp_path), "--max_prompts", "3", "--images_per_prompt", "2",
            "--metrics", "count_images",
        ]))
    finally:
        EVAL_METRICS.pop("count_images")
    assert results["metrics"] == {"count/images": 6, "count/prompts": 3}
    assert read_results(tmp_path / "results.json")["meta"]["count"] == {"what": "a test metric"}
    assert os.path.isfile(tmp_path / "results.md")
