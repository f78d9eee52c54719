"""`ranke-trl curate` is the curation pipeline's CLI entry (same parser and errors as `python -m ranke_trl.data.curate`)."""

import pytest

from ranke_trl import cli


def test_usage_lists_curate(capsys):
    assert cli.main(["--help"]) == 0
    assert "curate --recipe FILE" in capsys.readouterr().out


def test_curate_subcommand_names_an_unknown_recipe_key(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mixx: {dalle3: 1}\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["curate", "--recipe", str(recipe)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "mixx" in err and "mix" in err


def test_curate_subcommand_runs_the_pipeline_with_its_own_command_line(monkeypatch, tmp_path):
    from ranke_trl.data import curate as curate_module

    seen = {}
    monkeypatch.setattr(curate_module, "curate", lambda args, command=None: seen.update(args=args, command=command))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mix: {dalle3: 1}\n")
    assert cli.main(["curate", "--recipe", str(recipe), "--output_dir", str(tmp_path / "out")]) == 0
    assert seen["args"].mix == {"dalle3": 1} and seen["args"].output_dir == str(tmp_path / "out")
    assert seen["command"].startswith("ranke-trl curate --recipe ")
