"""The README stays true: its commands, and a recipe reference that matches the code."""

import os

from ranke_trl.recipe_reference import recipe_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()


def test_readme_recipe_reference_matches_the_code():
    assert recipe_reference() in README, "regenerate it with: python -m ranke_trl.recipe_reference"


def test_readme_commands_are_the_ones_ci_runs():
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    assert 'pip install -e ".[dev]"' in README and 'pip install -e ".[dev]"' in ci
    assert "python -m pytest" in README and "python -m pytest" in ci


def test_readme_names_only_recipes_that_exist():
    import re

    for path in set(re.findall(r"recipes/[\w./-]+\.yaml", README)):
        assert os.path.exists(os.path.join(REPO, path)), path
