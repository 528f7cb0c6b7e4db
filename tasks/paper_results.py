"""The papers' reported numbers, now held by the models that reproduce them, read from the registry.

Each model file transcribes its paper's tables (``shared/papers/*.md``) with their citation: beside
the ``TableSpec`` that reproduces each (``SPEC.tables[name].reference``), or for reference only
(``SPEC.references``: MMAFNet's Table 1 compares other methods; its other rows are in
``PaperTable.others``). Values are stored exactly as printed (accuracies and F1 in percent, MAE and
Corr as is) and keyed by our metric names, so a report can put them beside ours;
``PaperTable.value`` converts to our units (fractions). Why Acc2/F1 are read as the non-zero
(negative/positive) convention: ``models/mmafnet.py``, above its tables.

This module keeps the names the report and the tests use (``PAPER_TABLES``, ``paper_table``,
``PaperTable``, ``PERCENT_METRICS``) and maps a feature-store profile onto the paper dataset it
stands in for.
"""

from __future__ import annotations

from collections.abc import Mapping

from msaflow.models import RegistryView
from msaflow.models import paper_tables as _paper_tables
from msaflow.models.spec import PERCENT_METRICS, Citation, PaperTable

# Which paper dataset a feature-store profile stands in for (``sim-mosi`` -> the paper's CMU-MOSI).
PROFILE_TO_PAPER_DATASET = {"mosi": "CMU-MOSI", "mosei": "CMU-MOSEI", "iemocap": "IEMOCAP"}

# key -> table, over every registered model (rebuilt at each access: a model found later shows up)
PAPER_TABLES: Mapping[str, PaperTable] = RegistryView(_paper_tables)


def paper_table(key: str) -> PaperTable:
    tables = _paper_tables()
    if key not in tables:
        raise KeyError(f"no paper table {key!r}; expected one of {sorted(tables)}")
    return tables[key]


def paper_dataset_for(dataset_name: str) -> str | None:
    """The paper dataset a store stands in for: ``sim-mosi``, ``mosi-x0.05`` -> CMU-MOSI."""
    name = dataset_name.lower()
    for profile in sorted(PROFILE_TO_PAPER_DATASET, key=len, reverse=True):
        if profile in name:
            return PROFILE_TO_PAPER_DATASET[profile]
    return None


__all__ = [
    "PAPER_TABLES",
    "PERCENT_METRICS",
    "PROFILE_TO_PAPER_DATASET",
    "Citation",
    "PaperTable",
    "paper_dataset_for",
    "paper_table",
]
