"""Move every reference to the project's packages under the ``msaflow`` namespace.

The repository keeps its top-level folders (``models/``, ``tasks/``, ``flows/``,
``feature_store/``); the wheel installs them as ``msaflow.models`` ... (``pyproject.toml``'s
``package-dir``), and a source checkout resolves them the same way (``msaflow/__init__.py``). This
script rewrites what names them as modules, and nothing else, so that it can be re-applied to a
newer tree:

* Python (every tracked ``*.py``), read with ``ast``:
  - ``from models.x import y`` -> ``from msaflow.models.x import y`` (absolute imports only);
  - ``import models`` -> ``from msaflow import models``; ``import tasks.x as t`` ->
    ``import msaflow.tasks.x as t``; ``import tasks.x`` -> ``import msaflow.tasks.x``, and the
    file's ``tasks.x...`` attribute chains -> ``msaflow.tasks.x...``;
  - a string literal that is a module path (``"flows.tune"``, ``"flows.pipeline:pipeline"``) or a
    bare package name passed to ``importlib.import_module`` / ``pytest.importorskip``;
  - ``python -m tasks.tune`` in comments and strings.
* Text (``TEXT_FILES``): dotted module paths (``tasks.run.train_task``,
  ``flows.pipeline:pipeline``), except ``# Copied from models.x.Y`` markers (relative to the
  package, read by path by ``tests/models/test_copies.py``) and file names (``tasks.py``).

Then ``ruff check --fix --select I`` and ``ruff format`` on the Python files it changed.

    python scripts/namespace_rewrite.py [--check]      # --check: list what would change
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NS = "msaflow"
BARE = ("models", "tasks", "flows", "feature_store")
# these name the bare packages on purpose (a user's own ``models/`` beside the installed msaflow)
SKIP = ("scripts/namespace_rewrite.py", "tests/test_packaging.py")
TEXT_FILES = (
    "README.md",
    "CONTRIBUTING.md",
    "RELIABILITY.md",
    "BENCHMARKS.md",
    "docs/scale-out.md",
    "docs/covarep_mapping.md",
    "prefect.yaml",
    "pyproject.toml",
    "Dockerfile",
)
_B = "|".join(BARE)
MODULE_STRING = re.compile(rf"^(?:{_B})(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?$")
DASH_M = re.compile(rf"(python3? -m )((?:{_B})\.)")
TEXT_PATH = re.compile(
    rf"(?<![\w./\-])(?:{_B})\.(?!(?:py|md|json|yaml|yml|png|csv|txt|toml)\b)[A-Za-z_]\w*"
)
IMPORT_CALLS = {"import_module", "importorskip", "__import__"}
# an import line of Python code held in a string (a ``python -c`` program, a module a test writes):
# ``from X... import`` (group 2: "from "), or ``import X.y [as z]`` alone on its line (group 3)
EMBEDDED_IMPORT = re.compile(
    rf"^([ \t]*)(?:(from[ \t]+)(?=(?:{_B})[.\w]*[ \t]+import[ \t])"
    rf"|import[ \t]+(?=((?:{_B})(?:\.\w+)*)([ \t]+as[ \t]+\w+)?[ \t]*(?:;|$)))",
    re.M,
)


def _offsets(text: str) -> list[int]:
    starts, pos = [0], 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        starts.append(pos)
    return starts


def _bare(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in BARE


def rewrite_python(text: str) -> str:
    tree = ast.parse(text)
    starts = _offsets(text)

    def at(lineno: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        line = text[starts[lineno - 1] : starts[lineno]]
        return starts[lineno - 1] + len(line.encode()[:col].decode())

    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    chains: set[str] = set()  # ``import tasks.train``: the file's ``tasks.train...`` chains
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and _bare(node.module):
            start = at(node.lineno, node.col_offset)
            m = re.compile(r"from\s+").match(text, start)
            assert m, text[start : start + 40]
            edits.append((m.end(), m.end(), f"{NS}."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not _bare(alias.name):
                    continue
                a = at(alias.lineno, alias.col_offset)
                if alias.asname or "." not in alias.name:
                    if "." not in alias.name and len(node.names) == 1:
                        # ``import models [as m]`` -> ``from msaflow import models [as m]``
                        s = at(node.lineno, node.col_offset)
                        edits.append((s, a, f"from {NS} import "))
                    else:
                        edits.append((a, a, f"{NS}."))
                else:
                    edits.append((a, a, f"{NS}."))
                    chains.add(alias.name)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and (MODULE_STRING.match(node.value) or _import_call_arg(tree, node))
        ):
            s, e = at(node.lineno, node.col_offset), at(node.end_lineno, node.end_col_offset)
            m = re.compile(r"[rRuU]?(['\"])").match(text, s)
            if m and text[m.end() : e - 1] == node.value:  # one plain literal, not concatenated
                edits.append((m.end(), m.end(), f"{NS}."))
    for node in ast.walk(tree):  # ``tasks.train.x`` after ``import tasks.train``
        if isinstance(node, ast.Attribute | ast.Name) and isinstance(
            getattr(node, "ctx", None), ast.Load
        ):
            dotted = _dotted(node)
            if dotted in chains:
                s = at(node.lineno, node.col_offset)
                edits.append((s, s, f"{NS}."))
    # ``python -m tasks.tune`` in comments and strings; import lines of code held in strings
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            base = starts[tok.start[0] - 1] + tok.start[1]  # tokenize counts characters
            for m in DASH_M.finditer(tok.string):
                edits.append((base + m.start(2), base + m.start(2), f"{NS}."))
        if tok.type == tokenize.STRING and not tok.string.lstrip("rRuU").startswith(("f", "b")):
            for m in EMBEDDED_IMPORT.finditer(tok.string):
                if m.group(2):  # from X import y -> from msaflow.X import y
                    edits.append((base + m.end(2), base + m.end(2), f"{NS}."))
                elif "." in m.group(3) or m.group(4):  # import X.y [as z] -> import msaflow.X.y
                    edits.append((base + m.end(), base + m.end(), f"{NS}."))
                else:  # import X -> from msaflow import X
                    edits.append((base + m.end(1), base + m.end(), f"from {NS} import "))
    return _apply(text, edits)


_PARENTS: dict[int, ast.AST] = {}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _import_call_arg(tree: ast.Module, node: ast.Constant) -> bool:
    """``importlib.import_module("feature_store")``, ``pytest.importorskip("models")``."""
    if node.value not in BARE and not MODULE_STRING.match(node.value):
        return False
    if not _PARENTS or id(tree) not in _PARENTS:
        _PARENTS.clear()
        _PARENTS[id(tree)] = tree
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                _PARENTS[id(child)] = parent
    call = _PARENTS.get(id(node))
    if not isinstance(call, ast.Call) or not call.args or call.args[0] is not node:
        return False
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in IMPORT_CALLS


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for start, end, new in sorted(set(edits)):
        assert start >= pos, "overlapping edits"
        out += [text[pos:start], new]
        pos = end
    return "".join(out + [text[pos:]])


def rewrite_text(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if "Copied from" in line:
            continue
        lines[i] = TEXT_PATH.sub(lambda m: f"{NS}.{m.group(0)}", line)
    return "".join(lines)


def tracked(pattern: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / p for p in out if p not in SKIP]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list what would change only")
    args = parser.parse_args(argv)
    changed_py: list[Path] = []
    changed: list[Path] = []
    for path in tracked("*.py"):
        old = path.read_text(encoding="utf-8")
        new = rewrite_python(old)
        if new != old:
            changed.append(path)
            changed_py.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for rel in TEXT_FILES:
        path = ROOT / rel
        if not path.is_file():
            continue
        old = path.read_text(encoding="utf-8")
        new = rewrite_text(old)
        if new != old:
            changed.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in changed:
        print(path.relative_to(ROOT))
    if changed_py and not args.check:
        files = [str(p) for p in changed_py]
        ruff = [sys.executable, "-m", "ruff"]
        subprocess.run([*ruff, "check", "--fix", "--select", "I", "-q", *files], cwd=ROOT)
        subprocess.run([*ruff, "format", "-q", *files], cwd=ROOT, check=True)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
