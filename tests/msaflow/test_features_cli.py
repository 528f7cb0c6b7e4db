from __future__ import annotations

from typer.testing import CliRunner

from msaflow.commands.features import app


def test_help_lists_options():
    runner = CliRunner()
    res = runner.invoke(app, ["extract", "--help"])
    assert res.exit_code == 0
    for opt in (
        "--manifest",
        "--out",
        "--text-model",
        "--max-words",
        "--text-ids",
        "--visual-profile",
        "--force",
        "--json",
    ):
        assert opt in res.output
    assert runner.invoke(app, ["mosi-text", "--help"]).exit_code == 0


def test_missing_manifest_is_a_clear_error(prefect_harness, tmp_path):
    res = CliRunner().invoke(
        app, ["extract", "--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2
    assert "an existing CSV manifest" in res.output
    assert not (tmp_path / "o").exists()


def _visual_manifest(tmp_path, ids: list[str], labels: list[object]) -> str:
    import pandas as pd

    from tests.feature_store.extract.conftest import write_openface

    rows = [
        {
            "id": uid,
            "visual_path": str(write_openface(tmp_path / f"[red]{i}.csv", 0.3)),
            "label": label,
            "split": "train",
        }
        for i, (uid, label) in enumerate(zip(ids, labels, strict=True))
    ]
    path = tmp_path / "m.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_json_is_plain_and_user_strings_are_not_markup(prefect_harness, tmp_path):
    import json

    manifest = _visual_manifest(
        tmp_path, ["[bold]a[/bold]", "[/]evil", "b" * 150], [0.5, "nan", 1.0]
    )
    out = tmp_path / ("[bold]store-" + "x" * 120)
    res = CliRunner().invoke(app, ["extract", "--manifest", manifest, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # one plain JSON document, however long
    assert data["out"] == str(out.resolve()) and data["splits"] == {"train": 2}
    assert [f["id"] for f in data["failures"]] == ["[/]evil"]
    res = CliRunner().invoke(app, ["extract", "--manifest", manifest, "--out", str(out)])
    assert res.exit_code == 0, res.output  # "[/]" no longer crashes rich
    assert "[/]evil" in res.stderr and str(out.resolve()) in res.stdout.replace("\n", "")


def test_out_refuses_a_foreign_folder_unless_force(prefect_harness, tmp_path):
    manifest = _visual_manifest(tmp_path, ["a", "b"], [0.5, 1.0])
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "chapter1.tex").write_text("precious")
    res = CliRunner().invoke(app, ["extract", "--manifest", manifest, "--out", str(target)])
    assert res.exit_code == 2 and "--force" in res.stderr and str(target) in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert sorted(p.name for p in target.iterdir()) == ["chapter1.tex"]
    res = CliRunner().invoke(
        app, ["extract", "--manifest", manifest, "--out", str(target), "--force"]
    )
    assert res.exit_code == 0, res.output
    assert (target / "chapter1.tex").read_text() == "precious" and (
        target / "manifest.json"
    ).is_file()


def test_unknown_visual_profile_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "extract",
            "--manifest",
            "m.csv",
            "--out",
            str(tmp_path / "o"),
            "--visual-profile",
            "everything",
        ],
    )
    assert res.exit_code == 2 and "openface-aus" in res.output


def test_visual_files_with_different_columns_exit_2_naming_both(prefect_harness, tmp_path):
    import pandas as pd

    from tests.feature_store.extract.conftest import write_openface

    full = write_openface(tmp_path / "full.csv", 0.3)
    part = write_openface(tmp_path / "no_gaze.csv", 0.3, drop=("gaze_0_x", "gaze_angle_y"))
    pd.DataFrame(
        [
            {"id": "a", "visual_path": str(full), "label": 0, "split": "train"},
            {"id": "b", "visual_path": str(full), "label": 0, "split": "train"},
            {"id": "c", "visual_path": str(part), "label": 0, "split": "train"},
        ]
    ).to_csv(tmp_path / "m.csv")
    res = CliRunner().invoke(
        app, ["extract", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "Traceback" not in res.output
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(part) in line and str(full) in line
    assert "lacks 2: gaze_0_x, gaze_angle_y" in line and not (tmp_path / "o").exists()
