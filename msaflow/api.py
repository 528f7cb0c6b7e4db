"""The Python API, for notebooks: ``msaflow.run``, ``reproduce``, ``tune`` and ``load_dataset``.

Each function calls the same flow as its CLI command (``flows.pipeline.pipeline``,
``flows.reproduce.reproduce``, ``flows.tune.tune``), after the same checks, and turns the flow's
dict into a frozen dataclass. ``data`` takes what ``--data`` takes: ``sim-<profile>`` (default
``sim-mosi``), a feature-store folder, an MMSA/MulT ``.pkl`` (ingested into
``$MSAFLOW_HOME/stores``) or a raw-input manifest ``.csv`` (extracted first). A mistake in what the
caller passes raises ``msaflow.errors.ConfigError`` or ``DataError`` (never ``SystemExit``), named
by the keyword it came from; an unusable tracking store raises ``tasks.tracking.TrackingError``
before anything trains. A run that fails during training does not raise: it is in ``failures``.

Settings, applied once when this module is imported (``import msaflow`` alone applies nothing; the
first ``msaflow.run``, ``msaflow.RunResult`` ... imports this module). They are process-wide
because the libraries read them once, when they are first imported (Prefect, torch's OpenMP,
huggingface_hub), and Prefect hands them to its server subprocess through the environment; a
value set only for the duration of a call would silently not apply. So they go to ``os.environ``,
each only where the caller has not set it (``os.environ.setdefault``: a value already there is
never overwritten, so any of them can be opted out of by setting it before the import):

- ``MSAFLOW_HOME``: pinned to its absolute path (default ``./.msaflow`` of the working directory at
  import), so that an ``os.chdir`` later in the notebook does not split stores and MLflow from
  Prefect's state;
- ``PREFECT_HOME``, ``PREFECT_RESULTS_LOCAL_STORAGE_PATH``, ``PREFECT_LOCAL_STORAGE_PATH``:
  Prefect's database and cached task results under ``$MSAFLOW_HOME/prefect``, never
  ``~/.prefect``;
  ``PREFECT_RESULTS_PERSIST_BY_DEFAULT=true`` (the content cache that skips finished runs);
  ``PREFECT_LOGGING_LEVEL=WARNING``; ``PREFECT_SERVER_ANALYTICS_ENABLED=false``;
  ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90`` (its temporary server on a busy machine);
- ``MLFLOW_DISABLE_TELEMETRY=true``, ``DO_NOT_TRACK=true``: no telemetry;
- ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, ``TOKENIZERS_PARALLELISM=false``: nothing
  downloads at run time (set ``HF_HUB_OFFLINE=0`` first where the notebook needs the Hub);
- ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads make torch 10-20x slower on shared cores;
  it only applies when torch is imported after this module.

These are ``msaflow.settings.apply_defaults``'s defaults, as the CLI applies them; ``APPLIED`` holds
what this import set. Where Prefect was imported before this module (with the user's settings), it
is told to read its settings again, so its state still goes under ``$MSAFLOW_HOME``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from msaflow.errors import ConfigError, DataError
from msaflow.settings import apply_defaults, msaflow_home

if TYPE_CHECKING:
    import pandas

    from msaflow.feature_store import Manifest, SplitData

__all__ = [
    "APPLIED",
    "Dataset",
    "DatasetRef",
    "Failure",
    "Registered",
    "ReproduceResult",
    "RunResult",
    "RunRow",
    "Trial",
    "TuneResult",
    "load_dataset",
    "reproduce",
    "run",
    "tune",
]


def _apply_settings() -> dict[str, str]:
    """``apply_defaults`` plus ``MSAFLOW_HOME`` pinned; returns what was set (see module doc)."""
    before = dict(os.environ)
    os.environ.setdefault("MSAFLOW_HOME", str(msaflow_home()))
    apply_defaults()
    applied = {k: v for k, v in os.environ.items() if before.get(k) != v}
    context = sys.modules.get("prefect.context")
    if context is not None and any(k.startswith("PREFECT_") for k in applied):
        context.refresh_global_settings_context()  # Prefect read its settings before ours
    return applied


APPLIED: Mapping[str, str] = MappingProxyType(_apply_settings())


# ------------------------------------------------------------------------------ result types
@dataclass(frozen=True)
class DatasetRef:
    """The dataset a flow read: its store folder, name, data kind and content hash."""

    name: str
    path: Path
    data_kind: str  # sentiment | emotion | depression (the manifest's "task")
    source: str
    content_hash: str
    class_names: tuple[str, ...] | None = None

    @classmethod
    def _from(cls, ref: Mapping[str, Any]) -> DatasetRef:
        names = ref.get("class_names")
        return cls(
            name=ref["name"],
            path=Path(ref["path"]),
            data_kind=ref["task"],
            source=ref.get("source", ""),
            content_hash=ref.get("manifest_hash", ""),
            class_names=tuple(names) if names else None,
        )

    @property
    def task(self) -> str:
        """Deprecated: ``data_kind``'s old name."""
        return self.data_kind


@dataclass(frozen=True)
class RunRow:
    """One finished child run: (cell, seed) and its metrics, keyed as in MLflow (``test/mae``)."""

    run_id: str
    run_name: str
    model: str
    cell: str
    variant: str
    seed: int
    best_epoch: int
    valid: Mapping[str, float]  # ``valid/...`` at the selected (best) epoch
    test: Mapping[str, float]  # ``test/...`` at that epoch
    cached: bool = False  # taken from Prefect's cache, trained by an earlier call
    linked_run_id: str | None = None  # the link child of a cached run in this call's parent

    @classmethod
    def _from(cls, row: Mapping[str, Any]) -> RunRow:
        return cls(
            run_id=row["run_id"],
            run_name=row["run_name"],
            model=row.get("model", ""),
            cell=row["cell"],
            variant=row.get("variant", row["cell"]),
            seed=int(row["seed"]),
            best_epoch=int(row.get("best_epoch", -1)),
            valid={k: float(v) for k, v in row.items() if k.startswith("valid/")},
            test={k: float(v) for k, v in row.items() if k.startswith("test/")},
            cached=bool(row.get("cached", False)),
            linked_run_id=row.get("linked_run_id"),
        )


@dataclass(frozen=True)
class Failure:
    """A (cell, seed) whose training or evaluation failed; re-running the same call retries it."""

    run_name: str
    cell: str
    seed: int
    error: str

    @classmethod
    def _from(cls, f: Mapping[str, Any]) -> Failure:
        return cls(f["run_name"], f["cell"], int(f["seed"]), f["error"])


@dataclass(frozen=True)
class Registered:
    """A model version in the MLflow Model Registry: the best run of a model family, chosen on
    validation, at ``model_uri`` (``models:/msaflow-<experiment>-<model>@best``)."""

    name: str
    version: int
    run_id: str
    model_uri: str
    metric: str  # the validation metric that chose it
    value: float
    alias_moved: bool  # this call pointed @best at a new version

    @classmethod
    def _from(cls, r: Mapping[str, Any]) -> Registered:
        return cls(
            r["name"],
            int(r["version"]),
            r["run_id"],
            r["model_uri"],
            r["metric"],
            float(r["value"]),
            bool(r.get("alias_moved")),
        )


def _registered(result: Mapping[str, Any]) -> tuple[Registered, ...]:
    return tuple(Registered._from(r) for r in result.get("registered") or ())


def _frame(rows: Sequence[RunRow]) -> pandas.DataFrame:
    import pandas as pd

    records = [
        {
            "cell": r.cell,
            "variant": r.variant,
            "seed": r.seed,
            "run_id": r.run_id,
            "run_name": r.run_name,
            "best_epoch": r.best_epoch,
            "cached": r.cached,
            **dict(sorted(r.valid.items())),
            **dict(sorted(r.test.items())),
        }
        for r in rows
    ]
    columns = ["cell", "variant", "seed", "run_id", "run_name", "best_epoch", "cached"]
    return pd.DataFrame.from_records(records, columns=columns if not records else None)


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What ``run`` did: one row per finished (cell, seed), the failures, where MLflow has them."""

    rows: tuple[RunRow, ...]
    failures: tuple[Failure, ...]
    parent_run_id: str
    experiment: str
    experiment_id: str
    tracking_uri: str
    dataset: DatasetRef

    @property
    def ok(self) -> bool:
        """No run failed."""
        return not self.failures

    def to_frame(self) -> pandas.DataFrame:
        """The rows as a pandas DataFrame: cell, variant, seed, run_id, ..., then every
        ``valid/...`` and ``test/...`` metric as a column."""
        return _frame(self.rows)

    @classmethod
    def _fields_from(cls, result: Mapping[str, Any]) -> dict[str, Any]:
        return dict(
            rows=tuple(RunRow._from(r) for r in result["rows"]),
            failures=tuple(Failure._from(f) for f in result["failures"]),
            parent_run_id=result["parent_run_id"],
            experiment=result["experiment"],
            experiment_id=result["experiment_id"],
            tracking_uri=result["tracking_uri"],
            dataset=DatasetRef._from(result["dataset"]),
        )


@dataclass(frozen=True, kw_only=True)
class ReproduceResult(RunResult):
    """``RunResult`` of a table's reproduction, with its report (Markdown and HTML)."""

    table: str
    resumed: bool  # the reproduction's parent run existed: finished runs came from the cache
    report_path: Path | None  # the Markdown report; None when no run finished (report_error)
    report_html_path: Path | None
    report_error: str | None = None
    # the best run per model family on validation, in the Model Registry (empty if it failed)
    registered: tuple[Registered, ...] = ()

    @property
    def report_markdown(self) -> str:
        """The report's Markdown text ('' without a report)."""
        return self.report_path.read_text(encoding="utf-8") if self.report_path else ""


@dataclass(frozen=True)
class Trial:
    """One Optuna trial of a study."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None
    params: Mapping[str, Any]
    epochs_run: int = 0


@dataclass(frozen=True, kw_only=True)
class TuneResult:
    """What ``tune`` did: the study, its best params and value, every trial, the test evaluation."""

    study: str
    storage: str  # the storage URL, password masked
    metric: str
    direction: str
    best_value: float | None  # None when no trial completed
    best_params: Mapping[str, Mapping[str, Any]] | None  # {model: {...}, train: {...}}
    best_path: Path | None  # best.yaml, for ``run(params=...)``
    counts: Mapping[str, int]  # trials per state
    finished: int  # complete + pruned
    epochs_spent: int
    trials: tuple[Trial, ...]
    evaluation: tuple[RunRow, ...]  # the best params on test, one row per eval seed
    evaluation_failures: tuple[Failure, ...]
    test: Mapping[str, float]  # mean and std over the eval seeds (``best_test_mae_mean`` ...)
    failed_workers: int
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    dataset: DatasetRef
    # the best params' best evaluation run on validation, in the Model Registry
    registered: tuple[Registered, ...] = ()

    def to_frame(self) -> pandas.DataFrame:
        """The trials as a pandas DataFrame: number, state, value, epochs_run, then each param."""
        import pandas as pd

        records = [
            {
                "number": t.number,
                "state": t.state,
                "value": t.value,
                "epochs_run": t.epochs_run,
                **t.params,
            }
            for t in self.trials
        ]
        return pd.DataFrame.from_records(
            records, columns=None if records else ["number", "state", "value", "epochs_run"]
        )

    def evaluation_frame(self) -> pandas.DataFrame:
        """The test evaluation of the best params, one row per seed (as ``RunResult.to_frame``)."""
        return _frame(self.evaluation)


@dataclass(frozen=True)
class Dataset:
    """A feature store, loaded: its manifest and its splits (``ds["train"].features["text"]``)."""

    path: Path
    manifest: Manifest
    splits: Mapping[str, SplitData] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def data_kind(self) -> str:
        return self.manifest.data_kind

    @property
    def task(self) -> str:
        """Deprecated: ``data_kind``'s old name."""
        return self.data_kind

    def __getitem__(self, split: str) -> SplitData:
        if split not in self.splits:
            raise KeyError(
                f"dataset {self.name!r} has no split {split!r} loaded; "
                f"expected one of {list(self.splits)}"
            )
        return self.splits[split]


# ------------------------------------------------------------------------------ errors
# The flows' messages name the CLI's options; here they name this module's keywords.
_KEYWORDS = {
    "--data": "data",
    "--format": "data_format",
    "--scale": "scale",
    "--model": "model",
    "--variants": "variants",
    "--seeds": "seeds",
    "--preset": "preset",
    "--params": "params",
    "--epochs": "epochs",
    "--folds": "folds",
    "--workers": "workers",
    "--trials": "trials",
    "--eval-seeds": "eval_seeds",
    "--metric": "metric",
    "--sampler": "sampler",
    "--pruner-warmup": "pruner_warmup",
    "--pruner": "pruner",
    "--space": "space",
    "--include": "include",
    "--storage": "storage",
    "--study": "study",
    "--tracking-uri": "tracking_uri",
}


def _keywords(text: str) -> str:
    import re

    pattern = "|".join(re.escape(k) for k in _KEYWORDS)  # --pruner-warmup before --pruner
    return re.sub(rf"(?<![\w-])({pattern})(?![\w-])", lambda m: _KEYWORDS[m.group(1)], text)


@contextmanager
def _named_by_keyword() -> Iterator[None]:
    """A ConfigError or DataError from the checks, its option names turned into keywords (the
    traceback kept, the message replaced)."""
    try:
        yield
    except DataError as exc:
        field, expected = _keywords(str(exc.field)), _keywords(str(exc.expected))
        if type(exc) is not DataError or (field, expected) == (exc.field, exc.expected):
            raise
        raise DataError(exc.path, field, expected).with_traceback(exc.__traceback__) from None
    except ConfigError as exc:
        text = _keywords(str(exc))
        if type(exc) is not ConfigError or text == str(exc):
            raise
        raise ConfigError(text).with_traceback(exc.__traceback__) from None


def _data(data: str | os.PathLike[str] | None) -> str | None:
    if data is None or isinstance(data, str):
        return data
    if isinstance(data, os.PathLike):
        return os.fspath(data)
    raise ConfigError(f"data: expected a path or sim-<profile>, got {type(data).__name__}")


def _names(value: str | Sequence[str] | None, keyword: str) -> list[str] | None:
    """``"none,full"`` or ``["none", "full"]`` -> ``["none", "full"]``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{keyword}: expected names, got {value!r}")
    return [v.strip() for v in items if v.strip()] or None


def _seed_list(seeds: Sequence[int], keyword: str = "seeds") -> list[int]:
    """A list of integer seeds (numpy integers too); a bare int or anything else is refused."""
    if isinstance(seeds, (Integral, str)) or not all(
        isinstance(s, Integral) and not isinstance(s, bool) for s in seeds
    ):
        raise ConfigError(
            f"{keyword}: expected a list of integer seeds such as [1, 2], got {seeds!r}"
        )
    return [int(s) for s in seeds]


def _str_path(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)


# ------------------------------------------------------------------------------ the API
def run(
    data: str | os.PathLike[str] | None = None,
    model: str = "mmafnet",
    variants: str | Sequence[str] | None = None,
    seeds: Sequence[int] = (1,),
    *,
    epochs: int | None = None,
    preset: str = "quick",
    params: str | os.PathLike[str] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    experiment: str = "msaflow",
    tracking_uri: str | None = None,
    data_format: str = "mmsa",
    scale: float = 1.0,
    folds: int = 0,
    workers: int = 1,
    force: bool = False,
) -> RunResult:
    """``msaflow run``: train and evaluate ``model`` for every variant (default: all) and seed.

    ``params`` is an overrides YAML (``{model: {...}, train: {...}}``, e.g. tune's best.yaml);
    ``model_overrides``/``train_overrides`` win over it, ``epochs`` over both. ``workers`` trainings
    run at once (threads). An unchanged call takes finished runs from the cache (``force``
    retrains).
    """
    from msaflow.prefect_server import start_prefect_early

    prefect_ready = start_prefect_early()
    with _named_by_keyword():
        data = _data(data)
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers: expected an integer >= 1, got {workers!r}")
        from msaflow.flows.pipeline import pipeline
        from msaflow.settings import default_tracking_uri
        from msaflow.tasks.checks import check_pipeline_inputs
        from msaflow.tasks.tracking import check_tracking

        names = _names(variants, "variants")
        inputs = check_pipeline_inputs(
            data=data,
            model=model,
            variants=names,
            seeds=_seed_list(seeds),
            preset=preset,
            epochs=epochs,
            params_file=_str_path(params),
            model_overrides=dict(model_overrides or {}),
            train_overrides=dict(train_overrides or {}),
            scale=scale,
            data_format=data_format,
            folds=folds,
        )
    check_tracking(tracking_uri or default_tracking_uri())
    flow = pipeline
    if workers > 1:
        from msaflow.flows.serve import task_runner_for

        flow = pipeline.with_options(task_runner=task_runner_for("thread", workers))
    prefect_ready()
    with _named_by_keyword():
        result = flow(
            data=data,
            model=model,
            variants=names,
            seeds=inputs["seeds"],
            preset=preset,
            experiment=experiment,
            tracking_uri=tracking_uri,
            model_overrides=inputs["model_overrides"],
            train_overrides=inputs["train_overrides"],
            scale=scale,
            data_format=data_format,
            folds=folds,
            force=force,
        )
    return RunResult(**RunResult._fields_from(result))


def reproduce(
    table: str,
    data: str | os.PathLike[str] | None = None,
    seeds: int | Sequence[int] = 5,
    *,
    epochs: int | None = None,
    preset: str = "quick",
    params: str | os.PathLike[str] | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    tracking_uri: str | None = None,
    out: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    data_format: str = "mmsa",
    scale: float = 1.0,
) -> ReproduceResult:
    """``msaflow reproduce``: every cell of a paper's ``table`` x seeds under one parent, and a
    report.

    ``seeds=n`` means seeds 1..n (a list: those seeds). The report goes to ``out`` (default
    ``$MSAFLOW_HOME/reports/<experiment>/report.md``), the experiment defaults to
    ``reproduce-<table>``. Calling it again resumes: finished runs are not redone.
    """
    from msaflow.prefect_server import start_prefect_early

    prefect_ready = start_prefect_early()
    with _named_by_keyword():
        data = _data(data)
        if isinstance(seeds, Integral) and not isinstance(seeds, bool):
            seeds = int(seeds)  # n: seeds 1..n
        else:
            seeds = _seed_list(seeds)
        from msaflow.flows.reproduce import reproduce as reproduce_table
        from msaflow.tasks.checks import get_table

        get_table(table)
        # reproduce_table checks preset, params, data, seeds and the tracking store before its
        # flow starts, then runs it.
        prefect_ready()
        result = reproduce_table(
            table,
            data=data,
            seeds=seeds,
            epochs=epochs,
            preset=preset,
            experiment=experiment,
            tracking_uri=tracking_uri,
            max_workers=workers,
            out=_str_path(out),
            scale=scale,
            data_format=data_format,
            train_overrides=dict(train_overrides or {}),
            model_overrides=dict(model_overrides or {}),
            params_file=_str_path(params),
        )
    report = result.get("report") or {}
    return ReproduceResult(
        **RunResult._fields_from(result),
        table=table,
        resumed=bool(result.get("resumed")),
        report_path=Path(report["markdown"]) if report.get("markdown") else None,
        report_html_path=Path(report["html"]) if report.get("html") else None,
        report_error=result.get("report_error"),
        registered=_registered(result),
    )


def tune(
    model: str = "mmafnet",
    data: str | os.PathLike[str] | None = None,
    *,
    trials: int = 20,
    epochs: int | None = None,
    metric: str = "auto",
    variant: str | None = None,
    study: str | None = None,
    storage: str | None = None,
    workers: int = 1,
    timeout: float | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    pruner_warmup: int | None = None,
    space: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    include: Sequence[str] = (),
    preset: str = "quick",
    experiment: str = "msaflow-tune",
    tracking_uri: str | None = None,
    seed: int = 0,
    eval_seeds: Sequence[int] = (1, 2, 3),
    out: str | os.PathLike[str] | None = None,
    data_format: str = "mmsa",
    scale: float = 1.0,
) -> TuneResult:
    """``msaflow tune``: an Optuna study of the model's search space on a validation ``metric``.

    ``trials`` is the study's total of finished trials (a second call with the same ``study``
    resumes it). ``space``: a search-space YAML or its dict (``{param: {low, high, ...}}``). The
    best params go to ``out`` (default ``$MSAFLOW_HOME/studies/<study>/best.yaml``) and are
    evaluated once on test with ``eval_seeds`` (``()`` skips that).
    """
    from msaflow.prefect_server import start_prefect_early

    prefect_ready = start_prefect_early()
    with _named_by_keyword():
        data = _data(data)
        from msaflow.flows.tune import tune as tune_flow
        from msaflow.settings import default_tracking_uri
        from msaflow.tasks.checks import check_tune_inputs
        from msaflow.tasks.tracking import check_tracking

        space_kw: dict[str, Any] = (
            {"space": dict(space)}
            if isinstance(space, Mapping)
            else {"space_file": _str_path(space)}
        )
        options = dict(
            model=model,
            data=data,
            n_trials=trials,
            workers=workers,
            metric=metric,
            sampler=sampler,
            pruner=pruner,
            pruner_options={} if pruner_warmup is None else {"n_warmup_steps": pruner_warmup},
            include=_names(include, "include") or [],
            preset=preset,
            variant=variant,
            epochs=epochs,
            storage=storage,
            scale=scale,
            data_format=data_format,
            **space_kw,
        )
        seeds = _seed_list(eval_seeds, "eval_seeds")
        checked = check_tune_inputs(**options)
    check_tracking(tracking_uri or default_tracking_uri())
    prefect_ready()
    with _named_by_keyword():
        result = tune_flow(
            **options,
            study=study,
            timeout=timeout,
            experiment=experiment,
            tracking_uri=tracking_uri,
            seed=seed,
            eval_seeds=seeds,
            out=_str_path(out),
        )
    evaluation = result.get("evaluation") or {}
    return TuneResult(
        study=result["study"],
        storage=result["storage"],
        metric=result["metric"],
        direction=result["direction"],
        best_value=result.get("best_value"),
        best_params=result.get("best_params"),
        best_path=Path(result["best_path"]) if result.get("best_path") else None,
        counts=dict(result["counts"]),
        finished=int(result["finished"]),
        epochs_spent=int(result["epochs_spent"]),
        trials=_trials(result["study"], checked["storage_url"]),
        evaluation=tuple(RunRow._from(r) for r in evaluation.get("rows", [])),
        evaluation_failures=tuple(Failure._from(f) for f in evaluation.get("failures", [])),
        test=dict(evaluation.get("aggregate", {})),
        failed_workers=len(result.get("failed_workers") or []),
        parent_run_id=result["parent_run_id"],
        experiment_id=result["experiment_id"],
        tracking_uri=result["tracking_uri"],
        dataset=DatasetRef._from(result["dataset"]),
        registered=_registered(result),
    )


def _trials(study: str, storage_url: str) -> tuple[Trial, ...]:
    import optuna

    loaded = optuna.load_study(study_name=study, storage=storage_url)
    return tuple(
        Trial(
            number=t.number,
            state=t.state.name,
            value=t.value,
            params=dict(t.params),
            epochs_run=int(t.user_attrs.get("epochs_run", 0)),
        )
        for t in loaded.get_trials(deepcopy=False)
    )


def load_dataset(
    data: str | os.PathLike[str] | None = None,
    *,
    splits: Sequence[str] | None = None,
    data_format: str = "mmsa",
    scale: float = 1.0,
) -> Dataset:
    """The dataset ``data`` names, as ``run`` would read it: ``sim-<profile>`` is synthesized and a
    ``.pkl`` ingested into ``$MSAFLOW_HOME/stores`` (both cached on content), a ``.csv`` raw-input
    manifest extracted, a store folder read and verified. ``splits`` (default: all) are loaded."""
    with _named_by_keyword():
        data = _data(data)
        from msaflow.feature_store import load_dataset as load_store
        from msaflow.feature_store import read_manifest
        from msaflow.flows.errors import quiet_user_errors
        from msaflow.tasks.prepare import check_data, resolve_source

        quiet_user_errors()  # a raw manifest's extraction runs tasks: their user errors stay short
        check_data(data, scale, data_format)
        # The flows' own resolution (the plain function: no Prefect run for a local store); a raw
        # manifest runs the extraction tasks as the flows do.
        ref = resolve_source(data, scale=scale, data_format=data_format, as_tasks=False)
        names = None if splits is None else _names(splits, "splits") or []
        known = list(read_manifest(ref.path).files)
        if names is not None and (unknown := [s for s in names if s not in known]):
            raise ConfigError(f"splits: {unknown} not in the dataset; expected some of {known}")
        manifest, loaded = load_store(ref.path, names)
    return Dataset(path=Path(ref.path), manifest=manifest, splits=loaded)
