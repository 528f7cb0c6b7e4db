"""The evidence document: a tiny reproduction and a tiny study in real MLflow/Prefect/Optuna, then
``msaflow report --evidence`` from MLflow alone; and the spec's errors."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from msaflow.cli import app
from msaflow.flows.reproduce import TableSpec, reproduce
from msaflow.flows.tune import tune
from msaflow.models.spec import Cell
from msaflow.tasks.checks import TABLES
from msaflow.tasks.evidence import EvidenceError, read_spec, selection_rows

TINY = TableSpec(
    model="mmafnet",
    cells=(Cell("none", "none"), Cell("full", "full")),
    baseline="none",
    paper="mmafnet-table2",
    description="two rows of Table 2",
)


@pytest.fixture(scope="module")
def evidence(tiny_sim, tmp_path_factory, prefect_harness):
    tmp = tmp_path_factory.mktemp("evidence")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TABLES, "tiny-evidence", TINY)
        reproduce(
            "tiny-evidence",
            data=str(tiny_sim),
            seeds=2,
            epochs=2,
            tracking_uri=uri,
            experiment="ev-t2",
            out=str(tmp / "r" / "report.md"),
        )
    tune(
        data=str(tiny_sim),
        epochs=2,
        n_trials=2,
        storage=f"sqlite:///{tmp / 'optuna.db'}",
        study="ev",
        sampler="random",
        tracking_uri=uri,
        experiment="ev-tune",
        eval_seeds=[1, 2],
        out=str(tmp / "best.yaml"),
    )
    spec = tmp / "results.yaml"
    spec.write_text(
        "title: Evidence test\nintro: Why.\nconclusions: What the numbers say.\n"
        "setup: [make setup]\nmachine: test\nsections:\n"
        "  - {experiment: ev-t2, title: Table two, command: msaflow reproduce tiny}\n"
        "  - {experiment: ev-t2, title: Choosing, kind: select}\n"
        "  - {experiment: ev-tune, title: Tuning, kind: tune, compare_experiment: ev-t2,"
        " compare_cell: full}\n",
        encoding="utf-8",
    )
    out = tmp / "docs" / "results.md"
    result = CliRunner().invoke(
        app, ["report", "--evidence", str(spec), "--out", str(out), "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    return {"md": out.read_text(encoding="utf-8"), "out": out, "uri": uri, "spec": spec}


def test_the_document_has_every_part(evidence):
    md = evidence["md"]
    for part in (
        "# Evidence test",
        "## Headline: each module against its baseline",
        "## Conclusions",
        "## Table two",
        "### Mechanisms, from the traces",
        "### IPR's φ per epoch",
        "## Tuning",
        "The tuned params on test",
        "## Regenerating this document",
        "```bash\nmsaflow reproduce tiny\n```",
        "p (Holm)",
        "Against the simulation's oracle",
        "NOT CMU-MOSI",
    ):
        assert part in md, part
    assert "| Table two | sim-mosi-x0.05 (simulation) | full vs none | 2 | mae |" in md
    assert "| Tuning | sim-mosi-x0.05 | tuned vs paper values | 2 |" in md


def test_figures_are_written_beside_it_and_linked_from_the_html(evidence):
    folder = evidence["out"].parent / "results"
    names = {p.name for p in folder.glob("*.png")}
    assert {
        "ev-t2-reproduce-metrics.png",
        "ev-t2-reproduce-curves.png",
        "ev-t2-reproduce-traces_sgm.png",
    } <= names
    assert "](results/ev-t2-reproduce-curves.png)" in evidence["md"]
    assert evidence["md"].count("data:image") == 0
    html = evidence["out"].with_suffix(".html").read_text()
    assert 'src="results/ev-t2-reproduce-curves.png"' in html and "data:image" not in html


def test_the_selection_uses_validation_only(evidence):
    md = evidence["md"]
    assert "### The choice, on valid/mae only" in md and "Chosen: **" in md


def test_selection_rule_by_hand():
    from types import SimpleNamespace

    r = SimpleNamespace(
        curve_metric="valid/mae",
        cells=["a", "b"],
        curves={
            "a": {0: [1.0, 0.9], 1: [0.8, 1.0]},  # seed bests 0.8, 0.9
            "b": {0: [0.7, 1.2], 1: [0.95, 1.1]},
        },
    )  # seed bests 0.7, 1.1
    rows, winner = selection_rows(r)
    assert winner == "a"  # 0.85 < 0.90
    assert [row["chosen"] for row in rows] == ["←", ""]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("title: x\n", "'sections'"),
        ("sections: [{title: no experiment}]\n", "'sections[0].experiment'"),
        ("sections: [{experiment: e, colour: red}]\n", "'sections[0]'"),
        ("sections: [{experiment: e, kind: plot}]\n", "'sections[0].kind'"),
    ],
)
def test_a_bad_spec_names_the_file_and_the_field(tmp_path, text, field):
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EvidenceError, match=re.escape(f"{path}: field {field}")):
        read_spec(path)
    result = CliRunner().invoke(
        app, ["report", "--evidence", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_an_unknown_experiment_is_a_clear_error(evidence, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("sections: [{experiment: nowhere, title: Lost}]\n", encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--evidence",
            str(path),
            "--out",
            str(tmp_path / "r.md"),
            "--tracking-uri",
            evidence["uri"],
        ],
    )
    assert result.exit_code == 2 and "nowhere" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.md").exists(), "nothing half-written"


def test_mechanism_summary_by_hand():
    from types import SimpleNamespace

    from msaflow.tasks.evidence import mechanism_rows, phi_by_epoch

    traces = {  # key -> cell -> epoch -> [seed values]; a window of 2 epochs, 3 epochs run
        "sgm/damped_t": {"sgm": {0: [1.0, 0.8], 1: [0.6, 0.6], 2: [0.0, 0.0]}},
        "sgm/damped_a": {"sgm": {0: [0.0, 0.2], 1: [0.4, 0.4], 2: [0.0, 0.0]}},
        "sgm/damped_v": {"sgm": {0: [0.0, 0.0], 1: [0.0, 0.0], 2: [0.0, 0.0]}},
        "sgm/tie_rate": {"sgm": {0: [0.1, 0.1], 1: [0.3, 0.3]}},
        "probe/epoch_acc_t": {"sgm": {0: [0.9, 0.9], 1: [0.5, 0.5]}},
        "probe/epoch_acc_a": {"sgm": {0: [0.6, 0.6], 1: [0.7, 0.7]}},
        "probe/epoch_acc_v": {"sgm": {0: [0.5, 0.5], 1: [0.5, 0.5]}},
        "ipr/phi_t": {"sgm": {0: [0.7, 0.8], 1: [0.76, 0.76]}},
        "ipr/dist_t": {"sgm": {0: [1.0, 1.0], 1: [1.0, 1.0]}},
    }
    r = SimpleNamespace(cells=["none", "sgm"], traces=traces, windows={"sgm": 2})
    (row,) = mechanism_rows(r)  # `none` has no traces: no row
    assert row["cell"] == "sgm"
    assert row["SGM damps text"] == "75%"  # epochs 0, 1 of the window: (0.9 + 0.6) / 2
    assert row["SGM damps audio"] == "25%" and row["SGM tie rate"] == "20%"
    # epoch 0: text damped most and strongest probe; epoch 1: text damped most, audio strongest
    assert row["damped = strongest probe"] == "50%"
    assert row["IPR φ / D text"].startswith("0.76 / 1")
    phi = phi_by_epoch(r)
    assert [p["epoch"] for p in phi] == ["1", "2"] and phi[0]["φ text"] == "0.750"


def test_a_section_missing_from_mlflow_comes_from_its_snapshot_or_says_not_run(evidence, tmp_path):
    from msaflow.tasks.evidence import build_evidence

    out = evidence["out"]  # built once from MLflow: its snapshots are beside it
    snap = out.parent / "results" / "sections" / "ev-t2-reproduce.json"
    assert snap.is_file() and "ev-t2" in snap.read_text(encoding="utf-8")
    spec = read_spec(evidence["spec"])
    spec.sections.append(
        type(spec.sections[0])(
            experiment="ev-later", title="Later", pending="needs a GPU", command="msaflow later"
        )
    )
    empty = f"sqlite:///{tmp_path / 'empty.db'}"  # another machine's store: none of it is there
    with pytest.raises(EvidenceError, match="Tuning"):  # no snapshot for a tune section yet? it has
        spec_no_tune = type(spec)(
            spec.title,
            spec.intro,
            spec.conclusions,
            [s for s in spec.sections if s.kind != "tune"]
            + [type(spec.sections[0])(experiment="ev-x", title="Tuning 2", kind="tune")],
        )
        build_evidence(empty, spec_no_tune, out)
    doc = build_evidence(
        empty,
        type(spec)(
            spec.title, spec.intro, spec.conclusions, [s for s in spec.sections if s.kind != "tune"]
        ),
        out,
    )
    assert "This section was built from MLflow on" in doc.markdown
    assert "| Table two | sim-mosi-x0.05 (simulation) | full vs none | 2 |" in doc.markdown
    assert "**Not run yet.** needs a GPU" in doc.markdown
    assert 'src="results/ev-t2-reproduce-curves.png"' in doc.html, "the snapshot's PNGs, linked"
    assert not doc.snapshots, "nothing rebuilt, nothing to rewrite"


def test_sections_whose_titles_share_a_prefix_keep_their_own_files(evidence, tmp_path):
    """Two sections whose titles agree in their first 60 characters once shared one snapshot and
    one set of PNGs, and the second overwrote the first; files are named after the experiment."""
    from msaflow.tasks.evidence import _find_snapshot, _section_slug

    spec = read_spec(evidence["spec"])
    base = spec.sections[0]
    long = "MMAFNet Table 2 on real CMU-MOSI (bc-LSTM utterance features), "
    a = type(base)(experiment="ev-a", title=long + "the paper's optimiser")
    b = type(base)(experiment="ev-b", title=long + "paper-fast")
    assert _section_slug(a) != _section_slug(b)
    # a snapshot written under the old title name serves only the experiment it records
    legacy = (
        tmp_path
        / "r"
        / "sections"
        / "mmafnet-table-2-on-real-cmu-mosi-bc-lstm-utterance-features-.json"
    )
    legacy.parent.mkdir(parents=True)
    legacy.write_text('{"experiment": "ev-b"}', encoding="utf-8")
    assert _find_snapshot(tmp_path / "r.md", b) == legacy
    assert _find_snapshot(tmp_path / "r.md", a) is None
