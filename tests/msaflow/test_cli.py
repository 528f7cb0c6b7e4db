"""The CLI's user-facing errors: a clear message and a non-zero exit, never a traceback."""

from typer.testing import CliRunner

from msaflow.cli import app

runner = CliRunner()


def test_help_everywhere():
    for args in (["--help"], ["run", "--help"], ["ui", "--help"], ["data", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)


def test_bad_data_path_is_a_clear_error(tmp_path, mlflow_uri):
    result = runner.invoke(app, ["run", "--data", str(tmp_path / "nope"), "--tracking-uri", mlflow_uri])
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
    result = runner.invoke(app, ["run", "--data", str(tiny_sim), "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "not usable" in result.output and "Traceback" not in result.output
