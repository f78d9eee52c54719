"""The ShapesWorld experiment: one recipe file per row, run end to end on a tiny prepared world (2 steps per run)."""

import glob
import json
import math
import os

import pytest

from ranke_trl.recipes import RecipeError
from shapes_world.experiment import load_row, markdown_table, row_overrides, run_experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_RECIPES = sorted(glob.glob(os.path.join(REPO, "recipes", "shapes_experiment", "*.yaml")))
COMMITTED = os.path.join(REPO, "docs", "shapes_world", "results.json")


def _tiny(path):
    """A row recipe shrunk to seconds: 2 steps, 8 prompts, one seed."""
    mode = load_row(path).mode
    sizes = {"base": ["--num_eval_prompts", "8"],
             "sft": ["--num_eval_prompts", "8", "--max_train_samples", "8", "--batch_size", "8"],
             "grpo": ["--num_eval_prompts", "8", "--max_train_samples", "8", "--per_device_train_batch_size", "8",
                      "--num_generations", "4"]}[mode]
    return load_row(path, row_overrides(mode, seeds=[0], steps=2, eval_every=2) + sizes)


def test_experiment_writes_table_curves_and_figures(tiny_world, tmp_path):
    rows = [_tiny(path) for path in ROW_RECIPES if os.path.basename(path) in ("01_base.yaml", "02_sft.yaml",
                                                                              "05_ranke.yaml")]
    payload = run_experiment(rows, str(tmp_path), cache_dir=tiny_world, workers=2)
    assert set(payload["rows"]) == {"Base", "SFT", "RankE"}
    for row in payload["rows"].values():
        assert {"clip_score", "shapes_fid", "shapes_eval", "shift/token_kl_bits", "shift/entropy_bits"} <= set(row)
    assert [p["step"] for p in payload["curves"]["RankE"][0]] == [0, 2]  # before training, then every eval_every
    assert payload["curves"]["RankE"][0][0] == payload["curves"]["SFT"][0][0]  # same start, same sampling seeds
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == payload["rows"]
    assert saved["recipes"]["RankE"]["settings"]["mode"] == "grpo"  # each row's recipe is kept with its numbers
    table = (tmp_path / "results.md").read_text()
    assert "| RankE (n=1) |" in table and "ShapesFID ↓" in table
    for figure in ["quality_curves.png", "shift_curves.png", "samples_by_mode.png"]:
        assert (tmp_path / figure).stat().st_size > 0


def test_every_row_recipe_states_the_settings_of_the_committed_table():
    # docs/shapes_world/results.json was made before the rows became recipes; its settings must still hold.
    committed = json.loads(open(COMMITTED).read())["settings"]
    rows = {row.name: row for row in map(load_row, ROW_RECIPES)}
    assert list(rows) == committed["rows"]  # the table's rows, in its order
    for name, row in rows.items():
        args = row.args
        main = name in ("Base", "SFT", "Std. RL", "Decoder-only", "RankE")
        assert args.seeds == (committed["seeds"] if main else committed["ablation_seeds"]), name
        assert (args.num_eval_prompts, args.eval_seed, args.eval_guidance_scale) == (
            committed["num_eval_prompts"], 1234, committed["guidance_scale"])
        assert (args.eval_temperature, args.eval_top_k, args.eval_top_p) == (1.0, 0, 0.9)
        if row.mode == "base":
            continue
        assert (args.steps, args.eval_every) == (committed["steps"], committed["eval_every"]), name
        _, script_args, train = row.parse(seed=0)
        assert script_args.max_train_samples == committed["num_train_prompts"]
        if row.mode == "sft":
            assert train.batch_size == committed["rollouts_per_step"]
            assert train.learning_rate == committed["learning_rate"]
            continue
        assert (train.per_device_train_batch_size, train.num_generations, train.learning_rate) == (
            committed["rollouts_per_step"], committed["num_generations"], committed["learning_rate"])
        assert (train.guidance_scale, train.top_p, train.lr_scheduler_type.value) == (committed["guidance_scale"], 0.9,
                                                                                       "constant")
        # the settings the runner used to build in code
        assert (train.decoder_batch_size, train.lambda_lpips, train.log_images_steps) == (8, 0.0, 0)
        expected_decoder_lr = 1e-5 if name == "RankE, decoder lr 1e-5" else committed["decoder_learning_rate"]
        assert train.decoder_learning_rate == expected_decoder_lr
        black_box = script_args.reward_funcs == ["shapes_eval"]
        assert black_box == ("black-box" in name) and (not black_box or train.lambda_rbp == 0.0)


def test_each_ablation_row_differs_from_ranke_in_its_own_setting_only():
    ranke = load_row(os.path.join(REPO, "recipes/shapes_experiment/05_ranke.yaml")).parse(0)[2].to_dict()
    expected = {"Std. RL": {"train_decoder": False}, "Decoder-only": {"train_policy": False},
                "w/o L_rec": {"lambda_rec": 0.0}, "w/o L_RankGAN": {"lambda_gan": 0.0},
                "w/o L_cons": {"lambda_cons": 0.0}, "w/o L_rbp": {"lambda_rbp": 0.0},
                "uniform GAN": {"rank_gan_temperature": math.inf},
                "RankE, decoder lr 1e-5": {"decoder_learning_rate": 1e-5}}
    for path in ROW_RECIPES:
        row = load_row(path)
        if row.name in expected:
            config = row.parse(0)[2].to_dict()
            assert {k: v for k, v in config.items() if ranke[k] != v} == expected[row.name], row.name


def test_a_row_recipe_that_contradicts_itself_is_refused(tmp_path):
    text = open(os.path.join(REPO, "recipes/shapes_experiment/05_ranke.yaml")).read().replace("max_steps: 200",
                                                                                              "max_steps: 100")
    (tmp_path / "row.yaml").write_text(text)
    with pytest.raises(RecipeError, match="max_steps must equal steps"):
        load_row(str(tmp_path / "row.yaml"))


def test_a_row_recipe_must_state_every_row_setting(tmp_path):
    text = open(os.path.join(REPO, "recipes/shapes_experiment/01_base.yaml")).read().replace("eval_top_p: 0.9\n", "")
    (tmp_path / "row.yaml").write_text(text)
    with pytest.raises(RecipeError, match="eval_top_p"):
        load_row(str(tmp_path / "row.yaml"))


def test_table_reports_mean_and_std_over_seeds():
    payload = {"rows": {"RankE": {"clip_score": {"mean": 30.0, "std": 0.5}}}, "seeds": {"RankE": 3}}
    assert "| RankE (n=3) | 30.000 ± 0.500 |" in markdown_table(payload)


def test_the_script_refuses_an_unknown_row_before_any_work(capsys):
    import examples_loader

    with pytest.raises(SystemExit):
        examples_loader.load("shapes_experiment").main(["--rows", "RankE++"])
    assert "unknown rows ['RankE++']" in capsys.readouterr().err


@pytest.mark.parametrize("recipe_dir, expected", [("shapes_experiment", ["Base", "SFT", "Std. RL", "Decoder-only",
                                                                         "RankE"]),
                                                  ("shapes_v2", ["Base", "Std. RL", "RankE"])])
def test_quick_runs_the_main_rows_the_recipe_folder_holds_for_seed_0(recipe_dir, expected, tmp_path, monkeypatch):
    import examples_loader

    script = examples_loader.load("shapes_experiment")
    seen = {}

    def fake_run_experiment(rows, out_dir, **kwargs):
        seen.update(rows=rows, run_rows=kwargs["run_rows"])
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write("table\n")

    monkeypatch.setattr(script, "run_experiment", fake_run_experiment)
    script.main(["--quick", "--recipe_dir", os.path.join(REPO, "recipes", recipe_dir), "--output_dir", str(tmp_path)])
    assert seen["run_rows"] == expected
    trained = [row for row in seen["rows"] if row.mode in ("grpo", "sft")]
    assert trained and all(row.args.seeds == [0] and row.args.steps == 100 for row in trained)


def test_the_v2_gate_rows_run_on_a_world_of_16x16_codes(tmp_path_factory):
    from shapes_world.pretrain import prepare_shapes_world, read_manifest

    world = prepare_shapes_world(tmp_path_factory.mktemp("world16"), tiny=True, patch_size=4, show_progress=False)
    assert read_manifest(world)["identity"]["settings"]["patch_size"] == 4
    v2 = sorted(glob.glob(os.path.join(REPO, "recipes", "shapes_v2", "0[12]_*.yaml")))
    out = tmp_path_factory.mktemp("gate16")
    payload = run_experiment([_tiny(path) for path in v2], str(out), cache_dir=world, workers=1)
    assert set(payload["rows"]) == {"Base", "Std. RL"}
    for row in payload["rows"].values():
        # (render L1 is a mean over confidently read images, which a seconds-trained tiny world has none of)
        assert {"render/off_palette", "render/confident", "shift/token_kl_bits"} <= set(row)
    result = json.loads(next(out.rglob("result.json")).read_text())
    assert result  # each run's result lands in its own folder


def test_the_v2_second_clip_row_differs_from_ranke_in_its_l_rbp_only():
    v2 = os.path.join(REPO, "recipes", "shapes_v2")
    ranke = load_row(os.path.join(v2, "03_ranke.yaml"))
    second = load_row(os.path.join(v2, "05_ranke_rbp_second_clip.yaml"))
    (_, r_script, r_train), (_, s_script, s_train) = ranke.parse(0), second.parse(0)
    assert (r_script.rbp_reward_funcs, r_train.lambda_rbp) == (None, 0.0)
    assert (s_script.rbp_reward_funcs, s_train.lambda_rbp) == (["shapes_clip_second"], 0.5)
    assert s_script.reward_funcs == r_script.reward_funcs == ["shapes_clip"] and second.args.seeds == [0]
    differ = {k for k, v in r_train.to_dict().items() if s_train.to_dict()[k] != v}
    assert differ <= {"lambda_rbp", "output_dir", "logging_dir", "run_name"}, differ
