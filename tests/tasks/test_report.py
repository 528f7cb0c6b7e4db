"""The report from MLflow alone: a hand-made store (no training) with known numbers."""

import base64
import json
import math
import re
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats as sps

from msaflow.tasks.paper_results import PAPER_TABLES, paper_dataset_for, paper_table
from msaflow.tasks.report import ReportError, build_report, dataset_statement

CELLS = ["none", "sgm", "sgm_ipr", "full"]
SEEDS = [1, 2, 3]
PARAMS = {  # what the variants change, as the real runs log them
    "none": {"model_cfg.sgm": "False", "model_cfg.ipr": "False", "model_cfg.afm": "False"},
    "sgm": {"model_cfg.sgm": "True", "model_cfg.ipr": "False", "model_cfg.afm": "False"},
    "sgm_ipr": {"model_cfg.sgm": "True", "model_cfg.ipr": "True", "model_cfg.afm": "False"},
    "full": {"model_cfg.sgm": "True", "model_cfg.ipr": "True", "model_cfg.afm": "True"},
}


def mae(cell: str, seed: int) -> float:
    return 1.0 - 0.05 * CELLS.index(cell) + 0.01 * seed * (1 + CELLS.index(cell) % 2)


def acc(cell: str, seed: int) -> float:
    return 0.6 + 0.02 * CELLS.index(cell) + 0.005 * seed


def make_store(uri: str, experiment: str, dataset: str, source: str, seeds_tag: list[int]) -> str:
    """A reproduction as the flow leaves it: parent tags; children with params, metrics, traces."""
    c = MlflowClient(uri)
    artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"  # not ./mlruns in the cwd
    exp = c.create_experiment(experiment, artifact_location=artifacts.as_uri())
    parent = c.create_run(
        exp,
        run_name="reproduce/mmafnet/sim-mosi",
        tags={
            "msaflow.kind": "reproduce",
            "msaflow.table": "mmafnet-table2",
            "msaflow.paper": "mmafnet-table2",
            "msaflow.cells": json.dumps(CELLS),
            "msaflow.baselines": json.dumps({c: "none" for c in CELLS}),
            "msaflow.seeds": ",".join(map(str, seeds_tag)),
            "dataset": dataset,
            "msaflow.dataset_source": source,
            "model": "mmafnet",
            "msaflow.task": "sentiment",
            "preset": "quick",
            "msaflow.epochs": "4",
        },
    ).info.run_id
    for cell in CELLS:
        for seed in SEEDS:
            run = c.create_run(
                exp,
                run_name=f"mmafnet/{cell}/seed{seed}",
                tags={
                    "mlflow.parentRunId": parent,
                    "cell": cell,
                    "variant": cell,
                    "seed": str(seed),
                    "model": "mmafnet",
                    "dataset": dataset,
                },
            ).info.run_id
            params = {**PARAMS[cell], "variant": cell, "train.seed": str(seed), "train.lr": "0.001"}
            metrics = {
                "test/mae": mae(cell, seed),
                "test/acc2_non0": acc(cell, seed),
                "test/f1_non0": acc(cell, seed),
                "test/acc7": 0.3,
                "test/corr": float("nan") if seed == 3 else 0.5 + 0.1 * seed,
            }
            entries = [Metric(k, v, 0, 0) for k, v in metrics.items()]
            if cell != "none":
                entries += [
                    Metric("sgm/omega_t", 0.3 + 0.01 * step + 0.001 * seed, 0, step)
                    for step in range(5)
                ]
            if cell in ("sgm_ipr", "full"):
                entries += [Metric("ipr/dist_a", 1.0 / (1 + epoch), 0, epoch) for epoch in range(3)]
            c.log_batch(run, metrics=entries, params=[Param(k, v) for k, v in params.items()])
            c.set_terminated(run)
    # a failed attempt of an extra seed, outside the reproduction's seeds: ignored
    run = c.create_run(
        exp,
        run_name="mmafnet/full/seed9",
        tags={"mlflow.parentRunId": parent, "cell": "full", "seed": "9", "msaflow.error": "boom"},
    ).info.run_id
    c.set_terminated(run, status="FAILED")
    c.set_terminated(parent)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    uri = f"sqlite:///{tmp_path_factory.mktemp('report') / 'mlflow.db'}"
    return {
        "uri": uri,
        "sim": make_store(uri, "rep", "sim-mosi", "simulation", SEEDS),
        # real data; seed 4 is listed but was never run
        "real": make_store(uri, "rep-real", "mosi-2a9f", "mmsa:/data/mosi.pkl", [*SEEDS, 4]),
    }


def test_report_numbers_statement_paper_columns_and_figures(store, tmp_path):
    uri, parent = store["uri"], store["sim"]
    r = build_report(uri, "rep")
    assert r.parent_run_id == parent and r.cells == CELLS and r.seeds == SEEDS
    assert r.simulated and not r.missing
    assert r.metrics == [
        "acc2_non0",
        "f1_non0",
        "acc7",
        "mae",
        "corr",
    ]  # HEADLINE order, those present

    s = r.summaries["full"]["mae"]
    values = [mae("full", seed) for seed in SEEDS]
    assert s.n == 3 and s.mean == pytest.approx(sum(values) / 3)
    assert r.summaries["full"]["corr"].n == 2  # the NaN correlation of seed 3 is dropped

    cmp = r.comparisons["full"]["mae"]
    expected = sps.ttest_rel(values, [mae("none", seed) for seed in SEEDS])
    assert cmp.p_value == pytest.approx(expected.pvalue) and cmp.t == pytest.approx(
        expected.statistic
    )
    assert set(r.comparisons) == {"sgm", "sgm_ipr", "full"}
    assert r.comparisons["sgm"]["acc7"].p_value == 1.0  # identical values: no difference

    md = r.markdown
    assert "simulation benchmark sim-mosi, NOT CMU-MOSI" in md
    for cell in CELLS:
        assert f"| {cell} |" in md
    assert "paper (CMU-MOSI)" in md and "paper (CMU-MOSEI)" in md
    assert re.search(
        r"\| full \| SGM \+ IPR \+ AFM \| acc2_non0 \| [^|]+ \| 86\.60 \| 86\.30 \|", md
    )
    assert (
        "| model_cfg.afm | False | False | False | True |" in md
    )  # what differs, and nothing else
    assert "train.lr" not in md
    assert "Feature Decoupling with Modality Modulation" in md

    assert {"metrics.png", "traces_sgm.png", "traces_ipr.png"} == set(r.figures)
    assert all(png.startswith(b"\x89PNG") for png in r.figures.values())
    assert r.html.count("data:image/png;base64,") == 3
    assert '<img src="metrics.png"' not in r.html  # self-contained
    embedded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", r.html).group(1)
    assert base64.b64decode(embedded).startswith(b"\x89PNG")
    assert "NOT CMU-MOSI" in r.html

    paths = r.write(tmp_path / "out" / "report.md")
    assert paths["markdown"].read_text() == md and (tmp_path / "out" / "traces_sgm.png").is_file()
    r.log_to_parent(uri)
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "report")}
    assert {"report/report.md", "report/report.html", "report/metrics.png"} <= logged


def test_missing_runs_are_listed_and_real_data_is_named(store):
    r = build_report(store["uri"], "rep-real", store["real"], figures=False)
    assert not r.simulated and "simulation" not in r.statement.lower()
    assert "**Data: mosi-2a9f**" in r.statement
    assert len(r.missing) == 4 and all("seed4" in m for m in r.missing)
    assert "Missing or failed runs" in r.markdown


def test_report_errors_are_clear(store):
    with pytest.raises(ReportError, match="no MLflow experiment 'nope'"):
        build_report(store["uri"], "nope")
    MlflowClient(store["uri"]).create_experiment("empty", artifact_location="file:///nonexistent")
    with pytest.raises(ReportError, match="holds no reproduction"):
        build_report(store["uri"], "empty")
    with pytest.raises(ReportError, match="is not in experiment"):
        build_report(store["uri"], "rep", store["real"])


def test_dataset_statement_never_calls_simulation_mosi():
    sim, text = dataset_statement("sim-mosi-x0.05", "simulation", ["CMU-MOSI"])
    assert sim and "NOT CMU-MOSI" in text and "simulation benchmark sim-mosi-x0.05" in text
    sim, text = dataset_statement("sim-iemocap", "simulation", [])
    assert sim and "NOT IEMOCAP" in text


def test_paper_numbers_as_transcribed():
    t2 = paper_table("mmafnet-table2")
    assert t2.value("CMU-MOSI", "none", "acc2_non0") == pytest.approx(0.846)
    assert t2.value("CMU-MOSEI", "full", "mae") == 0.527
    assert t2.value("CMU-MOSI", "none", "corr") is None
    t3 = paper_table("mmafnet-table3")
    assert t3.value("CMU-MOSI", "sgm_ipr-ep25", "acc7") == t2.value("CMU-MOSI", "full", "acc7")
    assert t3.value("CMU-MOSI", "sgm-ep15", "f1_non0") == pytest.approx(0.852)
    mmcl = paper_table("mmcl-table1")
    assert mmcl.value("CMU-MOSI", "no_crossattn", "corr") == 0.799
    assert mmcl.value("IEMOCAP", "full", "acc_avg") == pytest.approx(0.849)
    for table in PAPER_TABLES.values():  # percentages stay percentages, errors stay below 1
        for rows in table.results.values():
            for values in rows.values():
                for metric, v in values.items():
                    assert (1 < v < 100) if metric not in ("mae", "corr") else (0 < v < 1), (
                        table.key,
                        metric,
                    )
    assert (
        paper_dataset_for("sim-mosi-x0.05") == "CMU-MOSI"
        and paper_dataset_for("sim-mosei") == "CMU-MOSEI"
    )
    assert paper_dataset_for("cmdc") is None
    table1 = paper_table("mmafnet-table1")
    assert math.isclose(table1.value("CMU-MOSI", "mmafnet", "mae"), 0.698)
    assert math.isclose(table1.value("CMU-MOSEI", "tfn", "acc2_non0"), 0.825)
    assert table1.value("CMU-MOSI", "self_mm", "acc7") is None  # "-" in the paper
