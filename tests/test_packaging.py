"""Installing msaflow claims one name in site-packages: ``msaflow``.

The repository keeps ``models/``, ``tasks/``, ``flows/`` and ``feature_store/`` at its top; the
wheel installs them as ``msaflow.models`` ... (``pyproject.toml``'s ``package-dir``) and a checkout
maps them the same way (``msaflow/__init__.py``). Importing a bare ``models`` as well as
``msaflow.models`` would load every module twice (two registries), so nothing in the project may
import the bare names. The last test (about 12 s) builds the wheel, installs it into a fresh venv
and imports it from a folder with its own ``models/`` and ``tasks/``, as a notebook's folder would
be.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import msaflow

ROOT = Path(__file__).resolve().parents[1]
BARE = msaflow.SUBPACKAGES  # ("models", "tasks", "flows", "feature_store")
PYTHON_DIRS = ("msaflow", *BARE, "tests", "bench", "scripts", "docker")
# these hold a user's bare ``models`` on purpose (a notebook's folder beside the installed msaflow)
ON_PURPOSE = {"tests/test_packaging.py", "scripts/namespace_rewrite.py"}
MODULE_STRING = re.compile(rf"^(?:{'|'.join(BARE)})(?:\.\w+)+(?::\w+)?$")
IMPORT_CALLS = {"import_module", "importorskip", "__import__"}


def _python_files() -> list[Path]:
    return sorted(
        p
        for d in PYTHON_DIRS
        for p in (ROOT / d).rglob("*.py")
        if "__pycache__" not in p.parts and "corpus" not in p.parts
    )


def bare_imports(source: str, embedded: bool = True) -> list[str]:
    """``import models``, ``from tasks.x import y``, ``import_module("flows.z")``,
    ``"-m", "tasks.tune"``: every way ``source`` could import a bare package name; with
    ``embedded``, also in the Python code its string literals hold (``python -c`` programs, a module
    a test writes)."""
    found: list[str] = []
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        if embedded:
            raise
        return found  # a string that is no program
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in BARE]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in BARE:
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func, arg = node.func, node.args[0].value
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in IMPORT_CALLS and str(arg).split(".")[0] in BARE:
                found.append(f"{name}({arg!r})")
        elif isinstance(node, ast.Constant) and MODULE_STRING.match(str(node.value)):
            found.append(repr(node.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and embedded:
            found += bare_imports(node.value, embedded=False)  # a program held in a string
    return found


def test_nothing_imports_a_bare_package_name():
    bad = {
        str(p.relative_to(ROOT)): found
        for p in _python_files()
        if str(p.relative_to(ROOT)) not in ON_PURPOSE
        and (found := bare_imports(p.read_text(encoding="utf-8")))
    }
    assert bad == {}, "import them as msaflow.<name> (scripts/namespace_rewrite.py)"


def test_the_check_catches_what_it_looks_for():
    source = (
        "import models\nimport tasks.train as t\nfrom flows.pipeline import pipeline\n"
        "from .x import y\nfrom msaflow.models import get_spec\nimport modelsx\n"
        "def f():\n    from feature_store import load_split\n"
        "importlib.import_module('models.mmafnet')\nargs = ['-m', 'tasks.tune']\n"
        "entry = 'flows.tune:tune'\nok = ['models/base.py', 'msaflow.tasks.tune', 'models']\n"
        "CODE = '''\n    import sys\n    import feature_store.parquet_io as s\n'''\n"
        "PROSE = 'import models: not a program'\n"
    )
    assert sorted(bare_imports(source)) == sorted(
        [
            "import models",
            "import tasks.train",
            "from flows.pipeline import ...",
            "from feature_store import ...",
            "import_module('models.mmafnet')",
            "'tasks.tune'",
            "'flows.tune:tune'",
            "'models.mmafnet'",  # the same literal, as a module path
            "import feature_store.parquet_io",  # in the program CODE holds
        ]
    )


def test_pyproject_maps_every_package():
    """Every package folder is in the wheel, under ``msaflow``; none is left at the top."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {f"msaflow.{name}": name for name in BARE}
    expected = set()
    for folder, prefix in [(name, "msaflow.") for name in BARE] + [("msaflow", "")]:
        for init in (ROOT / folder).rglob("__init__.py"):
            expected.add(prefix + ".".join(init.parent.relative_to(ROOT).parts))
    assert set(config["packages"]) == expected
    assert not any(p.split(".")[0] in BARE for p in config["packages"])


def test_a_checkout_maps_the_folders_into_msaflow():
    import msaflow.models

    if (Path(msaflow.__file__).parent / "models").exists():
        pytest.skip("msaflow is installed, not run from a checkout")
    assert Path(msaflow.models.__file__) == ROOT / "models" / "__init__.py"
    assert msaflow.models.get_spec("mmafnet").model_cls.__module__ == "msaflow.models.mmafnet"
    assert not [m for m in sys.modules if m.split(".")[0] in BARE], "a bare name was imported"


# ---------------------------------------------------------------------------------------- the wheel
USER_CODE = """
import json, sys
import models, tasks
assert (models.MINE, tasks.MINE) == (1, 2), "the folder's own packages come first"
import msaflow, msaflow.models
from msaflow.flows.serve import available_flows
from msaflow.tasks.policy import code_version
spec = msaflow.models.get_spec("mmafnet")
assert models.MINE == 1 and sys.modules["models"] is models
print(json.dumps({
    "msaflow": msaflow.__file__,
    "models": msaflow.models.__file__,
    "mine": models.__file__,
    "spec": spec.name,
    "model_module": spec.model_cls.__module__,
    "flows": sorted(available_flows()),
    "code_version": code_version(),
    "path": msaflow.__path__,
}))
"""


def _dependency_paths() -> list[str]:
    """This interpreter's site-packages (torch, prefect ...), never the checkout (``PYTHONPATH``).
    As plain paths: their ``.pth`` files (an editable msaflow's finder) are not run."""
    paths = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    return sorted({p for p in paths if Path(p).is_dir() and Path(p).resolve() != ROOT})


def test_the_wheel_installs_only_msaflow_and_imports_beside_a_models_folder(tmp_path):
    # build from a copy, so the checkout gets no build/ or egg-info
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("msaflow", *BARE):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("msaflow-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"msaflow", f"msaflow-{msaflow.__version__}.dist-info"}, tops

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # the heavy dependencies from this environment, after the venv's own site-packages
    (purelib / "_msaflow_test_deps.pth").write_text("\n".join(_dependency_paths()) + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
    )
    installed = {p.name for p in purelib.iterdir()}
    assert "msaflow" in installed
    assert not installed & set(BARE), sorted(installed & set(BARE))

    work = tmp_path / "notebooks"  # a researcher's folder with its own models/ and tasks/
    for name, value in (("models", 1), ("tasks", 2)):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"MINE = {value}\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("PYTEST_")
    }
    env.update(MSAFLOW_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")

    def run(*cmd: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    got = json.loads(run(str(python), "-c", USER_CODE).stdout.strip().splitlines()[-1])
    package = purelib / "msaflow"
    assert Path(got["msaflow"]) == package / "__init__.py"
    assert Path(got["models"]) == package / "models" / "__init__.py"
    assert Path(got["mine"]) == work / "models" / "__init__.py"
    assert got["path"] == [str(package)], "installed: no checkout root on msaflow's path"
    assert (got["spec"], got["model_module"]) == ("mmafnet", "msaflow.models.mmafnet")
    assert got["flows"] == ["pipeline", "reproduce", "tune"], "deployments resolve installed"
    from msaflow.tasks.policy import code_version

    assert got["code_version"] == code_version(), "the same sources hash the same, installed"

    msaflow_bin = str(venv / "bin" / "msaflow")
    assert "reproduce" in run(msaflow_bin, "--help").stdout
    models = json.loads(run(msaflow_bin, "models", "--json").stdout)
    assert "mmafnet" in json.dumps(models)
    worker = run(str(python), "-m", "msaflow.tasks.tune", "--help")  # the tune worker's module
    assert "--worker" in worker.stdout
