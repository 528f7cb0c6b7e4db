"""PNG plots of learning curves and modulation traces (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from msaflow.models.spec import TraceFamily  # noqa: E402


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
    step_traces: Sequence[dict],
    epoch_traces: Sequence[dict],
    families: Sequence[TraceFamily] | None = None,
) -> dict[str, Figure]:
    """A figure per trace family the model produced, keyed by artifact file name.

    ``families``: the run's model's ``SPEC.traces``; None: every registered model's.
    """
    if families is None:
        from msaflow.models import registry

        families = [f for spec in registry().values() for f in spec.traces]
    figs: dict[str, Figure] = {}
    for family in families:
        rows = step_traces if family.x == "step" else epoch_traces
        if family.file in figs or not any(family.first_key in r for r in rows):
            continue
        panels = {panel: family.keys(panel) for panel in family.panels}
        figs[family.file] = trace_plot(rows, family.x, panels, family.name)
    return figs


def close(fig: Figure) -> None:
    plt.close(fig)
