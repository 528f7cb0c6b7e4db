"""The CLI's user-facing errors: a clear message and a non-zero exit, never a traceback."""

import json

import pytest
from typer.testing import CliRunner

from msaflow.cli import app

runner = CliRunner()


def test_help_everywhere():
    for args in (["--help"], ["run", "--help"], ["ui", "--help"], ["data", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)


def test_bad_data_path_is_a_clear_error(tmp_path, mlflow_uri):
    result = runner.invoke(
        app, ["run", "--data", str(tmp_path / "nope"), "--tracking-uri", mlflow_uri]
    )
    assert result.exit_code == 2
    assert "nope" in result.output and "Traceback" not in result.output


def test_corrupt_store_is_a_clear_error(tmp_path, mlflow_uri):
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text("{not json")
    result = runner.invoke(app, ["run", "--data", str(store), "--tracking-uri", mlflow_uri])
    assert result.exit_code == 2
    assert "manifest.json" in result.output and "Traceback" not in result.output


def test_unreachable_tracking_server_fails_before_training(tiny_sim):
    result = runner.invoke(
        app, ["run", "--data", str(tiny_sim), "--tracking-uri", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 2
    assert "not usable" in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------- commands are all there (14.11)


def test_every_documented_subcommand_is_mounted():
    """``_mount`` swallowed ImportError: a sub-command whose module failed to import vanished."""
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {
        line.split()[1]
        for line in result.output.splitlines()
        if line.startswith("│ ") and len(line.split()) > 1
    }
    assert {"data", "features", "run", "tune", "reproduce", "report", "serve", "ui"} <= listed, (
        listed
    )


def test_an_import_error_in_a_subcommand_shows():
    from msaflow.cli import _mount, _register

    with pytest.raises(ImportError, match="no_such_module"):
        _mount("no_such_module", "nope", "")
    with pytest.raises(ImportError, match="no_such_command"):
        _register("no_such_command")


# ------------------------------------------------------------- user errors before any flow (14.9)


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


BAD_INPUT = [
    (["run", "--seeds", "a,b"], ["--seeds", "'a,b'"]),
    (["run", "--variants", "nope"], ["--variants", "nope", "sgm_ipr"]),
    (["run", "--model", "nope"], ["--model", "nope", "mmcl"]),
    (["run", "--preset", "nope"], ["--preset", "nope", "quick"]),
    (["run", "--folds", "1"], ["--folds", "k >= 2"]),
    (["run", "--data", "sim-nope"], ["sim-nope", "--data", "mosi"]),
    (["run", "--params", "{params}"], ["{params}", "nope"]),
    (["run", "--params", "{missing}"], ["{missing}", "not found"]),
    (["reproduce", "mmcl-table1", "--params", "{params}"], ["{params}", "nope"]),
    (["tune", "--storage", "nosuchdb://x/y"], ["--storage", "cannot open the Optuna storage"]),
    (["tune", "--eval-seeds", "x"], ["--eval-seeds", "'x'"]),
    (["tune", "--preset", "nope"], ["--preset", "nope"]),
]


@pytest.mark.usefixtures("prefect_harness")  # a configured server: no early server start per call
@pytest.mark.parametrize("args, words", BAD_INPUT, ids=[" ".join(a[:2]) for a, _ in BAD_INPUT])
def test_bad_input_is_one_error_line_before_anything_runs(args, words, tmp_path):
    """Each ended in the right ``error:`` line, but after 40-110 lines of Prefect traceback."""
    params = tmp_path / "params.yaml"
    params.write_text("model: {nope: 1}\n")
    subs = {"{params}": str(params), "{missing}": str(tmp_path / "missing.yaml")}
    store = tmp_path / "mlflow.db"
    args = [subs.get(a, a) for a in args]
    result = runner.invoke(app, [*args, "--tracking-uri", f"sqlite:///{store}", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    for word in words:
        assert subs.get(word, word) in line, line
    assert not store.exists(), "nothing ran: the tracking store was never opened"


RAW_COMMANDS = [["run"], ["tune"], ["reproduce", "mmcl-table1"]]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("command", RAW_COMMANDS, ids=[c[0] for c in RAW_COMMANDS])
def test_raw_manifest_without_a_usable_row_is_one_error_line(command, tmp_path):
    """``--data utterances.csv`` goes through the one data resolver of run, tune and reproduce
    (15.5): rows whose files are missing or whose label is bad leave nothing to extract -> exit 2,
    one line."""
    manifest = tmp_path / "utterances.csv"
    manifest.write_text(
        "id,text,audio_path,visual_path,label,split\n"
        "u0,hello there,raw/u0.wav,raw/u0.csv,1,train\n"
        "u1,hello again,raw/u1.wav,raw/u1.csv,inf,test\n"
    )
    store = tmp_path / "mlflow.db"
    result = runner.invoke(
        app,
        [
            *command,
            "--data",
            str(manifest),
            "--tracking-uri",
            f"sqlite:///{store}",
            "--epochs",
            "1",
        ],
    )
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert (
        str(manifest) in line and "usable utterance" in line and "u0" in line and "label" in line
    ), line
    assert not store.exists(), "nothing ran: the tracking store was never opened"


# ------------------------------------------------------------ a user error inside a flow (14.9)


@pytest.mark.usefixtures("prefect_harness")
def test_a_user_error_inside_a_flow_prints_no_prefect_traceback(tiny_sim, tmp_path):
    """A store whose manifest reads but whose file changed fails inside the prepare-data task.

    Before: Prefect logged the task's and the flow's traceback (84 lines) above the ``error:`` line.
    A real process, on the session's Prefect server (so it starts none of its own).
    """
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from prefect.settings import PREFECT_API_URL

    store = tmp_path / "store"
    shutil.copytree(tiny_sim, store)
    part = store / "test.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the full check in the task sees it
    part.write_bytes(bytes(data))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "msaflow.cli",
            "run",
            "--data",
            str(store),
            "--epochs",
            "1",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "test.parquet" in errors[0] and "sha256" in errors[0], proc.stderr


# ------------------------------------------------------------------- --json and markup (13.8)


@pytest.mark.usefixtures("prefect_harness")
def test_json_is_plain_and_names_are_never_markup(tiny_sim, tmp_path):
    """``--json`` went through rich (markup consumed, lines wrapped at 80 columns), and a name
    such as ``[/]evil`` crashed the table (rich MarkupError)."""
    import json
    import shutil

    evil = "[/]evil[bold]" + "x" * 120  # markup, and longer than any terminal line
    store = tmp_path / "[red]store"
    shutil.copytree(tiny_sim, store)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["name"] = evil
    (store / "manifest.json").write_text(json.dumps(manifest))
    args = [
        "run",
        "--data",
        str(store),
        "--variants",
        "none",
        "--epochs",
        "1",
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--experiment",
        "[b]exp",
    ]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert summary["dataset"] == evil and len(summary["runs"]) == 1

    table = runner.invoke(app, args)  # from the cache: the table and hint print the names as text
    assert table.exit_code == 0, table.output
    assert "[/]evil[bold]" in table.output and "MarkupError" not in table.output


def test_models_lists_every_registered_model_with_its_tables():
    import json

    from msaflow.models import registry

    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.output)}
    assert set(rows) == set(registry())
    assert {"tfn", "lmf", "mult", "misa", "self_mm", "mmafnet", "mmcl"} <= set(rows)
    assert "mmafnet-table1" in rows["mmafnet"]["tables"]
    assert "mmsa" in rows["mult"]["presets"] and "full" in rows["misa"]["variants"]


def test_the_run_table_prints_a_failure_message_whole(capsys):
    """A run's failure is printed whole under the table (once cut to 60 characters), with where
    its traceback is."""
    from msaflow.cli import print_rows

    cause = "ValueError: " + "a long explanation of what went wrong " * 4 + "END"
    result = {
        "dataset": {"task": "sentiment", "name": "sim", "source": "simulation"},
        "rows": [],
        "failures": [{"run_name": "mmafnet/full/seed1", "error": cause}],
    }
    print_rows(result, "pipeline")
    printed = " ".join(capsys.readouterr().out.split())
    assert " ".join(cause.split()) in printed and "error.txt" in printed


# ---------------------------------------------------------------- the Prefect UI's records


def test_a_run_without_a_prefect_server_is_recorded_under_msaflow_home(tiny_sim, tmp_path):
    """README, "The Prefect UI": without PREFECT_API_URL, a ``msaflow run`` leaves its flow run,
    task runs (named per cell and seed), epoch log lines and artifacts in
    ``$MSAFLOW_HOME/prefect/prefect.db``, which a Prefect server started over it shows. A real
    process with its own home; the database is read directly, as that server would."""
    import os
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    home = tmp_path / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_")) and k != "MSAFLOW_HOME"
    }
    env.update(MSAFLOW_HOME=str(home), PYTHONPATH=str(root))
    proc = subprocess.run(
        [sys.executable, "-m", "msaflow.cli", "run", "--data", str(tiny_sim), "--epochs", "1"]
        + ["--variants", "none", "--experiment", "prefect-ui"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = home / "prefect" / "prefect.db"
    assert db.is_file()
    con = sqlite3.connect(db)
    try:
        flows = {r[0] for r in con.execute("SELECT name FROM flow")}
        tasks = {r[0] for r in con.execute("SELECT name FROM task_run")}
        keys = {r[0] for r in con.execute("SELECT key FROM artifact")}
        logs = [r[0] for r in con.execute("SELECT message FROM log")]
        tags = con.execute(
            "SELECT tags FROM task_run WHERE name = 'train-mmafnet-none-seed1'"
        ).fetchone()
    finally:
        con.close()
    assert "pipeline" in flows
    assert {"train-mmafnet-none-seed1", "evaluate-mmafnet-none-seed1"} <= tasks, tasks
    assert any(t.startswith("prepare-data") for t in tasks), tasks
    assert "msaflow-summary-prefect-ui" in keys, keys
    assert any("[mmafnet/none/seed1] epoch 1/1" in m for m in logs), logs[:20]
    assert tags is not None and {"model:mmafnet", "variant:none", "seed:1"} <= set(
        json.loads(tags[0])
    )
