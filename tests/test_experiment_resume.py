"""The ShapesWorld experiment runner is resumable: each finished run writes its result at once, a rerun skips it,
an interrupted run continues from its checkpoint to the same result, and a changed recipe is refused. The absorb row
(the isolated M-step) adapts the decoder to a frozen policy's codes and leaves that policy untouched."""

import json
import os
import shutil

import pytest
import torch

from ranke_trl.recipes import RecipeError
from shapes_world.experiment import _EvalCallback, load_row, row_overrides, run_experiment, run_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V2 = os.path.join(REPO, "recipes", "shapes_v2")
pytestmark = pytest.mark.slow  # ~35 s of tiny runs in the shared fixture, ~30 s more for the interrupted one
ABSORB = "Decoder-only (frozen Std. RL)"


def _tiny(recipe: str, *extra: str):
    """A v2 row shrunk to seconds: seed 0, 2 steps evaluated (and checkpointed) after each, 8 prompts, 8 rollouts."""
    path = os.path.join(V2, recipe)
    mode = load_row(path).mode
    sizes = ["--num_eval_prompts", "8", "--max_train_samples", "8", "--per_device_train_batch_size", "8",
             "--num_generations", "4"]
    return load_row(path, row_overrides(mode, seeds=[0], steps=2, eval_every=1) + sizes + list(extra))


@pytest.fixture(scope="module")
def finished(tiny_world, tmp_path_factory):
    """Std. RL and the absorb row on frozen Std. RL, run uninterrupted into one output folder."""
    out = str(tmp_path_factory.mktemp("experiment"))
    rows = [_tiny("02_std_rl.yaml"), _tiny("04_absorb_std_rl.yaml")]
    payload = run_experiment(rows, out, cache_dir=tiny_world, paired=[(ABSORB, "Std. RL")])
    return out, rows, payload


def _result(out, row, seed=0):
    with open(os.path.join(run_folder(out, row, seed), "result.json")) as f:
        return json.load(f)


class Interrupted(Exception):
    pass


def _interrupt(*args, **kwargs):
    raise Interrupted  # after the first checkpoint is on disk


def test_an_interrupted_run_continues_from_its_checkpoint_to_the_same_result(finished, tiny_world, tmp_path,
                                                                            monkeypatch):
    out, rows, _ = finished  # the absorb run (a decoder phase: Stage 2 state to resume too) on Std. RL's policy
    shutil.copytree(run_folder(out, "Std. RL", 0), run_folder(str(tmp_path), "Std. RL", 0))
    with monkeypatch.context() as patch:
        patch.setattr(_EvalCallback, "on_save", _interrupt, raising=False)
        with pytest.raises(Interrupted):
            run_experiment(rows, str(tmp_path), cache_dir=tiny_world)
    folder = run_folder(str(tmp_path), ABSORB, 0)
    assert not os.path.exists(os.path.join(folder, "result.json"))
    saved = [name for name in os.listdir(os.path.join(folder, "checkpoints")) if name.startswith("checkpoint-")]
    assert saved == ["checkpoint-1"]
    assert [p["step"] for p in json.load(open(os.path.join(folder, "curve.json")))] == [0, 1]
    run_experiment(rows, str(tmp_path), cache_dir=tiny_world)
    resumed, uninterrupted = _result(str(tmp_path), ABSORB), _result(out, ABSORB)
    assert len(resumed["curve"]) == len(uninterrupted["curve"]) == 3
    for point, expected in zip(resumed["curve"], uninterrupted["curve"]):
        assert point == pytest.approx(expected)
    for decoder in ("D0", "co-evolved"):
        assert resumed["decoder_swap"][decoder] == pytest.approx(uninterrupted["decoder_swap"][decoder])
    assert not os.path.exists(os.path.join(folder, "checkpoints"))  # deleted once the run finished


def test_a_rerun_skips_finished_runs(finished, tiny_world, capsys):
    out, rows, _ = finished
    before = {row.name: os.path.getmtime(os.path.join(run_folder(out, row.name, 0), "result.json")) for row in rows}
    payload = run_experiment(rows, out, cache_dir=tiny_world, paired=[(ABSORB, "Std. RL")])
    assert capsys.readouterr().out.count("finished, skipped") == 2
    assert before == {row.name: os.path.getmtime(os.path.join(run_folder(out, row.name, 0), "result.json"))
                      for row in rows}
    assert payload["rows"] == finished[2]["rows"]  # the report, rebuilt from the runs on disk


def test_a_changed_recipe_is_refused_naming_the_row_and_the_fix(finished, tiny_world):
    out, rows, _ = finished
    changed = _tiny("04_absorb_std_rl.yaml", "--lambda_gan", "0.2")
    with pytest.raises(RecipeError, match=r"Row 'Decoder-only \(frozen Std. RL\)'.*--rerun 'Decoder-only"):
        run_experiment([rows[0], changed], out, cache_dir=tiny_world, run_rows=[])


def test_each_run_with_a_decoder_phase_reports_its_codes_through_d0_and_its_adapted_decoder(finished):
    out, _, payload = finished
    swap = _result(out, ABSORB)["decoder_swap"]
    assert set(swap) == {"D0", "co-evolved"} and swap["D0"] != swap["co-evolved"]
    assert "decoder_swap" not in _result(out, "Std. RL")  # no decoder phase: D0 is its decoder
    assert list(payload["decoder_swap"]) == [ABSORB]
    assert payload["paired"][f"{ABSORB} − Std. RL"]["clip_score"]["n"] == 1
    assert f"**{ABSORB}: co-evolved − D0 (same codes)** (n=1, single seed)" in open(os.path.join(out, "results.md")).read()


def test_the_absorb_row_adapts_the_decoder_and_leaves_the_frozen_policy_bit_identical(finished):
    from safetensors.torch import load_file

    out, _, _ = finished
    source = load_file(os.path.join(run_folder(out, "Std. RL", 0), "policy", "model.safetensors"))
    absorbed = load_file(os.path.join(run_folder(out, ABSORB, 0), "policy", "model.safetensors"))
    assert source.keys() == absorbed.keys()
    policy = [k for k in source if "vqmodel" not in k]
    decoder = [k for k in source if "vqmodel.decoder" in k]
    assert policy and decoder
    assert all(torch.equal(source[k], absorbed[k]) for k in policy)
    assert not all(torch.equal(source[k], absorbed[k]) for k in decoder)
    swap = _result(out, ABSORB)["decoder_swap"]
    assert swap["D0"]["clip_score"] == pytest.approx(_result(out, "Std. RL")["final"]["clip_score"])  # same codes


def test_an_absorb_row_needs_its_source_runs_first(tiny_world, tmp_path):
    with pytest.raises(RuntimeError, match="'Std. RL' seed 0, which has not finished"):
        run_experiment([_tiny("02_std_rl.yaml"), _tiny("04_absorb_std_rl.yaml")], str(tmp_path),
                       cache_dir=tiny_world, run_rows=[ABSORB])


def test_a_row_can_name_the_worlds_llamagen_policy():
    from shapes_world.experiment import _backbone

    assert _backbone(_tiny("02_std_rl.yaml").parse(0)[1]) == "janus"
    assert _backbone(_tiny("02_std_rl.yaml", "--shapes_backbone", "llamagen").parse(0)[1]) == "llamagen"
