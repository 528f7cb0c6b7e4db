"""Every command in the README's ``bash`` code blocks runs here, at a tiny scale.

``RULES`` says how each command runs: as written, with ``~`` pointing at a temporary home holding
the files the README names (``~/data/MOSI/aligned_50.pkl``, ``utterances.csv`` ...), and with
tiny-scale flags appended where they apply (``--scale``, ``--epochs``, ``--trials``, ``--seeds``). A
README command that matches no rule fails ``test_every_readme_command_has_a_rule``: a command added
to the README without a passing run here fails the suite. The few that cannot run on this machine as
written (no Docker engine; the test command itself) are listed in ``NOT_RUN_HERE`` with the test
that covers them.

msaflow commands run in-process (typer's CliRunner) with the working directory set to a temporary
copy of the layout the README assumes (``.venv`` and ``experiments`` linked in, ``../shared/data``
beside it), so relative paths such as ``.msaflow/studies/...`` mean what they mean to a user.

Every ``python`` block (the notebook example of the Python API) runs too, as written except for
``PY_TINY``'s substitutions (``scale=``, ``epochs=``, ``seeds=`` of its calls), executed in-process
in the same temporary world (its own ``MSAFLOW_HOME`` and default MLflow store).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED = ROOT.parent / "shared"
TINY = ["--scale", "0.05", "--epochs", "1"]


def readme_commands(text: str | None = None) -> list[str]:
    """The commands of the README's bash blocks: comments dropped, continuation lines joined."""
    text = README.read_text() if text is None else text
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending = ""
        for line in block.splitlines():
            line = re.sub(
                r"(^|\s)#\s.*$", "", line
            ).rstrip()  # a comment starts with "# " after blank
            if not line.strip():
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            commands.append(" ".join((pending + line).split()))
            pending = ""
    return commands


def readme_python(text: str | None = None) -> list[str]:
    """The README's ``python`` code blocks, as written."""
    text = README.read_text() if text is None else text
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


# A python block runs at a tiny scale: the keyword arguments of its API calls, rewritten.
PY_TINY: tuple[tuple[str, str], ...] = (
    (r"\bscale=[\d.]+", "scale=0.05"),
    (r"\bepochs=\d+", "epochs=1"),
    (r"\bseeds=\[[^\]]*\]", "seeds=[1]"),
)
PY_JOBS = re.compile(r"\bmsaflow\.(run|reproduce|tune)\(")


def tiny_python(code: str) -> str:
    for pattern, repl in PY_TINY:
        code = re.sub(pattern, repl, code)
    return code


# ------------------------------------------------------------------------------ how each runs
@dataclass(frozen=True)
class Rule:
    pattern: str  # a regex the whole command must match
    extra: tuple[str, ...] = ()  # tiny-scale flags appended
    replace: tuple[tuple[str, str], ...] = ()  # (regex, replacement) applied to the command first
    slow: bool = False
    needs_shared: bool = False
    kind: str = "cli"  # cli: msaflow in-process; shell: bash in the work dir; ui: serve and probe


MSAFLOW = r"\.venv/bin/msaflow"
RULES: list[Rule] = [
    Rule(
        r"make run",
        kind="shell",
        slow=True,
        # -o: the world's .venv is the developer's own (a link), so its set-up is taken as done;
        # a pyproject.toml newer than the stamp once made this re-install msaflow from the
        # world's empty folder and broke that venv. CI's clean clone runs the set-up itself.
        replace=(
            (
                r"^make run$",
                'make -o .venv/.stamp-install run ARGS="--variants none --scale 0.05 --epochs 1"',
            ),
        ),
    ),
    Rule(rf"{MSAFLOW} --help"),
    Rule(rf"{MSAFLOW} run --variants none,full --seeds 1,2,3", extra=tuple(TINY)),
    Rule(rf"{MSAFLOW} run --preset paper", extra=(*TINY, "--variants", "full")),
    Rule(rf"{MSAFLOW} models"),
    Rule(rf"{MSAFLOW} run --model mmcl --data sim-iemocap", extra=(*TINY, "--variants", "full")),
    # 5 subject folds need at least 5 subjects: sim-cmdc has 10 at scale 0.15 (4 at 0.05)
    Rule(
        rf"{MSAFLOW} run --model mmcl --data sim-cmdc --folds 5",
        extra=("--scale", "0.15", "--epochs", "1", "--variants", "full"),
    ),
    Rule(rf"{MSAFLOW} run --workers 2", extra=(*TINY, "--variants", "none,full")),
    Rule(rf"{MSAFLOW} run --json > summary\.json", extra=(*TINY, "--variants", "none")),
    Rule(rf"{MSAFLOW} ui", kind="ui", slow=True),
    Rule(
        rf"{MSAFLOW} data ingest --format mmsa ~/data/MOSI/aligned_50\.pkl"
        r" --out ~/stores/mosi-aligned"
    ),
    Rule(
        rf"{MSAFLOW} run --data ~/stores/mosi-aligned",
        extra=("--epochs", "1", "--variants", "full"),
    ),
    Rule(
        rf"{MSAFLOW} run --data ~/data/MOSI/aligned_50\.pkl",
        extra=("--epochs", "1", "--variants", "full"),
    ),
    Rule(rf"{MSAFLOW} features extract --manifest utterances\.csv --out ~/stores/mine"),
    Rule(rf"{MSAFLOW} run --data utterances\.csv", extra=("--epochs", "1", "--variants", "full")),
    Rule(
        rf"{MSAFLOW} features mosi-text --csv \.\./shared/data/mosi_label\.csv"
        r" --out ~/stores/mosi-text",
        extra=("--limit", "40"),
        needs_shared=True,
    ),
    Rule(
        rf"{MSAFLOW} reproduce mmafnet-table2 --seeds 5",
        extra=(*TINY[:2], "--epochs", "2"),
        replace=((r"--seeds 5", "--seeds 2"),),
    ),
    Rule(
        rf"{MSAFLOW} reproduce mmafnet-table3", extra=(*TINY[:2], "--epochs", "2", "--seeds", "1")
    ),
    Rule(
        rf"{MSAFLOW} reproduce mmcl-table1 --data ~/stores/mosi-aligned",
        extra=("--epochs", "1", "--seeds", "1"),
    ),
    Rule(
        rf"{MSAFLOW} reproduce mmcl-table1 --data sim-iemocap"
        r" --params experiments/mmcl-iemocap\.yaml",
        extra=(*TINY, "--seeds", "1"),
    ),
    Rule(
        rf"{MSAFLOW} reproduce mmafnet-table1 --preset paper",
        extra=(*TINY, "--seeds", "1"),
    ),
    Rule(rf"{MSAFLOW} report --experiment <name>", replace=((r"<name>", "readme-report"),)),
    Rule(
        rf"{MSAFLOW} reproduce mmafnet-sgd-lr --data sim-mosi --preset paper --seeds 1",
        extra=("--scale", "0.05", "--epochs", "1"),
    ),
    Rule(
        rf"{MSAFLOW} reproduce mmafnet-table2 --data sim-mosi --preset paper-fast"
        r" --seeds 5 --workers 2",
        extra=("--scale", "0.05", "--epochs", "1"),
        replace=((r"--seeds 5", "--seeds 2"),),
    ),
    # the spec is replaced by one naming the experiment the README's `report --experiment` made
    Rule(
        rf"{MSAFLOW} report --evidence docs/results\.yaml --out docs/results\.md",
        replace=((r"docs/results\.yaml", "readme-evidence.yaml"),),
    ),
    Rule(
        rf"{MSAFLOW} tune --trials 30 --metric valid/mae",
        extra=(*TINY, "--eval-seeds", "1"),
        replace=((r"--trials 30", "--trials 2"),),
    ),
    Rule(
        rf"{MSAFLOW} tune --workers 2 --study mystudy",
        extra=(*TINY, "--trials", "2", "--eval-seeds", "none"),
        slow=True,
    ),
    Rule(
        rf"{MSAFLOW} run --params \.msaflow/studies/mystudy/best\.yaml",
        extra=(*TINY, "--variants", "full"),
    ),
    Rule(r"cp \.env\.example \.env && \$EDITOR \.env", kind="shell"),
    Rule(
        rf"{MSAFLOW} data ingest --format mmsa \.\./shared/data/mosi_bclstm_utterance\.pkl"
        r" --out ~/stores/mosi-bclstm",
        needs_shared=True,
    ),
    Rule(
        rf"{MSAFLOW} run --data ~/stores/mosi-bclstm --model unimodal --variants text,audio,vision",
        extra=("--epochs", "1"),
        needs_shared=True,
    ),
    Rule(
        rf"{MSAFLOW} run --data ~/stores/mosi-bclstm --model earlyfusion",
        extra=("--epochs", "1"),
        needs_shared=True,
    ),
    Rule(
        rf"{MSAFLOW} run --data ~/stores/mosi-bclstm --model mmafnet --seeds 1,2,3",
        extra=("--epochs", "1"),
        needs_shared=True,
    ),
    Rule(rf"{MSAFLOW} run", extra=(*TINY, "--variants", "none")),
]
NOT_RUN_HERE = {
    "make test": "the command running this suite (CI's .ci/run calls it)",
    "docker compose up -d --build": (
        "no Docker engine here: tests/test_compose.py validates the file "
        "with docker-compose config and its services run as processes in "
        "tests/flows/test_serve.py"
    ),
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 PREFECT_API_URL=http://127.0.0.1:4200/api": (
        "points at the compose stack (above); a real MLflow and Prefect server on 127.0.0.1 are "
        "tested in tests/flows/test_serve.py and tests/msaflow/test_mlflow_ui.py"
    ),
    "export PREFECT_API_AUTH_STRING='admin:<the value in .env>'": (
        "the compose stack's Prefect credentials; the auth wrapper is tested in "
        "tests/test_compose.py"
    ),
}


def rule_for(command: str) -> Rule | None:
    return next((r for r in RULES if re.fullmatch(r.pattern, command)), None)


def test_readme_has_commands():
    assert len(readme_commands()) >= 10


def test_every_readme_command_has_a_rule():
    missing = [c for c in readme_commands() if c not in NOT_RUN_HERE and rule_for(c) is None]
    assert not missing, f"README commands with no run in tests/test_readme.py: {missing}"


def test_parser_joins_and_strips():
    text = (
        "```bash\nfoo --a 1 \\\n  --b 2   # a comment\n# only a comment\nbar\n```\n"
        "```yaml\nx: 1\n```"
    )
    assert readme_commands(text) == ["foo --a 1 --b 2", "bar"]


def test_python_blocks_are_found_and_made_tiny():
    text = "```python\nimport msaflow\nmsaflow.run(scale=0.2, seeds=[1, 2], epochs=5)\n```\n"
    [block] = readme_python(text)
    assert tiny_python(block) == "import msaflow\nmsaflow.run(scale=0.05, seeds=[1], epochs=1)\n"
    assert readme_python(), "the README shows the Python API"
    for block in readme_python():  # every job an example starts runs for one epoch here
        if PY_JOBS.search(block):
            assert "epochs=" in block, "a python example's jobs need an epochs= the test can shrink"


# ------------------------------------------------------------------------- the README's world
def _mmsa_pickle(path: Path, seed: int = 0) -> None:
    """A tiny MMSA-format aligned pickle (float64 audio/vision as MMSA ships them)."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", 24), ("valid", 8), ("test", 8)):
        labels = np.round(rng.uniform(-3, 3, n), 1)
        data[split] = {
            "id": np.array([f"vid{split}{i // 4}$_${i % 4}" for i in range(n)]),
            "raw_text": np.array(["a short utterance"] * n),
            "text": rng.normal(size=(n, 6, 16)).astype(np.float32),
            "audio": rng.normal(size=(n, 6, 5)),
            "vision": rng.normal(size=(n, 6, 7)),
            "regression_labels": labels.astype(np.float32),
            "classification_labels": (np.sign(labels) + 1).astype(np.float32),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data, protocol=4))


def _raw_manifest(workdir: Path) -> None:
    """utterances.csv with real WAV tones and OpenFace-style CSVs, as `features extract` reads
    them."""
    import soundfile as sf

    from msaflow.feature_store.extract.visual import OPENFACE_COLUMNS

    raw = workdir / "raw"
    raw.mkdir()
    rows = ["id,text,audio_path,visual_path,label,split"]
    for i in range(12):
        sr, seconds = 16000, 0.5
        t = np.arange(int(sr * seconds)) / sr
        sf.write(
            str(raw / f"u{i}.wav"),
            (0.4 * np.sin(2 * np.pi * (150 + 10 * i) * t)).astype(np.float32),
            sr,
        )
        cols = ["frame", "face_id", "timestamp", "confidence", "success", *OPENFACE_COLUMNS]
        lines = [", ".join(cols)]
        for f in range(15):
            lines.append(
                ", ".join(
                    [str(f + 1), "0", f"{f / 30:.3f}", "0.98", "1"]
                    + [f"{0.01 * (f + i):.3f}"] * len(OPENFACE_COLUMNS)
                )
            )
        (raw / f"u{i}.csv").write_text("\n".join(lines) + "\n")
        split = "train" if i < 8 else ("valid" if i < 10 else "test")
        rows.append(
            f"u{i},this is utterance number {i},raw/u{i}.wav,raw/u{i}.csv,{(i % 7) - 3},{split}"
        )
    (workdir / "utterances.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A user's machine: $HOME with the README's files, a checkout-like work dir, its own
    MSAFLOW_HOME."""
    base = tmp_path_factory.mktemp("readme")
    home, workdir = base / "home", base / "work"
    home.mkdir()
    workdir.mkdir()
    (workdir / ".venv").symlink_to(ROOT / ".venv")
    for name in ("experiments", "Makefile", "pyproject.toml", "scripts", "docker-compose.yml"):
        (workdir / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / ".env.example", workdir / ".env.example")
    if SHARED.is_dir():
        (base / "shared").symlink_to(SHARED)
    _mmsa_pickle(home / "data" / "MOSI" / "aligned_50.pkl")
    _raw_manifest(workdir)
    env = {"HOME": str(home), "MSAFLOW_HOME": str(workdir / ".msaflow"), "EDITOR": "true"}
    return {"home": home, "workdir": workdir, "env": env}


@pytest.fixture
def in_world(world, monkeypatch, mlflow_uri):
    monkeypatch.chdir(world["workdir"])
    for key, value in world["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the README's default store
    import mlflow

    mlflow.set_tracking_uri(None)
    return world


def _expand(token: str, env: dict[str, str]) -> str:
    if token.startswith("~"):
        token = env["HOME"] + token[1:]
    return os.path.expandvars(token)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_readme_command(command: str, world: dict) -> None:
    rule = rule_for(command)
    assert rule is not None, command
    for pattern, repl in rule.replace:
        command = re.sub(pattern, repl, command)
    env = {**os.environ, **world["env"]}
    if rule.kind == "shell":
        proc = subprocess.run(
            ["bash", "-c", command + " " + " ".join(map(shlex.quote, rule.extra))],
            cwd=world["workdir"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, (command, proc.stdout[-3000:], proc.stderr[-3000:])
        return
    if rule.kind == "ui":
        port = _free_port()
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/msaflow"), "ui", "--port", str(port)],
            cwd=world["workdir"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    time.sleep(1)
            pytest.fail("msaflow ui did not answer within 120 s")
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    from msaflow.cli import app

    stdout_file = None
    if " > " in command:
        command, stdout_file = (part.strip() for part in command.split(" > ", 1))
    tokens = [_expand(t, env) for t in shlex.split(command)][1:] + list(
        rule.extra
    )  # drop .venv/bin/msaflow
    result = CliRunner().invoke(app, tokens)
    assert result.exit_code == 0, (command, tokens, result.output[-4000:], repr(result.exception))
    if stdout_file:
        Path(stdout_file).write_text(result.stdout)
        json.loads(result.stdout)  # --json on stdout is plain JSON


def _params():
    cases = []
    for c in readme_commands():
        rule = rule_for(c)
        if rule is None or c in NOT_RUN_HERE:
            continue
        marks = [pytest.mark.slow] if rule.slow else []
        cases.append(pytest.param(c, rule, marks=marks, id=c.replace(".venv/bin/", "")[:70]))
    return cases


@pytest.mark.parametrize(("command", "rule"), _params())
def test_readme_command_runs(command, rule, in_world, prefect_harness):
    if rule.needs_shared and not (SHARED / "data").is_dir():
        pytest.skip(f"needs {SHARED / 'data'}")
    if "report --evidence" in command:  # a one-section spec over a tiny reproduction
        from msaflow.cli import app

        made = CliRunner().invoke(
            app,
            [
                "reproduce",
                "mmafnet-table2",
                "--seeds",
                "2",
                *TINY,
                "--experiment",
                "readme-evidence",
            ],
        )
        assert made.exit_code == 0, made.output[-3000:]
        (in_world["workdir"] / "readme-evidence.yaml").write_text(
            "title: README evidence\nsections:\n"
            "  - {experiment: readme-evidence, title: Table 2}\n",
            encoding="utf-8",
        )
    if "report --experiment" in command:  # the report reads an experiment the README made earlier
        from msaflow.cli import app

        made = CliRunner().invoke(
            app,
            ["reproduce", "mmafnet-table2", "--seeds", "1", *TINY, "--experiment", "readme-report"],
        )
        assert made.exit_code == 0, made.output[-3000:]
    if "run --params .msaflow/studies/mystudy/best.yaml" in command:
        study = in_world["workdir"] / ".msaflow/studies/mystudy/best.yaml"
        if (
            not study.is_file()
        ):  # written by the README's `tune --study mystudy` (slow): make it here
            from msaflow.cli import app

            made = CliRunner().invoke(
                app, ["tune", "--study", "mystudy", "--trials", "1", *TINY, "--eval-seeds", "none"]
            )
            assert made.exit_code == 0, made.output[-3000:]
    store = re.search(r"--data ~/(stores/[\w.-]+)", command)
    if store and not (in_world["home"] / store.group(1)).exists():  # the README's ingest runs first
        ingest = next(c for c in readme_commands() if f"--out ~/{store.group(1)}" in c)
        run_readme_command(ingest, in_world)
    run_readme_command(command, in_world)
    if "report --evidence" in command:
        assert "## Table 2" in (in_world["workdir"] / "docs" / "results.md").read_text(
            encoding="utf-8"
        )
    if command.endswith("> summary.json"):
        summary = json.loads((in_world["workdir"] / "summary.json").read_text())
        assert summary["runs"] and all("test" in r for r in summary["runs"])


@pytest.mark.parametrize(
    "code", [pytest.param(b, id=f"python-block-{i}") for i, b in enumerate(readme_python())]
)
def test_readme_python_block_runs(code, in_world, prefect_harness):
    """The notebook example, executed as a notebook would (``import msaflow`` first), tiny."""
    from msaflow.api import RunResult

    namespace: dict = {"__name__": "__readme__"}
    exec(compile(tiny_python(code), "README.md (python block)", "exec"), namespace)
    results = [v for v in namespace.values() if isinstance(v, RunResult)]
    assert all(r.ok and r.rows for r in results), [r.failures for r in results]
    assert all(r.tracking_uri.startswith("sqlite:") for r in results)
    assert all(str(in_world["workdir"]) in r.tracking_uri for r in results), (
        "the default store lives in the world's MSAFLOW_HOME"
    )
