"""Layers go one way: `ranke_trl` imports nothing of ShapesWorld, which sits on top of it as a plugin."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "ranke_trl"


# One fresh interpreter checks both layer rules, in this order: first the built-in names, with nothing else imported
# (so no earlier import can register them), then an import of every library module. Each part reports on its own.
FRESH_PYTHON = """
import importlib, json, pkgutil, sys, traceback
report = {}
try:
    from ranke_trl.data import open_dataset
    from ranke_trl.evaluation.eval_sets import get_prompt_set
    from ranke_trl.rewards import load_reward
    assert len(open_dataset('tiny', num_rows=4)) == 4
    get_prompt_set('dataset'); load_reward('tiny_clip')
    report['builtin_leaked'] = sorted(m for m in sys.modules if m.split('.')[0] == 'shapes_world')
except Exception:
    report['builtin_error'] = traceback.format_exc()
try:
    import ranke_trl
    names = [m.name for m in pkgutil.walk_packages(ranke_trl.__path__, 'ranke_trl.')]
    for name in names:
        importlib.import_module(name)
    report['modules'] = len(names)
    report['leaked'] = sorted(m for m in sys.modules if m.split('.')[0] == 'shapes_world')
except Exception:
    report['import_error'] = traceback.format_exc()
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def fresh_python() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", FRESH_PYTHON], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_every_library_module_imports_nothing_of_shapes_world(fresh_python):
    assert "import_error" not in fresh_python, fresh_python["import_error"][-3000:]
    assert fresh_python["leaked"] == []
    assert fresh_python["modules"] > 30  # every module was imported


def test_the_builtin_names_work_without_loading_any_plugin(fresh_python):
    assert "builtin_error" not in fresh_python, fresh_python["builtin_error"][-3000:]
    assert fresh_python["builtin_leaked"] == []


def test_no_library_module_names_shapes_world_even_inside_a_function():
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            if any(module.split(".")[0] == "shapes_world" for module in modules):
                offenders.append(str(path.relative_to(LIBRARY)))
    assert not offenders
