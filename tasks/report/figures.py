"""The report's figures, as PNG bytes (matplotlib): the test metrics per cell beside the paper's,
the learning curves, and one figure per trace group (sgm, ipr, ...).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from msaflow.models.spec import TraceFamily
from msaflow.tasks.report.collect import Report

MODALITY_ORDER = {"t": 0, "a": 1, "v": 2, "c": 3}


def _png(fig: Any) -> bytes:
    from msaflow.tasks.plots import close

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
