"""The search space: each model's default and optional parameters (from its ``SPEC``), a YAML
file's changes to them, their checks, and how a trial samples them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import optuna

from msaflow.models import RegistryView, registry
from msaflow.models.spec import ParamSpec  # re-exported: the space's type, defined with the models
from msaflow.tasks.config import ConfigError, TrainConfig, read_yaml, short_repr

# The search spaces live in each model's SPEC (``search_space``: the default parameters;
# ``optional_space``: those ``include=`` adds); these views keep the old per-model mappings.
SPACES: Mapping[str, dict[str, ParamSpec]] = RegistryView(
    lambda: {n: dict(s.search_space) for n, s in registry().items() if s.search_space}
)


OPTIONAL: Mapping[str, dict[str, ParamSpec]] = RegistryView(
    lambda: {n: dict(s.optional_space) for n, s in registry().items() if s.optional_space}
)


_SPEC_KEYS = {f.name for f in fields(ParamSpec)}


def _model_fields(model: str) -> set[str]:
    from msaflow.models import get_spec

    return {f.name for f in fields(get_spec(model).config_cls)}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {short_repr(value)}")
    try:
        return float(value)  # YAML reads 1e-4 (no dot) as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {short_repr(value)}") from None


def validate_space(model: str, space: dict[str, ParamSpec], where: str = "search space") -> None:
    """Every parameter a field of the model config or TrainConfig; ranges non-empty; log ranges
    > 0."""
    if not space:
        raise ConfigError(f"{where}: the search space is empty")
    model_fields, train_fields = _model_fields(model), {f.name for f in fields(TrainConfig)}
    for name, p in space.items():
        if p.type not in ("float", "int"):
            raise ConfigError(f"{where}: {name}.type must be float or int, got {p.type!r}")
        if p.target not in ("model", "train"):
            raise ConfigError(f"{where}: {name}.target must be model or train, got {p.target!r}")
        known = model_fields if p.target == "model" else train_fields
        if name not in known:
            raise ConfigError(
                f"{where}: unknown parameter {name!r}: not a field of the {model} "
                f"{'model config' if p.target == 'model' else 'TrainConfig'}; "
                f"expected one of {sorted(known)}"
            )
        if not (math.isfinite(p.low) and math.isfinite(p.high)) or p.low >= p.high:
            raise ConfigError(
                f"{where}: {name}: empty or inverted range: low ({p.low:g}) must be < high "
                f"({p.high:g})"
            )
        if p.log and p.low <= 0:
            raise ConfigError(
                f"{where}: {name}: a log-scale range needs low > 0, got low={p.low:g}"
            )
        if p.type == "int" and (not float(p.low).is_integer() or not float(p.high).is_integer()):
            raise ConfigError(
                f"{where}: {name}: an int range needs integer bounds, got [{p.low:g}, {p.high:g}]"
            )


def load_search_space(
    model: str,
    path: str | Path | None = None,
    include: list[str] | tuple[str, ...] = (),
    entries: dict[str, Any] | None = None,
) -> dict[str, ParamSpec]:
    """The model's default space, plus optional parameters named in ``include``, updated by a YAML
    file.

    The file maps a parameter to ``{low, high, log, type: float|int, target: model|train}``; keys
    left out keep the built-in definition of a known parameter; ``name: null`` drops a default
    parameter.
    """
    from msaflow.models import get_spec

    spec = get_spec(model)  # unknown model -> KeyError naming the known ones
    space = dict(spec.search_space)
    optional = spec.optional_space
    for name in include:
        if name not in optional:
            raise ConfigError(
                f"--include: {name!r} is not an optional parameter of {model}; "
                f"expected some of {sorted(optional)}"
            )
        space[name] = optional[name]
    where = "search space"
    if path is not None:
        path = Path(path)
        where = str(path)
        entries = read_yaml(path, "search-space file")
    if entries is not None and not isinstance(entries, dict):
        raise ConfigError(
            f"{where}: expected a mapping param -> {{low, high, log, type, target}}, got "
            f"{short_repr(entries)}"
        )
    train_fields = {f.name for f in fields(TrainConfig)}
    for name, entry in (entries or {}).items():
        if entry is None:
            space.pop(name, None)
            continue
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where}: {name}: expected a mapping {{low, high, log, type, target}}, got "
                f"{short_repr(entry)}"
            )
        unknown = sorted(set(entry) - _SPEC_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: {name}: unknown key(s) {unknown}; expected some of {sorted(_SPEC_KEYS)}"
            )
        base = space.get(name) or optional.get(name)
        if base is None:
            default_target = (
                "train" if name in train_fields and name not in _model_fields(model) else "model"
            )
            if "low" not in entry or "high" not in entry:
                raise ConfigError(f"{where}: {name}: a new parameter needs low and high")
            base = ParamSpec(0.0, 0.0, target=entry.get("target", default_target))
        merged = {**asdict(base), **entry}
        merged["low"] = _number(merged["low"], f"{where}: {name}.low")
        merged["high"] = _number(merged["high"], f"{where}: {name}.high")
        if not isinstance(merged["log"], bool):
            raise ConfigError(
                f"{where}: {name}.log: expected true/false, got {short_repr(merged['log'])}"
            )
        space[name] = ParamSpec(**merged)
    validate_space(model, space, where)
    return space


def space_to_dict(space: dict[str, ParamSpec]) -> dict[str, dict[str, Any]]:
    return {name: asdict(p) for name, p in space.items()}


def space_from_dict(data: dict[str, dict[str, Any]]) -> dict[str, ParamSpec]:
    return {name: ParamSpec(**p) for name, p in data.items()}


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec]) -> dict[str, dict[str, Any]]:
    """Sample the space -> ``{"model": {...}, "train": {...}}`` overrides."""
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for name, p in space.items():
        if p.type == "int":
            value: Any = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            value = trial.suggest_float(name, p.low, p.high, log=p.log)
        out[p.target][name] = value
    return out


def split_params(params: dict[str, Any], space: dict[str, ParamSpec]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for name, value in params.items():
        target = space[name].target if name in space else "model"
        out[target][name] = value
    return out
