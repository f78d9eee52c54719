"""Layers go one way: `ranke_trl` imports nothing of ShapesWorld, which sits on top of it as a plugin."""

import ast
import os
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "ranke_trl"


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)


def test_importing_every_library_module_imports_nothing_of_shapes_world():
    result = _fresh_python(
        "import importlib, pkgutil, sys\n"
        "import ranke_trl\n"
        "names = [m.name for m in pkgutil.walk_packages(ranke_trl.__path__, 'ranke_trl.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'shapes_world')\n"
        "assert not leaked, leaked\n"
        "print(len(names))\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 30  # every module was imported


def test_the_builtin_names_work_without_loading_any_plugin():
    result = _fresh_python(
        "import sys\n"
        "from ranke_trl.data import open_dataset\n"
        "from ranke_trl.evaluation.eval_sets import get_prompt_set\n"
        "from ranke_trl.rewards import load_reward\n"
        "assert len(open_dataset('tiny', num_rows=4)) == 4\n"
        "get_prompt_set('dataset'); load_reward('tiny_clip')\n"
        "assert 'shapes_world' not in sys.modules\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]


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
