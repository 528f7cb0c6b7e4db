"""The parts of a ``ModelSpec`` beyond the model itself: its search space, its trace families and
the tables it reproduces, with the papers' figures beside them.

They live here, under ``models/``, so that a model file can state all of its facts without
importing ``tasks`` or ``flows`` (the layers only point down). ``tasks.tuning``,
``tasks.paper_results`` and ``flows.reproduce`` re-export them under their old names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from msaflow.errors import ConfigError

# ----------------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class ParamSpec:
    """One tuned parameter: a range, a scale, a type and where it goes (model config or train
    config)."""

    low: float
    high: float
    log: bool = False
    type: str = "float"  # float | int
    target: str = "model"  # model | train


# ---------------------------------------------------------------------------------- trace families


@dataclass(frozen=True)
class TraceFamily:
    """A group of trace keys a model logs (``sgm/omega_t`` ...), drawn as one figure per run.

    ``panels`` maps a panel title to a key pattern whose ``{m}`` runs over ``over`` (the modality
    suffixes, in column order). ``x`` says which rows hold the keys: ``step`` for what
    ``after_backward`` returns, ``epoch`` for ``on_epoch_end``. The family is drawn when its first
    key (first panel, first suffix) was logged; the report groups every key under ``group/`` with
    it, declared in a panel or not.
    """

    name: str  # the figure's title: "SGM"
    x: Literal["step", "epoch"]
    panels: dict[str, str]  # panel title -> key pattern: {"omega": "sgm/omega_{m}"}
    file: str  # the run's artifact: "plots/sgm_traces.png"
    over: tuple[str, ...] = ("t", "a", "v")

    def keys(self, panel: str) -> list[str]:
        return [self.panels[panel].format(m=m) for m in self.over]

    @property
    def group(self) -> str:
        """The key prefix: ``sgm`` for ``sgm/omega_{m}``."""
        return next(iter(self.panels.values())).partition("/")[0]

    @property
    def first_key(self) -> str:
        return self.keys(next(iter(self.panels)))[0]


# --------------------------------------------------------------------------- the papers' figures

# Metrics the papers print in percent; ours are fractions in [0, 1].
PERCENT_METRICS = frozenset(
    {
        "acc2_non0",
        "acc2_has0",
        "f1_non0",
        "f1_has0",
        "acc5",
        "acc7",
        "acc",
        "acc_avg",
        "f1_avg",
        "f1_weighted",
        "f1_macro",
    }
)


@dataclass(frozen=True)
class Citation:
    title: str
    authors: str
    venue: str
    source: str  # where in this project the text lives

    def text(self) -> str:
        return f"{self.authors}. {self.title}. {self.venue}."


@dataclass(frozen=True)
class PaperTable:
    """One table of a paper: ``results[dataset][cell][metric]`` as printed.

    Values are stored exactly as printed (accuracies and F1 in percent, MAE and Corr as is) and
    keyed by our metric names; ``value`` converts to our units (fractions). Rows are keyed by our
    cell names; ``row_labels`` keeps the paper's wording. ``others`` holds rows that are no cell of
    ours (other methods in a comparison table): ``others[method][dataset][metric]``, reference only.
    """

    key: str
    citation: Citation
    table: str  # "Table 2"
    caption: str
    results: dict[str, dict[str, dict[str, float]]]
    row_labels: dict[str, str]  # our cell name -> the paper's row label
    notes: tuple[str, ...] = field(default_factory=tuple)
    others: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return list(self.results)

    def value(self, dataset: str, cell: str, metric: str) -> float | None:
        """The paper's number in our units (fractions for accuracies), or None when not reported."""
        raw = self.results.get(dataset, {}).get(cell, {}).get(metric)
        if raw is None:
            return None
        return raw / 100.0 if metric in PERCENT_METRICS else raw

    def metrics(self) -> list[str]:
        seen: dict[str, None] = {}
        for rows in self.results.values():
            for values in rows.values():
                seen.update(dict.fromkeys(values))
        return list(seen)


# ----------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Cell:
    """One column of a results table: a variant, a display name and config overrides.

    ``model`` names another model family than the table's (a comparison table such as MMAFNet's
    Table 1, whose rows are other methods); None is the table's own model."""

    name: str
    variant: str
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: str | None = None

    def __hash__(self) -> int:
        return hash((self.name, self.variant, repr(sorted(self.overrides.items())), self.model))


@dataclass(frozen=True)
class TableSpec:
    """A results table to reproduce: the model, its cells, the baseline each cell is compared
    with, and the paper's figures that go beside ours.

    ``reference`` is the paper's table itself; ``paper`` its key (set from ``reference`` when only
    that is given), or the key of a paper table another spec holds; both None: no paper figures.
    """

    model: str
    cells: tuple[Cell, ...]
    baseline: str | Mapping[str, str]  # one cell for all, or cell -> its baseline
    description: str
    paper: str | None = None
    # Model overrides in ``scaled`` are given for ``paper_epochs`` of training; at another epoch
    # count they keep the same fraction (Table 3's 15..30 of 50 epochs -> 0.3..0.6 of the run).
    paper_epochs: int | None = None
    scaled: tuple[str, ...] = field(default_factory=tuple)
    reference: PaperTable | None = None

    def __post_init__(self) -> None:
        if self.reference is None:
            return
        if self.paper is None:
            object.__setattr__(self, "paper", self.reference.key)  # frozen: set once, here
        elif self.paper != self.reference.key:
            raise ConfigError(
                f"table of {self.model}: paper={self.paper!r} but its reference is "
                f"{self.reference.key!r}; give one of them"
            )

    def baselines(self) -> dict[str, str]:
        if isinstance(self.baseline, str):
            return {c.name: self.baseline for c in self.cells}
        return {c.name: self.baseline.get(c.name, c.name) for c in self.cells}

    def resolve_cells(self, epochs: int) -> list[Cell]:
        if not self.scaled or not self.paper_epochs or epochs == self.paper_epochs:
            return list(self.cells)
        out = []
        for cell in self.cells:
            model = dict(cell.overrides.get("model", {}))
            for key in self.scaled:
                if key in model:  # round half up, at least one epoch
                    model[key] = max(1, int(model[key] * epochs / self.paper_epochs + 0.5))
            out.append(dataclasses.replace(cell, overrides={**cell.overrides, "model": model}))
        return out

    def model_of(self, cell: Cell) -> str:
        return cell.model or self.model

    @property
    def models(self) -> list[str]:
        """Every model family the table trains, the table's own first."""
        return list(dict.fromkeys([self.model, *(self.model_of(c) for c in self.cells)]))
