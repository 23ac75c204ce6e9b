"""The use cases know backends only by their protocol: nothing backend-specific above
backends/ (a rule a backend shares with Concordia lives in core, or in backends/base.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import concordia.logic

LOGIC = Path(concordia.logic.__file__).parent


def test_logic_imports_of_the_backends_only_their_protocol() -> None:
    found: list[str] = []
    for path in sorted(LOGIC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules = [node.module]
            else:
                continue
            found += [
                f"{path.name}: {module}"
                for module in modules
                if module.startswith("concordia.backends") and module != "concordia.backends.base"
            ]
    assert found == []
