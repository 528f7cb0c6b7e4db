from __future__ import annotations

import json

from typer.testing import CliRunner

from msaflow.commands.data import app

runner = CliRunner()


def test_synth_info_validate(tmp_path):
    out = tmp_path / "s"
    res = runner.invoke(app, ["synth", "--profile", "mosi", "--out", str(out), "--scale", "0.02"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["info", str(out), "--json"])
    info = json.loads(res.output)
    assert info["splits"]["train"] == 26 and info["modalities"]["audio"]["dim"] == 74
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0


def test_ingest_and_errors(tmp_path, mult_pickle):
    path, _ = mult_pickle
    res = runner.invoke(
        app, ["ingest", str(path), "--format", "mult", "--out", str(tmp_path / "m")]
    )
    assert res.exit_code == 0, res.output
    bad = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "manifest.json" in bad.output
    path.write_bytes(b"garbage")
    bad = runner.invoke(
        app, ["ingest", str(path), "--format", "mult", "--out", str(tmp_path / "m2")]
    )
    assert bad.exit_code == 2 and "pickle" in bad.output
