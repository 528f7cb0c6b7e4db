"""One model per file: a block copied from another model file is marked ``# Copied from models.X.Y``
on the line above it, and must stay identical to its source (this test fails when either drifts)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import textwrap
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "models"
MARK = re.compile(r"^\s*# Copied from (models\.[\w.]+)\s*$")


def _copies() -> list[tuple[str, int, str, str]]:
    found = []
    for path in sorted(MODELS.glob("*.py")):
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
                m = MARK.match(lines[start - 1]) if start else None
                if m:
                    body = textwrap.dedent("\n".join(lines[start : node.end_lineno]))
                    found.append((path.name, start, m.group(1), body))
    return found


def _source(dotted: str) -> str:
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return textwrap.dedent(inspect.getsource(obj)).rstrip()
    raise AssertionError(f"{dotted}: no such module")


def test_copied_blocks_match_their_source():
    copies = _copies()
    assert copies, "expected at least one '# Copied from' block in models/"
    for name, line, dotted, body in copies:
        assert body.rstrip() == _source(dotted), (
            f"models/{name}:{line + 1} has drifted from {dotted}"
        )
