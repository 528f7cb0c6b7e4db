"""The report as text: ``render_blocks`` turns a ``Report`` into blocks (``("h2", text)``,
``("p", text)``, ``("table", rows)``, ``("img", file, caption)``, ...) and ``to_markdown`` /
``to_html`` write them out; the number formats are shared with ``tasks.evidence``.
"""

from __future__ import annotations

import base64
import html
import math
import re
from typing import Any

from msaflow.tasks.paper_results import PERCENT_METRICS
from msaflow.tasks.report.collect import N_BOOT, Report
from msaflow.tasks.stats import Summary

Block = tuple[Any, ...]


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
    from msaflow.tasks.tracking import markdown_table

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
