"""What a user supplies to a flow, checked before the flow starts (the CLI and the API call these
first, so a bad option is one clear error instead of a failed flow run).

``check_pipeline_inputs`` (the ``pipeline`` flow), ``check_tune_inputs`` (``tune``), ``get_table``
(``reproduce``: the tables, ``TABLES``) and the pieces they share: ``model_spec``, ``check_preset``,
``load_params_file``, ``resolve_cells``.
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any

from msaflow.errors import ConfigError
from msaflow.models import RegistryView, TableSpec, get_spec
from msaflow.models import tables as model_tables
from msaflow.models.spec import Cell
from msaflow.tasks.config import load_overrides_file, resolve_run_config
from msaflow.tasks.prepare import check_data


def model_spec(model: str):
    """The model's spec; an unknown name is a ConfigError naming the known ones."""
    try:
        return get_spec(model)
    except KeyError as exc:
        raise ConfigError(f"--model: {exc.args[0]}") from None


def check_preset(model: str, preset: str) -> None:
    spec = model_spec(model)
    if preset not in spec.presets:
        raise ConfigError(
            f"--preset: model {model!r} has no preset {preset!r}; expected one of "
            f"{list(spec.presets)}"
        )


def load_params_file(path: str | None, model: str, preset: str) -> dict[str, Any]:
    """A ``--params`` YAML, its keys and values checked against the model (errors name the file)."""
    if not path:
        return {}
    overrides = load_overrides_file(path)
    try:
        resolve_run_config(
            model,
            None,
            preset,
            model_overrides=overrides.get("model"),
            train_overrides=overrides.get("train"),
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return overrides


def resolve_cells(model: str, variants: list[str] | None, cells: list[dict] | None) -> list[Cell]:
    if cells:
        return [c if isinstance(c, Cell) else Cell(**c) for c in cells]
    spec = model_spec(model)
    names = variants or list(spec.variants)
    unknown = [v for v in names if v not in spec.variants]
    if unknown:
        raise ConfigError(
            f"--variants: model {model!r} has no variant(s) {unknown}; "
            f"expected some of {list(spec.variants)}"
        )
    return [Cell(name=v, variant=v) for v in names]


def check_pipeline_inputs(
    *,
    data: str | None = None,
    model: str = "mmafnet",
    variants: list[str] | None = None,
    seeds: list[int] | None = None,
    preset: str = "quick",
    epochs: int | None = None,
    params_file: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    cells: list[dict[str, Any]] | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    folds: int = 0,
) -> dict[str, Any]:
    """Everything a user supplies to the pipeline, checked and resolved once, before a flow starts.

    Returns the resolved ``model_overrides``, ``train_overrides`` (the params file and ``epochs``
    folded in), ``cells`` and ``seeds``; every cell's config resolves. A bad value raises
    ``ConfigError``/``DataError`` naming the option.
    """
    check_data(data, scale, data_format)
    check_preset(model, preset)
    file_overrides = load_params_file(params_file, model, preset)
    model_overrides = {**file_overrides.get("model", {}), **(model_overrides or {})}
    train_overrides = {**file_overrides.get("train", {}), **(train_overrides or {})}
    if epochs is not None:
        train_overrides["epochs"] = epochs
    cell_list = resolve_cells(model, variants, cells)
    seeds = list(seeds or [1])
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"--seeds: expected integers, got {seeds!r}")
    if folds == 1 or folds < 0:
        raise ConfigError(f"--folds: expected 0 (no cross-validation) or k >= 2, got {folds}")
    for cell in cell_list:
        resolve_run_config(
            model,
            cell.variant,
            preset,
            model_overrides={**model_overrides, **cell.overrides.get("model", {})},
            train_overrides={
                **train_overrides,
                **cell.overrides.get("train", {}),
                "seed": seeds[0],
            },
        )
    return {
        "model_overrides": model_overrides,
        "train_overrides": train_overrides,
        "cells": cell_list,
        "seeds": seeds,
    }


def check_tune_inputs(
    *,
    model: str = "mmafnet",
    data: str | None = None,
    n_trials: int = 20,
    workers: int = 1,
    metric: str = "auto",
    sampler: str = "tpe",
    pruner: str = "median",
    pruner_options: dict[str, Any] | None = None,
    space_file: str | None = None,
    space: dict[str, Any] | None = None,
    include: list[str] | None = None,
    preset: str = "quick",
    variant: str | None = None,
    epochs: int | None = None,
    storage: str | None = None,
    scale: float = 1.0,
    data_format: str = "mmsa",
    train_overrides: dict[str, Any] | None = None,
    heartbeat_interval: int = 10,
    grace_period: int = 30,
) -> dict[str, Any]:
    """Everything a user supplies to ``tune``, checked before a flow starts (the CLI calls it
    first).

    Returns the resolved ``direction``, ``variant``, ``search_space`` and ``storage_url``.
    """
    from msaflow.tasks import tuning as tu

    # "auto": the data task's default selection metric, known once the data is resolved
    direction = None if metric == "auto" else tu.metric_direction(metric)  # refuses test/... early
    if n_trials < 1 or workers < 1:
        raise ConfigError("--trials and --workers must be >= 1")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs: expected >= 1, got {epochs}")
    spec_model = model_spec(model)
    variant = variant or spec_model.default_variant
    if variant not in spec_model.variants:
        raise ConfigError(
            f"model {model!r} has no variant {variant!r}; expected one of "
            f"{list(spec_model.variants)}"
        )
    check_preset(model, preset)
    resolve_run_config(
        model,
        variant,
        preset,
        train_overrides={
            **(train_overrides or {}),
            **({"epochs": epochs} if epochs is not None else {}),
        },
    )
    search_space = tu.load_search_space(model, space_file, include or (), entries=space)
    tu.make_sampler(sampler, 0)
    tu.make_pruner(pruner, epochs or 1, pruner_options)
    check_data(data, scale, data_format)
    storage_url = storage or tu.default_storage_url()
    tu.make_storage(storage_url, heartbeat_interval, grace_period)  # a bad URL fails here, clearly
    return {
        "direction": direction,
        "variant": variant,
        "search_space": search_space,
        "storage_url": storage_url,
    }


# Every model's tables (each model file's ``SPEC.tables``), read from the registry at each lookup;
# the first map takes tables registered here at run time (tests add a cut-down table this way).
TABLES: ChainMap[str, TableSpec] = ChainMap({}, RegistryView(model_tables))


def get_table(name: str) -> TableSpec:
    if name not in TABLES:
        raise ConfigError(f"unknown table {name!r}; expected one of: {', '.join(sorted(TABLES))}")
    return TABLES[name]
