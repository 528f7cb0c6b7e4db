"""The reproduction report, rebuilt from MLflow alone (no retraining, no Prefect, no local cache).

Inputs are what the ``reproduce`` flow leaves in MLflow: a parent run (tags
``msaflow.kind=reproduce``, ``msaflow.table``, ``msaflow.cells``, ``msaflow.baselines``,
``msaflow.seeds``, ``msaflow.runs.*``, ``dataset``, ``msaflow.dataset_source``) whose children
(tag ``mlflow.parentRunId``; tags ``cell``, ``seed``, ``model``, ``dataset``) carry ``test/*``
metrics and stepped trace metrics (``sgm/omega_t``, ``ipr/dist_t``, ...). Output: Markdown, a
self-contained HTML page (PNGs inlined as base64) and the PNGs themselves, written to a folder
and/or logged to the parent run under ``report/``.

The report never presents simulation results as results on the paper's dataset: the data statement
comes first and the paper's figures are always labelled with the paper's dataset.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.spec import TraceFamily
from msaflow.atomic import atomic_write
from tasks.paper_results import PERCENT_METRICS, PaperTable, paper_dataset_for, paper_table
from tasks.stats import Paired, Summary, adjust_comparisons, cell_summaries, compare_to_baseline

NON_TRACE_PREFIXES = ("test/", "train/", "valid/", "time/")
MODALITY_ORDER = {"t": 0, "a": 1, "v": 2, "c": 3}
N_BOOT = 10_000
Block = tuple[Any, ...]


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
        from tasks.tracking import client

        with tempfile.TemporaryDirectory() as tmp:
            self.write(Path(tmp) / "report.md")
            client(tracking_uri).log_artifacts(self.parent_run_id, tmp, artifact_path="report")


# ----------------------------------------------------------------------------- reading MLflow


def find_reproduction(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> Any:
    """The parent run: the given one, or the newest reproduction in ``experiment``."""
    from tasks.tracking import client

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


def build_report(
    tracking_uri: str, experiment: str, parent_run_id: str | None = None, figures: bool = True
) -> Report:
    """Everything the report says, from MLflow alone."""
    from tasks.metrics import DEFAULT_SELECTION, HEADLINE
    from tasks.tracking import client

    c = client(tracking_uri)
    parent = find_reproduction(tracking_uri, experiment, parent_run_id)
    tags = parent.data.tags
    table = tags.get("msaflow.table", "")
    cells = _json_tag(tags, "msaflow.cells", [])
    baselines = _json_tag(tags, "msaflow.baselines", {})
    seeds = [int(s) for s in tags.get("msaflow.seeds", "").split(",") if s.strip()]

    finished: dict[tuple[str, int], Any] = {}
    failed: dict[tuple[str, int], str] = {}
    for run in sorted(_child_runs(c, parent), key=lambda r: r.info.start_time or 0):
        cell, seed = run.data.tags.get("cell"), run.data.tags.get("seed")
        if (
            cell is None
            or seed is None
            or (cells and cell not in cells)
            or (seeds and int(seed) not in seeds)
        ):
            continue
        key = (cell, int(seed))
        if run.info.status == "FINISHED" and any(k.startswith("test/") for k in run.data.metrics):
            finished[key] = run  # the newest finished run of a (cell, seed) wins
            failed.pop(key, None)
        elif key not in finished:
            failed[key] = run.data.tags.get("msaflow.error", run.info.status)
    if not finished:
        raise ReportError(
            f"reproduction {parent.info.run_id} in {experiment!r} has no finished runs yet"
        )
    cells = cells or sorted({cell for cell, _ in finished})
    seeds = seeds or sorted({seed for _, seed in finished})

    task = tags.get("msaflow.task") or _infer_task(finished)
    present = {
        k.removeprefix("test/")
        for run in finished.values()
        for k in run.data.metrics
        if k.startswith("test/")
    }
    metrics = [m for m in HEADLINE.get(task, ()) if m in present] or sorted(present - {"loss"})
    values: dict[str, dict[int, dict[str, float]]] = {cell: {} for cell in cells}
    for (cell, seed), run in finished.items():
        values[cell][seed] = {
            m: float(run.data.metrics[f"test/{m}"])
            for m in metrics
            if f"test/{m}" in run.data.metrics
        }

    try:
        paper = paper_table(tags.get("msaflow.paper") or table)
    except KeyError:
        paper = None
    name = tags.get("dataset", next(iter(finished.values())).data.tags.get("dataset", "?"))
    source = tags.get("msaflow.dataset_source", "unknown")
    simulated, statement = dataset_statement(name, source, paper.datasets if paper else [])
    baselines = {cell: baselines.get(cell, baselines.get("*", cells[0])) for cell in cells}

    report = Report(
        experiment=experiment,
        parent_run_id=parent.info.run_id,
        table=table,
        model=tags.get("model", "?"),
        dataset=name,
        dataset_source=source,
        simulated=simulated,
        statement=statement,
        cells=cells,
        seeds=seeds,
        metrics=metrics,
        values=values,
        summaries=cell_summaries(values, metrics),
        comparisons=compare_to_baseline(values, metrics, baselines, n_boot=N_BOOT, seed=0),
        baselines=baselines,
        paper=paper,
        differing_params=_differing_params(finished),
        missing=[
            f"{cell}/seed{seed}: {failed.get((cell, seed), 'not run')}"[:300]
            for cell in cells
            for seed in seeds
            if (cell, seed) not in finished
        ],
    )
    report.p_holm = adjust_comparisons(report.comparisons, "holm")
    report.p_bh = adjust_comparisons(report.comparisons, "bh")
    report.oracle = _oracle(c, parent)
    report.curve_metric = DEFAULT_SELECTION.get(task, ("valid/mae", "min"))[0]
    report.curves = _curves(c, finished, report.curve_metric)
    report.windows = _windows(finished)
    report.traces = _traces(c, finished)
    if figures:
        report.figures = {"metrics.png": metrics_figure(report)}
        if any(report.curves.values()):
            report.figures["curves.png"] = curves_figure(report)
        report.figures.update(
            cell_trace_figures(report.traces, cells, simulated, name, _trace_families(report.model))
        )
    blocks = render_blocks(report, tags)
    report.markdown = to_markdown(blocks)
    report.html = to_html(blocks, report.figures, title=f"msaflow reproduction: {table}")
    return report


def _trace_families(model: str) -> tuple[TraceFamily, ...]:
    """The model's declared trace families; none for a model this install does not know (the
    report still draws its traces, by their groups)."""
    from models import get_spec

    try:
        return get_spec(model).traces
    except KeyError:
        return ()


def _infer_task(runs: dict[tuple[str, int], Any]) -> str:
    keys = {k for run in runs.values() for k in run.data.metrics}
    if "test/acc2_non0" in keys:
        return "sentiment"
    if "test/acc_avg" in keys:
        return "emotion"
    return "depression" if "test/rmse" in keys else "sentiment"


# ----------------------------------------------------------------------------- formatting


def _unit(metric: str) -> tuple[float, int]:
    """Display scale and decimals: accuracies/F1 in percent (as the papers print them)."""
    return (100.0, 2) if metric in PERCENT_METRICS else (1.0, 4)


def fmt_value(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—" if value is None else "nan"
    scale, dec = _unit(metric)
    return f"{value * scale:.{dec}f}"


def fmt_summary(metric: str, s: Summary, ci: bool = True) -> str:
    if s.n == 0:
        return "—"
    scale, dec = _unit(metric)
    text = f"{s.mean * scale:.{dec}f}"
    if s.n > 1:
        text += f" ± {s.std * scale:.{dec}f}"
        text += f" [{s.ci_low * scale:.{dec}f}, {s.ci_high * scale:.{dec}f}]" if ci else ""
    return text


def _fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return "nan"
    return f"{p:.3g}" if p >= 1e-4 else "<1e-4"


def _fmt_d(d: float) -> str:
    return "nan" if math.isnan(d) else f"{d:+.2f}"  # ±inf when every seed moved by the same amount


def render_blocks(r: Report, tags: dict[str, str]) -> list[Block]:
    title = f"Reproduction: {r.table or 'custom'} ({r.model})"
    if r.paper:
        title += f" — {r.paper.citation.title}, {r.paper.table}"
    epochs, preset = tags.get("msaflow.epochs", "?"), tags.get("preset", "?")
    expected = len(r.cells) * len(r.seeds)
    found = sum(len(v) for v in r.values.values())
    blocks: list[Block] = [
        ("h1", title),
        ("p", r.statement),
        (
            "p",
            f"Model **{r.model}**, preset **{preset}**, **{epochs}** epochs, seeds {r.seeds}; "
            f"{found}/{expected} runs finished. MLflow experiment `{r.experiment}`, parent run "
            f"`{r.parent_run_id}`. Accuracies and F1 in percent; MAE and Corr as is.",
        ),
    ]
    if r.missing:
        blocks.append(("p", "**Missing or failed runs** (statistics use the finished seeds only):"))
        blocks.append(("ul", r.missing))

    rows = [
        {
            "cell": cell,
            "n": str(max((s.n for s in r.summaries[cell].values()), default=0)),
            **{m: fmt_summary(m, r.summaries[cell][m]) for m in r.metrics},
        }
        for cell in r.cells
    ]
    blocks += [
        ("h2", f"Our results on {r.dataset}: mean ± std [95% CI] over seeds"),
        ("table", rows),
    ]

    if r.paper:
        blocks += paper_blocks(r)

    comp_rows = []
    for cell in r.cells:
        for m, p in r.comparisons.get(cell, {}).items():
            scale, dec = _unit(m)
            comp_rows.append(
                {
                    "cell": cell,
                    "vs": r.baselines[cell],
                    "metric": m,
                    "n pairs": str(p.n),
                    "mean diff": f"{p.mean_diff * scale:+.{dec}f}"
                    if math.isfinite(p.mean_diff)
                    else "nan",
                    "95% CI (t)": _interval(p.ci_low, p.ci_high, scale, dec),
                    "95% CI (bootstrap)": _interval(p.boot_low, p.boot_high, scale, dec),
                    "d_z": _fmt_d(p.d_z),
                    "p (paired t)": _fmt_p(p.p_value),
                    "p (Holm)": _fmt_p(r.p_holm.get(cell, {}).get(m, math.nan)),
                    "p (BH)": _fmt_p(r.p_bh.get(cell, {}).get(m, math.nan)),
                }
            )
    blocks.append(("h2", "Paired comparison against the baseline (matched seeds)"))
    blocks.append(
        (
            "p",
            "diff = cell − baseline (for MAE, negative is better). d_z = mean(diff)/std(diff) "
            "(Cohen's effect size for paired samples); p from a two-sided paired t-test; the "
            f"bootstrap interval resamples the seed differences ({N_BOOT} draws, seed 0). "
            "p (Holm) controls the family-wise error and p (BH) the false discovery rate over "
            "this table's comparisons, one family per metric; read significance from them. "
            "With one seed there is no spread and these are NaN. With few seeds the tests have "
            "little power: a large p is not evidence of no effect.",
        )
    )
    blocks.append(("table", comp_rows) if comp_rows else ("p", "(no cell besides the baseline)"))
    blocks += oracle_blocks(r)

    blocks.append(("h2", "What differs between the runs"))
    if r.differing_params:
        blocks.append(
            (
                "p",
                "MLflow params that differ between runs besides `train.seed` — in the UI's "
                "compare "
                "view only these (and the metrics) change from cell to cell:",
            )
        )
        blocks.append(
            (
                "table",
                [
                    {"param": k, **{c: ", ".join(v.get(c, [])) for c in r.cells}}
                    for k, v in r.differing_params.items()
                ],
            )
        )
    else:
        blocks.append(("p", "No param differs between the runs besides `train.seed`."))
    same = identical_cells(r)
    if same:
        blocks.append(
            (
                "p",
                "**Cells that ran the same configuration** (at this epoch count their settings "
                "coincide, so any difference between them is noise): "
                + "; ".join(" = ".join(group) for group in same)
                + ".",
            )
        )

    blocks.append(("h2", "Figures"))
    for name in r.figures:
        caption = (
            "Test metrics per cell: mean over seeds, error bars 95% CI; paper values as markers, "
            "labelled with the paper's dataset."
            if name == "metrics.png"
            else f"Learning curves: `{r.curve_metric}` per epoch, mean over seeds (band ± std); "
            "the shaded span is the SGM/IPR modulation window."
            if name == "curves.png"
            else f"Training traces `{name.removeprefix('traces_').removesuffix('.png')}/*` "
            "(modulation, gates, probes), "
            "mean over seeds per step/epoch, band ± std."
        )
        blocks.append(("img", name, caption))

    notes = list(r.paper.notes) if r.paper else []
    notes.append(
        "Statistics: sample std (ddof=1); 95% CI from the t distribution with n−1 degrees of "
        "freedom; non-finite values (e.g. an undefined correlation) are dropped per seed."
    )
    blocks += [("h2", "Notes"), ("ul", notes)]
    if r.paper:
        cite = r.paper.citation
        blocks.append(("p", f"Paper: {cite.text()} Numbers transcribed from `{cite.source}`."))
    return blocks


ORACLE_SUBSETS = {"t": "text only", "tav": "all three modalities"}


def oracle_blocks(r: Report) -> list[Block]:
    """Distances from the simulation's oracles (best achievable from text alone / from all three),
    and the share of the baseline's gap to the all-modality oracle that each cell closes."""
    if not r.oracle or not all(k in r.oracle for k in ORACLE_SUBSETS):
        return []
    shown = [m for m in ("mae", "acc2_non0", "acc") if m in r.metrics and m in r.oracle["tav"]]
    if not shown:
        return []
    rows = []
    for m in shown:
        scale, dec = _unit(m)
        for cell in r.cells:
            mean = r.summaries[cell][m].mean
            base = r.summaries[r.baselines[cell]][m].mean
            gap = base - r.oracle["tav"][m]
            closed = (base - mean) / gap if gap and math.isfinite(mean) else math.nan
            rows.append(
                {
                    "cell": cell,
                    "metric": m,
                    "ours (mean)": f"{mean * scale:.{dec}f}",
                    **{
                        f"− oracle {k} ({v})": f"{(mean - r.oracle[k][m]) * scale:+.{dec}f}"
                        for k, v in ORACLE_SUBSETS.items()
                    },
                    f"gap to oracle tav closed vs {r.baselines[cell]}": (
                        "—"
                        if cell == r.baselines[cell] or not math.isfinite(closed)
                        else f"{closed:+.0%}"
                    ),
                }
            )
    oracle = "; ".join(
        f"{ORACLE_SUBSETS[k]}: " + ", ".join(f"{m} {fmt_value(m, r.oracle[k][m])}" for m in shown)
        for k in ORACLE_SUBSETS
    )
    return [
        ("h2", "Against the simulation's oracle"),
        (
            "p",
            "The generator knows what is learnable: a least-squares fit on the latent "
            f"observations gives the best achievable test figures ({oracle}). A model that uses "
            "the weak modalities gets closer to the all-modality oracle than the text-only one. "
            "Gap closed = (baseline − cell) / (baseline − oracle tav).",
        ),
        ("table", rows),
    ]


def identical_cells(r: Report) -> list[list[str]]:
    """Groups of cells whose params agree on every key that varies (e.g. Table 3 at few epochs)."""
    keys = [k for k in r.differing_params if k != "variant"]
    groups: dict[tuple, list[str]] = {}
    for cell in r.cells:
        groups.setdefault(
            tuple(tuple(r.differing_params[k].get(cell, [])) for k in keys), []
        ).append(cell)
    return [g for g in groups.values() if len(g) > 1]


def _interval(low: float, high: float, scale: float, dec: int) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "nan"
    return f"[{low * scale:+.{dec}f}, {high * scale:+.{dec}f}]"


def paper_blocks(r: Report) -> list[Block]:
    paper = r.paper
    assert paper is not None
    shown = [m for m in r.metrics if m in paper.metrics()]
    if not shown:
        return [
            ("h2", "Beside the paper"),
            (
                "p",
                f"The paper's {paper.table} reports none of the metrics measured here "
                f"({r.metrics}).",
            ),
        ]
    datasets = [
        ds
        for ds in paper.datasets
        if any(m in v for v in paper.results[ds].values() for m in shown)
    ]
    rows = []
    for cell in r.cells:
        for m in shown:
            row = {
                "cell": cell,
                "paper row": paper.row_labels.get(cell, "—"),
                "metric": m,
                f"ours ({r.dataset})": fmt_summary(m, r.summaries[cell][m]),
            }
            row.update({f"paper ({ds})": fmt_value(m, paper.value(ds, cell, m)) for ds in datasets})
            rows.append(row)
    where = "simulation, not the paper's data" if r.simulated else "see the data statement"
    return [
        ("h2", f"Beside the paper: {paper.table}"),
        (
            "p",
            f"{paper.citation.text()} {paper.table}: {paper.caption} "
            f"Our columns are on **{r.dataset}** "
            f"({where}); the paper's columns name the paper's dataset.",
        ),
        ("table", rows),
    ]


def to_markdown(blocks: list[Block]) -> str:
    from tasks.tracking import markdown_table

    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out.append(f"# {block[1]}\n")
        elif kind == "h2":
            out.append(f"## {block[1]}\n")
        elif kind == "h3":
            out.append(f"### {block[1]}\n")
        elif kind == "code":
            out.append(f"```bash\n{block[1]}\n```\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]) + "\n")
        elif kind == "table":
            out.append(markdown_table(block[1]))
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n\n*{block[2]}*\n")
    return "\n".join(out)


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(blocks: list[Block], figures: dict[str, bytes], title: str) -> str:
    """One self-contained page: the PNGs are inlined as base64 data URIs."""
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{_inline(block[1])}</{kind}>")
        elif kind == "code":
            body.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            rows = block[1]
            cols = list(dict.fromkeys(k for row in rows for k in row))
            head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
            trs = "".join(
                "<tr>"
                + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in cols)
                + "</tr>"
                for row in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
        elif kind == "img":
            name, caption = block[1], block[2]
            src = (
                f"data:image/png;base64,{base64.b64encode(figures[name]).decode()}"
                if name in figures
                else html.escape(name)
            )
            body.append(
                f'<figure><img src="{src}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "figcaption{font-style:italic;font-size:90%}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# ----------------------------------------------------------------------------- figures


def _png(fig: Any) -> bytes:
    from tasks.plots import close

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    close(fig)
    return buf.getvalue()


def metrics_figure(r: Report) -> bytes:
    """A panel per metric: a bar per cell (mean), 95% CI error bars, paper values as markers."""
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(r.metrics)
    cols = min(4, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    x = np.arange(len(r.cells))
    markers = ["D", "^", "s", "v"]
    for ax, metric in zip(axes.flat, r.metrics, strict=False):
        means = [r.summaries[c][metric].mean for c in r.cells]
        err = [r.summaries[c][metric].half_width for c in r.cells]
        err = [e if math.isfinite(e) else 0.0 for e in err]
        ax.bar(
            x, means, yerr=err, capsize=4, color="#4c72b0", alpha=0.85, label=f"ours ({r.dataset})"
        )
        if r.paper:
            for i, ds in enumerate(r.paper.datasets):
                ys = [r.paper.value(ds, c, metric) for c in r.cells]
                if any(y is not None for y in ys):
                    ax.scatter(
                        x,
                        [np.nan if y is None else y for y in ys],
                        marker=markers[i % len(markers)],
                        color=f"C{i + 1}",
                        zorder=3,
                        label=f"paper ({ds})",
                    )
        ax.set_title(metric)
        ax.set_xticks(x, r.cells, rotation=30, ha="right", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    kind = "SIMULATION, not the paper's data" if r.simulated else r.dataset_source
    fig.suptitle(
        f"{r.table}: {r.dataset} ({kind}), mean ± 95% CI over {len(r.seeds)} seed(s)", fontsize=10
    )
    # fixed margins: tight_layout costs about a second per figure on a busy 2-core machine
    fig.subplots_adjust(left=0.06, right=0.88, bottom=0.12, top=0.88, wspace=0.3, hspace=0.55)
    return _png(fig)


def curves_figure(r: Report) -> bytes:
    """The selection metric per epoch, a line per cell (mean over seeds, band ± std), with the
    modulation window shaded."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for i, cell in enumerate(r.cells):
        curve = r.curves.get(cell)
        if not curve:
            continue
        epochs = sorted(curve)
        mean = np.array([np.mean(curve[e]) for e in epochs])
        std = np.array([np.std(curve[e], ddof=1) if len(curve[e]) > 1 else 0.0 for e in epochs])
        x = np.array(epochs) + 1  # epochs shown 1-based, as the logs print them
        ax.plot(x, mean, color=f"C{i}", linewidth=1.2, label=cell)
        ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.15, linewidth=0)
    for span in sorted(set(r.windows.values())):
        ax.axvspan(0.5, span + 0.5, color="grey", alpha=0.08)
        ax.axvline(span + 0.5, color="grey", linewidth=0.8, linestyle="--")
    if r.oracle and r.curve_metric == "valid/mae" and "mae" in r.oracle.get("tav", {}):
        for k, style in (("t", ":"), ("tav", "-.")):
            if "mae" in r.oracle.get(k, {}):
                ax.axhline(
                    r.oracle[k]["mae"],
                    color="black",
                    linewidth=0.8,
                    linestyle=style,
                    label=f"oracle {k} (test)",
                )
    ax.set_xlabel("epoch")
    ax.set_ylabel(r.curve_metric)
    ax.legend(fontsize=7, ncol=2)
    kind = "SIMULATION" if r.simulated else r.dataset_source
    ax.set_title(f"{r.table}: {r.curve_metric} on {r.dataset} ({kind})", fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.9)
    return _png(fig)


def _split_key(key: str, suffixes: tuple[str, ...] | None = None) -> tuple[str, str, str]:
    """``sgm/omega_t`` -> (sgm, omega, t); ``ipr/reset`` -> (ipr, reset, "").

    ``suffixes``: the group's modality suffixes, as its model's trace family declares them; None
    (a group no family declares): any suffix of one or two characters."""
    family, _, name = key.partition("/")
    quantity, sep, suffix = name.rpartition("_")
    known = suffix in suffixes if suffixes is not None else len(suffix) <= 2
    if not sep or not known:
        return family, name, ""
    return family, quantity, suffix


def cell_trace_figures(
    traces: dict[str, dict[str, dict[int, list[float]]]],
    cells: list[str],
    simulated: bool,
    dataset: str,
    families: Sequence[TraceFamily] = (),
) -> dict[str, bytes]:
    """A PNG per trace group (sgm, ipr, ...): a row per quantity, a column per modality,
    a line per cell.

    ``families`` (the model's ``SPEC.traces``) say which suffixes of a group are modalities and in
    which column order; keys of a group no family declares are still drawn, split by their
    suffix."""
    import matplotlib.pyplot as plt
    import numpy as np

    over: dict[str, tuple[str, ...]] = {}
    for f in families:  # families of one group (steps and epochs) share its figure's columns
        seen = over.get(f.group, ())
        over[f.group] = seen + tuple(m for m in f.over if m not in seen)
    groups: dict[str, dict[str, dict[str, str]]] = {}
    for key in traces:
        family, quantity, suffix = _split_key(key, over.get(key.partition("/")[0]))
        groups.setdefault(family, {}).setdefault(quantity, {})[suffix] = key
    out: dict[str, bytes] = {}
    for family, quantities in sorted(groups.items()):
        order = {m: i for i, m in enumerate(over[family])} if family in over else MODALITY_ORDER
        ncols = max(len(s) for s in quantities.values())
        fig, axes = plt.subplots(
            len(quantities), ncols, figsize=(3.8 * ncols, 2.8 * len(quantities)), squeeze=False
        )
        for row, (_quantity, by_suffix) in enumerate(sorted(quantities.items())):
            ordered = sorted(by_suffix.items(), key=lambda kv: (order.get(kv[0], 9), kv[0]))
            for col, (_suffix, key) in enumerate(ordered):
                ax = axes[row][col]
                for cell in (c for c in cells if c in traces[key]):
                    i = cells.index(cell)  # one colour per cell across every figure
                    steps = sorted(traces[key][cell])
                    vals = [traces[key][cell][s] for s in steps]
                    mean = np.array([np.mean(v) for v in vals])
                    std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals])
                    ax.plot(steps, mean, color=f"C{i}", linewidth=1, label=cell)
                    ax.fill_between(
                        steps, mean - std, mean + std, color=f"C{i}", alpha=0.2, linewidth=0
                    )
                ax.set_title(key, fontsize=9)
                ax.set_xlabel("MLflow step", fontsize=7)
                ax.tick_params(labelsize=7)
                if row == 0 and col == 0:
                    ax.legend(fontsize=7)
            for col in range(len(by_suffix), ncols):
                axes[row][col].axis("off")
        kind = "simulation" if simulated else "data"
        fig.suptitle(
            f"{family} traces on {dataset} ({kind}): mean over seeds, band ± std", fontsize=10
        )
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.1, top=0.86, wspace=0.3, hspace=0.6)
        out[f"traces_{family}.png"] = _png(fig)
    return out
