"""One model per file: a block copied from another model file is marked ``# Copied from models.X.Y``
on the line above it (above its decorators, if any), and must stay identical to its source; this
test fails when either side drifts.

``# Copied from models.X.Y with A->B`` (several: ``with A->B, C->D``) compares against the source
with every ``A`` replaced by ``B``, as transformers' ``utils/check_copies.py`` does. Both sides are
read with ``ast`` from the files (nothing is imported) and compared as source text, dedented: a
method may be copied into a class of another file.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "models"
ANY_MARK = re.compile(r"^\s*#\s*copied from\b", re.IGNORECASE)
MARK = re.compile(
    r"^\s*# Copied from models\.(?P<module>\w+)\.(?P<name>\w+(?:\.\w+)*)"
    r"(?: with (?P<renames>\w+->\w+(?:, \w+->\w+)*))?\s*$"
)


@dataclass(frozen=True)
class Copy:
    file: str  # models/<file>.py
    line: int  # 1-based line of the mark
    module: str  # source module under models/
    name: str  # dotted name in it: "f" or "Class.method"
    renames: tuple[tuple[str, str], ...]
    body: str  # the copy's source, dedented, without the mark


def _segment(lines: list[str], node: ast.FunctionDef | ast.ClassDef) -> str:
    """The node's source, decorators included, dedented."""
    start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    return textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno])).rstrip()


def _defs(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [n for n in ast.walk(tree) if isinstance(n, kinds)]


def find_copies(text: str, file: str) -> list[Copy]:
    """Every ``# Copied from`` mark in ``text``; a mark that is malformed or not directly above a
    function or class fails."""
    lines = text.splitlines()
    starts = {}
    for node in _defs(ast.parse(text)):
        first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        starts[first - 1] = node  # the line above it (1-based) is the mark's
    found = []
    for i, line in enumerate(lines, start=1):
        if not ANY_MARK.match(line):
            continue
        m = MARK.match(line)
        assert m, f"{file}:{i}: expected '# Copied from models.<file>.<name> [with A->B]'"
        node = starts.get(i)
        assert node is not None, f"{file}:{i}: the mark is not directly above a def or class"
        renames = tuple(
            tuple(pair.split("->")) for pair in (m["renames"] or "").split(", ") if pair
        )
        found.append(Copy(file, i, m["module"], m["name"], renames, _segment(lines, node)))
    return found


def source_of(text: str, dotted: str, where: str) -> str:
    """The source of ``dotted`` ("f", "Class.method") in a module's ``text``, dedented."""
    lines = text.splitlines()
    scope: list[ast.stmt] = ast.parse(text).body
    node = None
    for part in dotted.split("."):
        kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        node = next((n for n in scope if isinstance(n, kinds) and n.name == part), None)
        assert node is not None, f"{where}: no {dotted!r} to copy from"
        scope = node.body
    return _segment(lines, node)


def expected(copy: Copy, source: str) -> str:
    for old, new in copy.renames:
        source = source.replace(old, new)
    return source


def _all_copies() -> list[Copy]:
    return [
        c for path in sorted(MODELS.glob("*.py")) for c in find_copies(path.read_text(), path.name)
    ]


COPIES = _all_copies()


def test_there_are_copies_to_check():
    assert COPIES, "expected at least one '# Copied from' block in models/"


@pytest.mark.parametrize("copy", COPIES, ids=lambda c: f"{c.file}:{c.line}:{c.name}")
def test_copied_block_matches_its_source(copy: Copy):
    src_path = MODELS / f"{copy.module}.py"
    assert src_path.is_file(), f"models/{copy.file}:{copy.line}: no models/{copy.module}.py"
    assert copy.module != Path(copy.file).stem, f"models/{copy.file}:{copy.line}: copies itself"
    source = source_of(src_path.read_text(), copy.name, f"models/{copy.module}.py")
    assert copy.body == expected(copy, source), (
        f"models/{copy.file}:{copy.line} has drifted from models.{copy.module}.{copy.name}: "
        "change both, or drop the mark"
    )


# --------------------------------------------------------------------------------------------------
# The checker itself, on hand-made files
# --------------------------------------------------------------------------------------------------
SOURCE = """
def length_mask(lengths, T):
    return lengths < T


class A:
    @staticmethod
    def loss(x):
        return x + 1
"""


def _check(copy_text: str) -> list[bool]:
    return [
        c.body == expected(c, source_of(SOURCE, c.name, "src"))
        for c in find_copies(copy_text, "copy.py")
    ]


def test_the_checker_finds_identical_copies_renames_and_methods():
    copy_text = """
# Copied from models.src.length_mask
def length_mask(lengths, T):
    return lengths < T


# Copied from models.src.length_mask with length_mask->mask_of, T->steps
def mask_of(lengths, steps):
    return lengths < steps


class B:
    # Copied from models.src.A.loss
    @staticmethod
    def loss(x):
        return x + 1
"""
    assert _check(copy_text) == [True, True, True]
    assert [(c.line, c.name) for c in find_copies(copy_text, "copy.py")] == [
        (2, "length_mask"),
        (7, "length_mask"),
        (13, "A.loss"),
    ]


def test_the_checker_catches_drift_and_stray_marks():
    drifted = "# Copied from models.src.length_mask\ndef length_mask(lengths, T):\n    return T\n"
    assert _check(drifted) == [False]
    with pytest.raises(AssertionError, match="not directly above"):
        find_copies("# Copied from models.src.length_mask\n\ndef f():\n    pass\n", "copy.py")
    with pytest.raises(AssertionError, match="expected '# Copied from"):
        find_copies("# copied from src.length_mask\ndef f():\n    pass\n", "copy.py")
    with pytest.raises(AssertionError, match="no 'A.nope'"):
        source_of(SOURCE, "A.nope", "src")
