"""Only the backbone adapters know their backbone: no library module outside `policy/` and `models/` names a Janus
class in its code (docstrings may mention them)."""

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "ranke_trl"


def _janus_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("Janus")}


def test_no_module_outside_the_adapters_names_a_janus_class():
    offenders = {}
    for path in LIBRARY.rglob("*.py"):
        relative = path.relative_to(LIBRARY)
        if relative.parts[0] in ("policy", "models"):
            continue
        names = _janus_names(path)
        if names:
            offenders[str(relative)] = sorted(names)
    assert not offenders, f"Janus classes named outside ranke_trl/policy/: {offenders}"
