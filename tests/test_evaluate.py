"""One-command evaluation (`ranke-trl eval`, `examples/evaluate.py`) of a tiny Janus saved to a directory, offline.

The recipe `recipes/eval_tiny.yaml` is the starting point of every run here, shrunk by command-line overrides.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ranke_trl.cli import main as cli_main
from ranke_trl.cli import parse_eval_args
from ranke_trl.evaluation.eval_sets import (
    PromptRecord,
    iter_image_batches,
    load_eval_prompts,
    open_dataset,
    prompt_seed,
)
from ranke_trl.evaluation.results import read_results
from ranke_trl.evaluation.runner import evaluate, load_system
from ranke_trl.recipes import RecipeError

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = str(REPO / "recipes" / "eval_tiny.yaml")


def run(policy_dir, output_dir, *overrides):
    """Evaluate with the tiny recipe, 3 shapes prompts x 2 images, and the given `--key value` overrides."""
    argv = ["--recipe", TINY_RECIPE, "--policy_name_or_path", str(policy_dir), "--output_dir", str(output_dir),
            "--max_prompts", "3", "--max_reference_images", "16", *map(str, overrides)]
    return evaluate(parse_eval_args(argv))


def image_bytes(output_dir) -> dict[str, bytes]:
    folder = Path(output_dir) / "images"
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def tiny_run(tiny_janus_dir, tmp_path_factory):
    """One run of the tiny recipe with every metric it chooses: CLIP score, FID, shift diagnostics, GenEval export."""
    output_dir = tmp_path_factory.mktemp("eval_tiny")
    return run(tiny_janus_dir, output_dir, "--run_name", "tiny", "--save_images", "true"), output_dir


# ------------------------------------------------------------------------------------------------ results files
def test_results_json_holds_every_chosen_metric_with_its_meta(tiny_run):
    _, output_dir = tiny_run
    results = read_results(output_dir / "results.json")

    expected = {"clip_score", "fid", "shift/token_kl_bits", "shift/entropy_bits", "shift/gt_entropy_bits"}
    assert set(results["metrics"]) == expected
    assert 0.0 <= results["metrics"]["clip_score"] <= 100.0
    assert results["metrics"]["fid"] > 0.0
    assert 0.0 < results["metrics"]["shift/entropy_bits"] <= 8.0  # a codebook of 256 holds at most 8 bits
    meta = results["meta"]
    assert meta["clip_score"]["model"] == "tiny-clip" and meta["clip_score"]["num_images"] == 6
    assert meta["fid"]["feature_dim"] == 16 and meta["fid"]["resize"] == "done by the feature extractor"
    assert (meta["fid"]["num_real_images"], meta["fid"]["num_fake_images"]) == (16, 6)
    assert meta["shift"]["num_policy_codes"] == 6 * 64
    assert meta["sampling"]["seed"] == 0 and meta["sampling"]["top_p"] == 0.9


def test_markdown_table_is_written_with_one_row_for_the_run(tiny_run):
    _, output_dir = tiny_run
    lines = (output_dir / "results.md").read_text().splitlines()

    assert lines[0].startswith("| Method | CLIP ↑ | FID ↓ | Token KL (bits) ↓")
    assert len(lines) == 3 and lines[2].startswith("| tiny |")


def test_geneval_export_has_the_official_layout_and_evaluator_command(tiny_run):
    results, output_dir = tiny_run
    export = output_dir / "geneval"
    prompts = load_eval_prompts("shapes", max_prompts=3)

    assert sorted(path.name for path in export.iterdir()) == ["00000", "00001", "00002"]
    for record in prompts:
        folder = export / f"{record.index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == record.metadata
        assert sorted(path.name for path in (folder / "samples").iterdir()) == ["00000.png", "00001.png"]
    with Image.open(export / "00000" / "samples" / "00000.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    assert "evaluation/evaluate_images.py " + str(export.resolve()) in results["meta"]["geneval"]["evaluator"]


def test_geneval_results_join_the_existing_results_without_generating(tiny_run, tmp_path):
    _, output_dir = tiny_run
    (tmp_path / "results.json").write_text((output_dir / "results.json").read_text())
    lines = [{"tag": "counting", "correct": True}, {"tag": "counting", "correct": False},
             {"tag": "colors", "correct": True}]
    (tmp_path / "geneval.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    results = evaluate(parse_eval_args(["--output_dir", str(tmp_path), "--metrics", "geneval",
                                        "--geneval_results", str(tmp_path / "geneval.jsonl")]))

    assert results["run_name"] == "tiny"
    assert results["metrics"]["geneval/counting"] == 0.5 and results["metrics"]["geneval/overall"] == 0.75
    assert "clip_score" in results["metrics"]  # the earlier metrics stay
    assert "GenEval" in (tmp_path / "results.md").read_text()


def test_a_second_export_into_the_same_folder_fails_before_generating(tiny_run, tiny_janus_dir):
    _, output_dir = tiny_run
    with pytest.raises(FileExistsError, match="earlier GenEval export"):
        run(tiny_janus_dir, output_dir)


def test_reference_statistics_are_saved_once_and_reused(tiny_janus_dir, tmp_path):
    stats, histogram = tmp_path / "cache" / "fid.safetensors", tmp_path / "cache" / "codes.safetensors"
    common = ("--metrics", "fid", "shift", "--max_prompts", "2", "--fid_reference_stats", stats,
              "--shift_reference_histogram", histogram)

    computed = run(tiny_janus_dir, tmp_path / "first", *common)
    assert stats.is_file() and histogram.is_file()
    reused = run(tiny_janus_dir, tmp_path / "second", *common, "--reference_dataset", "does-not-exist")

    assert reused["meta"]["fid"]["reference"] == {"statistics_file": str(stats)}
    assert reused["meta"]["shift"]["reference"] == {"histogram_file": str(histogram)}
    assert computed["meta"]["fid"]["reference"]["num_images"] == 16
    assert reused["metrics"] == pytest.approx(computed["metrics"])


# ------------------------------------------------------------------------------------------------ seeds
def test_images_are_reproducible_and_independent_of_the_batch_size(tiny_run, tiny_janus_dir, tmp_path):
    one_batch_results, one_batch = tiny_run  # the recipe's batch_size 8: all 6 images in one batch, seed 0
    assert one_batch_results["meta"]["sampling"]["seed"] == 0
    common = ("--metrics", "clip_score", "--save_images", "true")
    run(tiny_janus_dir, tmp_path / "a", *common, "--batch_size", "1")
    run(tiny_janus_dir, tmp_path / "c", *common, "--batch_size", "6", "--seed", "1")

    first = image_bytes(tmp_path / "a")
    assert sorted(first) == [f"{i:05d}_{k:02d}.png" for i in range(3) for k in range(2)]
    assert image_bytes(one_batch) == first
    assert image_bytes(tmp_path / "c") != first  # the seed, not the batch size, decides the images


@pytest.mark.distributed
def test_two_processes_give_the_same_images_and_metrics_as_one(tiny_run, tiny_janus_dir, tmp_path):
    one, one_dir = tiny_run
    # On a machine without GPUs, accelerate runs torchrun's ranks as one group only when told to use the CPU.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "examples" / "evaluate.py"), "--recipe", TINY_RECIPE, "--policy_name_or_path",
               str(tiny_janus_dir), "--output_dir", str(tmp_path), "--max_prompts", "3", "--max_reference_images",
               "16", "--run_name", "tiny", "--save_images", "true"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    two = read_results(tmp_path / "results.json")
    assert two["meta"]["num_processes"] == 2
    assert image_bytes(tmp_path) == image_bytes(one_dir)
    exported = sorted(p.relative_to(tmp_path) for p in (tmp_path / "geneval").rglob("*") if p.is_file())
    assert exported == sorted(p.relative_to(one_dir) for p in (one_dir / "geneval").rglob("*") if p.is_file())
    assert two["meta"]["fid"]["num_fake_images"] == 6 and two["meta"]["fid"]["num_real_images"] == 16
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-5)  # only the order of float sums differs


def test_prompt_seeds_depend_only_on_base_seed_subset_and_index():
    photo = PromptRecord(3, "a cat", subset="photo")
    assert prompt_seed(0, photo) == prompt_seed(0, PromptRecord(3, "another prompt", subset="photo"))
    seeds = {prompt_seed(0, photo), prompt_seed(1, photo), prompt_seed(0, PromptRecord(3, "a cat", subset="anime")),
             prompt_seed(0, PromptRecord(4, "a cat", subset="photo")), prompt_seed(0, PromptRecord(3, "a cat"))}
    assert len(seeds) == 5 and all(0 <= seed < 2**63 for seed in seeds)


# ------------------------------------------------------------------------------------------------ decoder override
def test_a_separate_decoder_directory_replaces_the_policys_vq(tiny_janus_dir, tmp_path):
    from ranke_trl.tiny import build_tiny_janus

    own, other = tmp_path / "own", tmp_path / "other"
    build_tiny_janus(seed=0).model.vqmodel.save_pretrained(own / "decoder")  # the policy's VQ, saved on its own
    build_tiny_janus(seed=1).model.vqmodel.save_pretrained(other)  # same shapes, other weights
    common = ("--metrics", "clip_score", "--save_images", "true", "--max_prompts", "2")

    run(tiny_janus_dir, tmp_path / "base", *common)
    run(tiny_janus_dir, tmp_path / "own_run", *common, "--decoder_name_or_path", own, "--decoder_subfolder", "decoder")
    results = run(tiny_janus_dir, tmp_path / "other_run", *common, "--decoder_name_or_path", other)

    assert image_bytes(tmp_path / "own_run") == image_bytes(tmp_path / "base")
    assert image_bytes(tmp_path / "other_run") != image_bytes(tmp_path / "base")
    assert results["meta"]["settings"]["decoder_name_or_path"] == str(other)


def test_a_decoder_with_another_codebook_is_rejected_with_the_fix(tiny_janus_dir, tmp_path):
    from ranke_trl.tiny import build_tiny_janus

    build_tiny_janus(codebook_size=128).model.vqmodel.save_pretrained(tmp_path)
    args = parse_eval_args(["--recipe", TINY_RECIPE, "--policy_name_or_path", tiny_janus_dir,
                            "--decoder_name_or_path", str(tmp_path)])
    with pytest.raises(ValueError, match="128 codes.*use the decoder trained with this policy"):
        load_system(args, torch.device("cpu"))


# ------------------------------------------------------------------------------------------------ HPS benchmark
def test_hps_benchmark_scores_each_subset_and_their_average(tiny_janus_dir, tmp_path):
    for subset in ("photo", "anime"):
        (tmp_path / f"{subset}.json").write_text(json.dumps([f"a {subset} of a red circle", f"a {subset} of a dog"]))

    results = run(tiny_janus_dir, tmp_path / "out", "--prompt_set", "hps", "--hps_benchmark_dir", tmp_path,
                  "--hps_subsets", "photo", "anime", "--metrics", "hps", "--hps_model", "tiny-clip",
                  "--images_per_prompt", "1", "--save_images", "true")

    assert set(results["metrics"]) == {"hps/photo", "hps/anime", "hps/average"}
    assert results["meta"]["hps"]["version"] == "v2.1"
    assert results["meta"]["hps"]["num_images"] == {"photo": 2, "anime": 2}
    assert sorted(image_bytes(tmp_path / "out")) == ["anime/00000_00.png", "anime/00001_00.png",
                                                     "photo/00000_00.png", "photo/00001_00.png"]


# ------------------------------------------------------------------------------------------------ sets and tables
def test_prompts_come_from_a_local_file_and_reference_images_from_an_image_folder(tmp_path):
    (tmp_path / "captions.jsonl").write_text('{"caption": "a dog"}\n{"caption": "two cats"}\n')
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (80 * i, 0, 0)).save(tmp_path / "images" / f"{i}.png")

    records = load_eval_prompts("dataset", source=str(tmp_path / "captions.jsonl"), column="caption")
    batches = list(iter_image_batches(open_dataset(str(tmp_path / "images")), "image", range(3), 16, 2))

    assert [(r.index, r.prompt) for r in records] == [(0, "a dog"), (1, "two cats")]
    assert [tuple(b.shape) for b in batches] == [(2, 3, 16, 16), (1, 3, 16, 16)]
    assert batches[0].min() >= -1 and batches[0].max() <= 1


def test_geneval_prompts_keep_their_line_numbers_and_records(tmp_path):
    lines = [{"tag": "counting", "include": [{"class": "cup", "count": 3}], "prompt": "a photo of three cups"},
             {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a red dog"}]
    (tmp_path / "evaluation_metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    records = load_eval_prompts("geneval", source=str(tmp_path / "evaluation_metadata.jsonl"))

    assert [(r.index, r.prompt, r.metadata) for r in records] == [(0, lines[0]["prompt"], lines[0]),
                                                                  (1, lines[1]["prompt"], lines[1])]


def test_several_result_files_give_one_table(tiny_run, tmp_path, capsys):
    _, output_dir = tiny_run
    other = json.loads((output_dir / "results.json").read_text())
    other["run_name"], other["metrics"]["fid"] = "RankE", 1.5
    (tmp_path / "ranke.json").write_text(json.dumps(other))

    assert cli_main(["table", str(output_dir / "results.json"), str(tmp_path / "ranke.json"),
                     "--output", str(tmp_path / "table.md")]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| Method |")
    assert lines[2].startswith("| tiny |") and lines[3].startswith("| RankE |") and "| 1.50 |" in lines[3]
    assert (tmp_path / "table.md").read_text().splitlines() == lines


# ------------------------------------------------------------------------------------------------ recipe errors
def test_an_unknown_recipe_key_fails_before_loading_anything_and_names_the_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("policy_name_or_path: /does/not/exist\nclip_modle_name: ViT-L-14\n")
    with pytest.raises(RecipeError, match="'clip_modle_name' in .*bad.yaml.*Did you mean 'clip_model_name'"):
        parse_eval_args(["--recipe", str(recipe)])
    with pytest.raises(RecipeError, match="'max_promts' in the command line"):
        parse_eval_args(["--recipe", TINY_RECIPE, "--max_promts", "3"])


def test_a_metric_without_what_it_needs_fails_early_with_the_fix():
    with pytest.raises(RecipeError, match="set prompt_set: hps"):
        parse_eval_args(["--recipe", TINY_RECIPE, "--metrics", "hps"])


# ------------------------------------------------------------------------------------------------ real weights
@pytest.mark.skipif(
    not (os.environ.get("RANKE_JANUS_PRO_DIR") and os.environ.get("RANKE_CLIP_WEIGHTS")),
    reason="set RANKE_JANUS_PRO_DIR (a local deepseek-community/Janus-Pro-1B) and RANKE_CLIP_WEIGHTS (OpenAI "
    "ViT-L-14 open_clip weights) to run",
)
def test_real_janus_pro_and_clip_give_a_plausible_clip_score(tmp_path):
    results = evaluate(parse_eval_args([
        "--recipe", TINY_RECIPE, "--policy_name_or_path", os.environ["RANKE_JANUS_PRO_DIR"],
        "--output_dir", str(tmp_path), "--max_prompts", "2", "--images_per_prompt", "1", "--metrics", "clip_score",
        "--clip_model_name", "ViT-L-14", "--clip_pretrained", os.environ["RANKE_CLIP_WEIGHTS"],
        "--clip_force_quick_gelu", "true",
    ]))
    assert 15.0 < results["metrics"]["clip_score"] < 45.0


def test_evaluation_defaults_to_the_sampling_settings_saved_with_the_run(tiny_janus_dir, tmp_path, capsys):
    import shutil

    from ranke_trl.sampling import save_sampling

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_janus_dir, run_dir)
    save_sampling({"guidance_scale": 2.5, "temperature": 0.9, "top_k": 7, "top_p": 0.8, "logprob_mode": "guided"},
                  run_dir)
    results = run(run_dir, tmp_path / "eval", "--metrics", "clip_score", "--top_k", "3")
    sampling = results["meta"]["sampling"]
    assert (sampling["guidance_scale"], sampling["temperature"], sampling["top_p"]) == (2.5, 0.9, 0.8)
    assert sampling["top_k"] == 3  # set explicitly: wins over the run's value
    assert "saved with the run: guidance_scale, temperature, top_p" in capsys.readouterr().out
