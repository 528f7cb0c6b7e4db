"""The report's inputs, read from MLflow: the reproduction's parent run and its finished child runs
(one per cell and seed) with their test metrics, learning curves, traces, differing params and the
data statement; and ``Report``, the value they are collected into.

``tasks.report.render`` turns a ``Report`` into Markdown and HTML, ``tasks.report.figures`` draws
its PNGs and ``tasks.report.build_report`` runs the three.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msaflow.atomic import atomic_write
from msaflow.models.spec import TraceFamily
from msaflow.tasks.paper_results import PaperTable, paper_dataset_for
from msaflow.tasks.stats import Paired, Summary

NON_TRACE_PREFIXES = ("test/", "train/", "valid/", "time/")


N_BOOT = 10_000


class ReportError(ValueError):
    """Nothing to report: unknown experiment, no reproduction in it, or no finished runs."""


@dataclass
class Report:
    experiment: str
    parent_run_id: str
    table: str
    model: str
    dataset: str
    dataset_source: str
    simulated: bool
    statement: str
    cells: list[str]
    seeds: list[int]
    metrics: list[str]
    values: dict[str, dict[int, dict[str, float]]]  # cell -> seed -> metric -> value
    summaries: dict[str, dict[str, Summary]]
    comparisons: dict[str, dict[str, Paired]]
    baselines: dict[str, str]
    paper: PaperTable | None
    differing_params: dict[str, dict[str, list[str]]]  # param -> cell -> values
    missing: list[str]
    # Holm / Benjamini-Hochberg adjusted p, one family per metric over the table's comparisons
    p_holm: dict[str, dict[str, float]] = field(default_factory=dict)
    p_bh: dict[str, dict[str, float]] = field(default_factory=dict)
    # the simulation's best achievable test figures per modality subset (manifest ``oracle``)
    oracle: dict[str, dict[str, float]] | None = None
    curve_metric: str = ""  # the selection metric, per epoch: the learning curves
    curves: dict[str, dict[int, list[float]]] = field(
        default_factory=dict
    )  # cell -> epoch -> seeds
    windows: dict[str, int] = field(default_factory=dict)  # cell -> SGM/IPR modulation epochs
    traces: dict[str, dict[str, dict[int, list[float]]]] = field(default_factory=dict)
    figures: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG
    markdown: str = ""
    html: str = ""

    def write(self, out: str | Path) -> dict[str, Path]:
        """``out`` is the Markdown path; the HTML and PNGs go beside it."""
        md = Path(out)
        md.parent.mkdir(parents=True, exist_ok=True)
        paths = {
            "markdown": md,
            "html": md.with_suffix(".html"),
            **{name: md.parent / name for name in self.figures},
        }
        contents = {"markdown": self.markdown.encode(), "html": self.html.encode(), **self.figures}
        for key, path in paths.items():  # each file whole or not at all (a crash keeps the old one)
            atomic_write(path, contents[key])
        return paths

    def log_to_parent(self, tracking_uri: str) -> None:
        """Log the report under ``report/`` of the parent run (re-logging replaces the files)."""
        from msaflow.tasks.tracking import client

        with tempfile.TemporaryDirectory() as tmp:
            self.write(Path(tmp) / "report.md")
            client(tracking_uri).log_artifacts(self.parent_run_id, tmp, artifact_path="report")


def find_reproduction(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> Any:
    """The parent run: the given one, or the newest reproduction in ``experiment``."""
    from msaflow.tasks.tracking import client

    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in c.search_experiments())
        raise ReportError(
            f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments: {names}"
        )
    if parent_run_id:
        run = c.get_run(parent_run_id)
        if run.info.experiment_id != exp.experiment_id:
            raise ReportError(f"run {parent_run_id} is not in experiment {experiment!r}")
        return run
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string="tags.`msaflow.kind` = 'reproduce'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ReportError(
            f"experiment {experiment!r} holds no reproduction (run `msaflow reproduce` first)"
        )
    return runs[0]


def _membership(parent: Any) -> list[str]:
    """Run ids the flow recorded (tags ``msaflow.runs.*``), cache hits of an earlier parent too."""
    tags = parent.data.tags
    n = int(tags.get("msaflow.runs.n", "0") or 0)
    text = "".join(tags.get(f"msaflow.runs.{i}", "") for i in range(n))
    return [r for r in text.split(",") if r]


def _child_runs(c: Any, parent: Any) -> list[Any]:
    runs = {
        r.info.run_id: r
        for r in c.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=5000,
        )
    }
    for run_id in _membership(parent):
        if run_id not in runs:
            try:
                runs[run_id] = c.get_run(run_id)
            except Exception:  # noqa: BLE001 - deleted since
                continue
    return list(runs.values())


def _json_tag(tags: dict[str, str], key: str, default: Any) -> Any:
    try:
        return json.loads(tags[key])
    except (KeyError, ValueError):
        return default


def _trace_keys(run: Any) -> list[str]:
    return sorted(k for k in run.data.metrics if "/" in k and not k.startswith(NON_TRACE_PREFIXES))


def _traces(
    c: Any, picked: dict[tuple[str, int], Any]
) -> dict[str, dict[str, dict[int, list[float]]]]:
    """``{key: {cell: {step: [value per seed]}}}`` from the metric histories."""
    out: dict[str, dict[str, dict[int, list[float]]]] = {}
    for (cell, _seed), run in picked.items():
        for key in _trace_keys(run):
            for m in c.get_metric_history(run.info.run_id, key):
                out.setdefault(key, {}).setdefault(cell, {}).setdefault(int(m.step), []).append(
                    float(m.value)
                )
    return out


def _differing_params(picked: dict[tuple[str, int], Any]) -> dict[str, dict[str, list[str]]]:
    keys = {k for run in picked.values() for k in run.data.params}
    out: dict[str, dict[str, list[str]]] = {}
    for key in sorted(keys - {"train.seed"}):
        values = {run.data.params.get(key, "(unset)") for run in picked.values()}
        if len(values) > 1:
            by_cell: dict[str, set[str]] = {}
            for (cell, _), run in picked.items():
                by_cell.setdefault(cell, set()).add(run.data.params.get(key, "(unset)"))
            out[key] = {cell: sorted(v) for cell, v in by_cell.items()}
    return out


def dataset_statement(name: str, source: str, paper_datasets: list[str]) -> tuple[bool, str]:
    """``(simulated, sentence)``; simulation is never presented as the real corpus."""
    simulated = source.lower().startswith(("sim", "synth")) or name.lower().startswith("sim-")
    real = paper_dataset_for(name)
    if simulated:
        stand_in = f"NOT {real}" if real else "NOT a real corpus"
        paper = ", ".join(paper_datasets) or "the paper's datasets"
        return True, (
            f"**Data: simulation benchmark {name}, {stand_in}.** These numbers come from msaflow's "
            f"synthetic feature store (source: {source}). They exercise the pipeline and the "
            "relative "
            f"effect of the variants; they are not results on {paper}. The paper's figures "
            f"are shown beside ours for reference only and are labelled with the paper's dataset."
        )
    return False, (
        f"**Data: {name}** (source: {source}). The paper's figures are labelled with the "
        f"paper's dataset; compare only columns for the same corpus and protocol."
    )


def _oracle(c: Any, parent: Any) -> dict[str, dict[str, float]] | None:
    """The parent's ``msaflow.oracle`` tag, else the oracle in the store's manifest, if readable."""
    tagged = _json_tag(parent.data.tags, "msaflow.oracle", None)
    if isinstance(tagged, dict) and tagged:
        return tagged
    path = parent.data.params.get("dataset.path")
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text(encoding="utf-8"))
    except (TypeError, OSError, ValueError):
        return None
    oracle = manifest.get("oracle") if isinstance(manifest, dict) else None
    return oracle if isinstance(oracle, dict) and oracle else None


def _curves(
    c: Any, picked: dict[tuple[str, int], Any], metric: str
) -> dict[str, dict[int, list[float]]]:
    """``{cell: {epoch: [value per seed]}}`` of the per-epoch validation metric."""
    out: dict[str, dict[int, list[float]]] = {}
    for (cell, _seed), run in picked.items():
        for m in c.get_metric_history(run.info.run_id, metric):
            out.setdefault(cell, {}).setdefault(int(m.step), []).append(float(m.value))
    return out


def _windows(picked: dict[tuple[str, int], Any]) -> dict[str, int]:
    """Modulation epochs per cell, where SGM or IPR is on (from the logged params)."""
    out: dict[str, int] = {}
    for (cell, _seed), run in picked.items():
        p = run.data.params
        if "model_cfg.modulation_epochs" not in p:
            continue
        if p.get("model_cfg.sgm") == "True" or p.get("model_cfg.ipr") == "True":
            out[cell] = int(p["model_cfg.modulation_epochs"])
    return out


def _trace_families(model: str) -> tuple[TraceFamily, ...]:
    """The model's declared trace families; none for a model this install does not know (the
    report still draws its traces, by their groups)."""
    from msaflow.models import get_spec

    try:
        return get_spec(model).traces
    except KeyError:
        return ()


def _infer_data_kind(runs: dict[tuple[str, int], Any]) -> str:
    keys = {k for run in runs.values() for k in run.data.metrics}
    if "test/acc2_non0" in keys:
        return "sentiment"
    if "test/acc_avg" in keys:
        return "emotion"
    return "depression" if "test/rmse" in keys else "sentiment"
