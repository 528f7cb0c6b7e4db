from __future__ import annotations

from typer.testing import CliRunner

from feature_store.extract.cli import app


def test_help_lists_options():
    runner = CliRunner()
    res = runner.invoke(app, ["extract", "--help"])
    assert res.exit_code == 0
    for opt in ("--manifest", "--out", "--text-model", "--max-words", "--text-ids"):
        assert opt in res.output
    assert runner.invoke(app, ["mosi-text", "--help"]).exit_code == 0


def test_missing_manifest_is_a_clear_error(prefect_harness, tmp_path):
    res = CliRunner().invoke(app, ["extract", "--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "an existing CSV manifest" in res.output
    assert not (tmp_path / "o").exists()
