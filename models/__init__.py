"""Model families and the registry that finds them.

Each model file defines its config, modules and a ``SPEC`` (``models/base.py``: variants, presets,
search space, trace families, the tables it reproduces); the registry is every module of this
package that defines ``SPEC``, plus every ``ModelSpec`` another package declares in the entry point
group ``msaflow.models``. Adding a model means adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import TypeVar

from msaflow.errors import ConfigError
from msaflow.models.base import MODALITIES, InputSpec, ModelOutput, ModelSpec, MSAModel
from msaflow.models.spec import Cell, PaperTable, ParamSpec, TableSpec, TraceFamily

ENTRY_POINT_GROUP = "msaflow.models"
HELPERS = frozenset({"base", "spec"})  # modules of this package that hold no model

V = TypeVar("V")


def add_spec(specs: dict[str, ModelSpec], spec: object, origin: str) -> None:
    """Add one discovered spec to ``specs``, refusing what is no ``ModelSpec`` and a second model,
    table or paper table of the same name. Both sources (this package, entry points) go
    through here."""
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"{origin}: expected a models.ModelSpec, got {type(spec).__name__}")
    if spec.name in specs:
        raise ConfigError(
            f"{origin}: a second model named {spec.name!r}; model names must be unique"
        )
    tables = {t: s.name for s in specs.values() for t in s.tables}
    papers = {p.key: s.name for s in specs.values() for p in _papers_of(s)}
    for name, table in spec.tables.items():
        if name in tables:
            raise ConfigError(
                f"{origin}: table {name!r} of {spec.name!r} is already a table of "
                f"{tables[name]!r}; table names must be unique"
            )
        if table.model != spec.name:
            raise ConfigError(
                f"{origin}: table {name!r} is listed by {spec.name!r} but runs "
                f"model={table.model!r}; a table belongs to its model's SPEC"
            )
    for paper in _papers_of(spec):
        if paper.key in papers:
            raise ConfigError(
                f"{origin}: paper table {paper.key!r} of {spec.name!r} is already held by "
                f"{papers[paper.key]!r}"
            )
    specs[spec.name] = spec


def _papers_of(spec: ModelSpec) -> list[PaperTable]:
    found = [t.reference for t in spec.tables.values() if t.reference is not None]
    return found + list(spec.references)


@cache
def registry() -> Mapping[str, ModelSpec]:
    """Every model, by name: this package's modules first (by file name), then entry points.

    Imported lazily and once (``import models`` stays cheap); ``registry.cache_clear()`` makes the
    next call look again (a package installed since, a test's toy model).
    """
    specs: dict[str, ModelSpec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in HELPERS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "SPEC"):
            add_spec(specs, module.SPEC, f"{__name__}.{info.name}.SPEC")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        add_spec(specs, ep.load(), f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP})")
    return MappingProxyType(specs)


def get_spec(name: str) -> ModelSpec:
    specs = registry()
    if name not in specs:
        raise KeyError(f"unknown model {name!r}; expected one of {sorted(specs)}")
    return specs[name]


def tables() -> dict[str, TableSpec]:
    """Every model's tables, by name (unique across models; ``add_spec`` checks)."""
    return {name: t for spec in registry().values() for name, t in spec.tables.items()}


def paper_tables() -> dict[str, PaperTable]:
    """Every paper table a model holds, by key: its tables' references and its other ones."""
    return {p.key: p for spec in registry().values() for p in _papers_of(spec)}


class RegistryView(Mapping[str, V]):
    """A read-only mapping rebuilt from the registry at each access, so a model discovered after
    import shows up in it (the module-level ``TABLES``, ``SPACES`` ... that predate the
    registry)."""

    def __init__(self, build: Callable[[], Mapping[str, V]]) -> None:
        self._build = build

    def __getitem__(self, key: str) -> V:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return f"RegistryView({dict(self._build())!r})"


__all__ = [
    "ENTRY_POINT_GROUP",
    "MODALITIES",
    "Cell",
    "InputSpec",
    "ModelOutput",
    "ModelSpec",
    "MSAModel",
    "PaperTable",
    "ParamSpec",
    "RegistryView",
    "TableSpec",
    "TraceFamily",
    "add_spec",
    "get_spec",
    "paper_tables",
    "registry",
    "tables",
]
