"""PNG plots of learning curves and modulation traces (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _series(rows: Sequence[dict], x: str, key: str) -> tuple[list, list]:
    xs, ys = [], []
    for row in rows:
        if key in row:
            xs.append(row[x])
            ys.append(row[key])
    return xs, ys


def learning_curves(
    history: Sequence[dict], metrics: Sequence[str] = ("loss", "mae", "acc7", "acc")
) -> Figure:
    present = [m for m in metrics if any(f"valid/{m}" in r for r in history)]
    fig, axes = plt.subplots(
        1, max(len(present), 1), figsize=(4 * max(len(present), 1), 3.2), squeeze=False
    )
    for ax, metric in zip(axes[0], present, strict=False):
        for split, style in (("train", "--"), ("valid", "-")):
            key = (
                f"{split}/{metric}" if metric != "loss" or split == "valid" else "train/loss/total"
            )
            xs, ys = _series(history, "epoch", key)
            if xs:
                ax.plot(xs, ys, style, label=split)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    return fig


def trace_plot(
    rows: Sequence[dict], x: str, groups: dict[str, Sequence[str]], title: str
) -> Figure:
    """One panel per group (e.g. ``{"omega": ["sgm/omega_t", ...], "phi": [...]}``)."""
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.2), squeeze=False)
    for ax, (name, keys) in zip(axes[0], groups.items(), strict=True):
        for key in keys:
            xs, ys = _series(rows, x, key)
            if xs:
                ax.plot(xs, ys, label=key.split("/")[-1], linewidth=1)
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel(x)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_trace_figures(
    step_traces: Sequence[dict], epoch_traces: Sequence[dict]
) -> dict[str, Figure]:
    """Figures for whichever trace groups the model produced, keyed by artifact file name."""
    figs: dict[str, Figure] = {}
    mods = ("t", "a", "v")
    if any("sgm/omega_t" in r for r in step_traces):
        figs["plots/sgm_traces.png"] = trace_plot(
            step_traces,
            "step",
            {"omega": [f"sgm/omega_{m}" for m in mods], "phi": [f"sgm/phi_{m}" for m in mods]},
            "SGM",
        )
    if any("ipr/dist_t" in r for r in epoch_traces):
        figs["plots/ipr_traces.png"] = trace_plot(
            epoch_traces,
            "epoch",
            {
                "distance": [f"ipr/dist_{m}" for m in mods],
                "reset weight": [f"ipr/phi_{m}" for m in mods],
            },
            "IPR",
        )
    if any("afm/g_t" in r for r in epoch_traces):
        figs["plots/afm_gates.png"] = trace_plot(
            epoch_traces, "epoch", {"gate": [f"afm/g_{m}" for m in (*mods, "c")]}, "AFM"
        )
    if any("probe/epoch_acc_t" in r for r in epoch_traces):
        figs["plots/probe_accuracy.png"] = trace_plot(
            epoch_traces,
            "epoch",
            {"accuracy": [f"probe/epoch_acc_{m}" for m in mods]},
            "SGM probes",
        )
    return figs


def close(fig: Figure) -> None:
    plt.close(fig)
