"""Optuna tuning, Prefect-free: search space, storage, study, objective and the worker loop.

One study per (model, dataset, metric) lives in an RDB storage (SQLite by default, any SQLAlchemy
URL such as PostgreSQL for workers on several machines). Each worker runs an ordinary optimize loop
until the study holds ``n_trials`` finished (COMPLETE + PRUNED) trials, so ``n_trials`` is the
study's total whatever the number of workers or restarts. A killed worker's RUNNING trial goes stale
(heartbeat), becomes FAIL and is retried once as a WAITING trial with the same params.

Every trial calls ``tasks.train.train_model`` on train/valid only (``evaluate_test=False``), reports
the validation metric each epoch, may be pruned, and is one MLflow child run (``trial-<n>``) of the
study's parent run (``tune/<study>``), written through ``MlflowClient`` with explicit run ids.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from models import RegistryView, registry
from models.spec import ParamSpec  # re-exported: the space's type, defined with the models
from msaflow.atomic import atomic_write
from msaflow.settings import msaflow_home
from tasks import tracking as tr
from tasks.config import ConfigError, TrainConfig, read_yaml, short_repr

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# The search spaces live in each model's SPEC (``search_space``: the default parameters;
# ``optional_space``: those ``include=`` adds); these views keep the old per-model mappings.
SPACES: Mapping[str, dict[str, ParamSpec]] = RegistryView(
    lambda: {n: dict(s.search_space) for n, s in registry().items() if s.search_space}
)
OPTIONAL: Mapping[str, dict[str, ParamSpec]] = RegistryView(
    lambda: {n: dict(s.optional_space) for n, s in registry().items() if s.optional_space}
)
_SPEC_KEYS = {f.name for f in fields(ParamSpec)}


class SurplusTrial(RuntimeError):
    """A trial started after the study already had its target count in flight; failed at once."""


def metric_direction(metric: str) -> str:
    """``valid/mae`` -> minimize, ``valid/acc7`` -> maximize. Test metrics are refused."""
    if not metric.startswith("valid/") or len(metric) <= len("valid/"):
        raise ConfigError(
            f"--metric must be a validation metric (valid/...), got {metric!r}: "
            "the test split is never used for tuning"
        )
    name = metric.removeprefix("valid/")
    lower_is_better = ("mae", "loss", "rmse", "mse")
    return (
        "minimize" if any(name == k or name.startswith(k) for k in lower_is_better) else "maximize"
    )


def _model_fields(model: str) -> set[str]:
    from models import get_spec

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
    from models import get_spec

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


# ------------------------------------------------------------------------------------------ storage


def default_storage_url() -> str:
    """``$OPTUNA_STORAGE`` (docker-compose sets it) or ``sqlite:///$MSAFLOW_HOME/optuna.db``."""
    return os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{msaflow_home() / 'optuna.db'}"


def mask_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


def make_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int = 30, max_retry: int = 1
) -> optuna.storages.RDBStorage:
    """An RDB storage whose heartbeat turns a killed worker's RUNNING trial into FAIL, retried
    once."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # Several local processes on one file: wait for the lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
        if url == default_storage_url():
            msaflow_home().mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeat_interval is "experimental"
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            )
    except Exception as exc:  # noqa: BLE001 - any failure here means "this storage cannot be used"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--storage {mask_url(url)!r}: cannot open the Optuna storage "
            f"(expected a SQLAlchemy URL such as sqlite:///path/optuna.db or "
            f"postgresql+psycopg2://user:pass@host/db): {text}"
        ) from exc


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "--sampler cmaes needs the 'cmaes' package (pip install cmaes)"
            ) from exc
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=3, warn_independent_sampling=False
        )
    raise ConfigError(f"--sampler must be tpe, random or cmaes, got {name!r}")


def make_pruner(
    name: str, epochs: int, options: dict[str, Any] | None = None
) -> optuna.pruners.BasePruner:
    """Median/percentile over >= 3 finished trials, pruning from epoch ``epochs // 5`` on (0-based).

    The warm-up scales with the run: 0 for the quick preset's 4 epochs, 10 of the paper's 50. A
    fixed 1-epoch warm-up capped the saving at 4 epochs to 50 % and saved 28 % in
    ``bench/tune_pruning.py``; no warm-up saved 47 % with the same best value (BENCHMARKS.md).
    ``options`` override any of these (``--pruner-warmup`` sets ``n_warmup_steps``).
    """
    options = dict(options or {})
    warmup = max(0, epochs // 5)
    try:
        if name == "median":
            kw = {"n_startup_trials": 3, "n_warmup_steps": warmup, "interval_steps": 1}
            return optuna.pruners.MedianPruner(**{**kw, **options})
        if name == "percentile":
            kw = {"percentile": 33.0, "n_startup_trials": 3, "n_warmup_steps": warmup}
            return optuna.pruners.PercentilePruner(**{**kw, **options})
        if name == "hyperband":
            kw = {"min_resource": 1, "max_resource": max(epochs, 1), "reduction_factor": 3}
            return optuna.pruners.HyperbandPruner(**{**kw, **options})
        if name == "none":
            return optuna.pruners.NopPruner()
    except TypeError as exc:
        raise ConfigError(f"pruner {name!r}: bad options {options}: {exc}") from exc
    raise ConfigError(f"--pruner must be median, percentile, hyperband or none, got {name!r}")


# -------------------------------------------------------------------------------------------- study


@dataclass
class StudySpec:
    """Everything a worker needs, JSON-serialisable (workers may be other processes or machines)."""

    study: str
    storage: str
    model: str
    variant: str
    preset: str
    metric: str
    n_trials: int
    space: dict[str, dict[str, Any]]
    data_path: str
    data_task: str
    input_spec: dict[str, Any]
    class_names: list[str] | None = None
    epochs: int | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    timeout: float | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 1
    poll_seconds: float = 1.0
    dataset_hash: str | None = None  # Manifest.content_hash: part of the study's identity

    @property
    def direction(self) -> str:
        return metric_direction(self.metric)

    def trial_epochs(self) -> int:
        """Epochs each trial trains: ``epochs``, else the preset's (the pruner's warm-up scales with
        it)."""
        if self.epochs is not None:
            return self.epochs
        from tasks.config import resolve_run_config

        return resolve_run_config(
            self.model, self.variant, self.preset, train_overrides=self.train_overrides
        ).train.epochs

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> StudySpec:
        return cls(**json.loads(text))


def _storage(spec: StudySpec) -> optuna.storages.RDBStorage:
    return make_storage(spec.storage, spec.heartbeat_interval, spec.grace_period, spec.max_retry)


def create_or_load_study(spec: StudySpec) -> optuna.Study:
    """Create the study or resume it.

    A study's identity is its model, metric, search space and dataset content hash
    (``Manifest.content_hash``). Resuming with any of them different is a ConfigError naming the
    field: a study is never silently continued on another dataset. (The default study name holds
    the hash, so only an explicit ``--study`` can meet this.) A study from before the hash was
    recorded gets it recorded on its first resume.
    """
    storage = _storage(spec)
    try:
        existing = optuna.load_study(study_name=spec.study, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        attrs = existing.user_attrs
        identity = (
            ("model", spec.model),
            ("metric", spec.metric),
            ("space", spec.space),
            ("dataset_hash", spec.dataset_hash),
        )
        for key, want in identity:
            have = attrs.get(f"msaflow.{key}")
            if have is not None and want is not None and have != want:
                what = (
                    f"dataset content hash {have[:12]} ({attrs.get('msaflow.dataset', '?')}), not "
                    f"{want[:12]} ({spec.data_path})"
                    if key == "dataset_hash"
                    else f"{key}={have!r}, not {want!r}"
                )
                raise ConfigError(
                    f"--study {spec.study!r} in {mask_url(spec.storage)} was created with {what}; "
                    "resume it with the same settings or use a new --study"
                )
        if spec.dataset_hash and attrs.get("msaflow.dataset_hash") is None:
            existing.set_user_attr("msaflow.dataset_hash", spec.dataset_hash)
        return existing
    study = optuna.create_study(
        study_name=spec.study, storage=storage, direction=spec.direction, load_if_exists=True
    )
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(
            f"study {spec.study!r} exists with direction {study.direction.name.lower()}, "
            f"but {spec.metric} needs {spec.direction}"
        )
    for key, value in (
        ("model", spec.model),
        ("metric", spec.metric),
        ("space", spec.space),
        ("dataset", spec.data_path),
        ("dataset_hash", spec.dataset_hash),
        ("preset", spec.preset),
        ("epochs", spec.epochs),
    ):
        study.set_user_attr(f"msaflow.{key}", value)
    return study


def worker_seed(seed: int | None, worker_index: int, n_existing: int) -> int | None:
    """``seed + worker index`` for a fresh study; shifted by the trials already stored on a resume,
    so that a restarted worker does not replay the param sequence of the one it replaces."""
    return None if seed is None else seed + worker_index + 10_007 * n_existing


def load_study(spec: StudySpec, worker_index: int = 0) -> optuna.Study:
    storage = _storage(spec)
    n_existing = len(
        optuna.load_study(study_name=spec.study, storage=storage).get_trials(deepcopy=False)
    )
    return optuna.load_study(
        study_name=spec.study,
        storage=storage,
        sampler=make_sampler(spec.sampler, worker_seed(spec.seed, worker_index, n_existing)),
        pruner=make_pruner(spec.pruner, spec.trial_epochs(), spec.pruner_options),
    )


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


# ---------------------------------------------------------------------------------------- objective


class Objective:
    """One trial = one ``train_model`` call on train/valid, one MLflow child run, per-epoch
    reports."""

    def __init__(self, spec: StudySpec, splits: dict[str, Any], log=None) -> None:
        self.spec = spec
        self.splits = splits
        self.space = space_from_dict(spec.space)
        self.mode = "min" if spec.direction == "minimize" else "max"
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def _guard(self, trial: optuna.Trial) -> None:
        """Refuse a trial beyond the study's target (two workers racing for the last slot)."""
        alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        ahead = sum(
            1
            for t in trial.study.get_trials(deepcopy=False, states=alive)
            if t.number < trial.number
        )
        if ahead >= self.spec.n_trials:
            trial.set_user_attr("msaflow.surplus", True)
            raise SurplusTrial(
                f"trial {trial.number}: the study already has {ahead} trials finished or running"
            )

    def __call__(self, trial: optuna.Trial) -> float:
        from tasks.config import resolve_run_config
        from tasks.train import train_model

        spec = self.spec
        self._guard(trial)
        params = suggest(trial, self.space)
        train_over = {
            **spec.train_overrides,
            **params["train"],
            "select_metric": spec.metric,
            "select_mode": self.mode,
        }
        if spec.epochs is not None:
            train_over["epochs"] = spec.epochs
        cfg = resolve_run_config(
            spec.model,
            spec.variant,
            spec.preset,
            model_overrides=params["model"],
            train_overrides=train_over,
            input_spec=spec.input_spec,
        )
        uri = spec.tracking_uri
        run_id = None
        if uri and spec.experiment_id:
            run_id = tr.start_run(
                uri,
                spec.experiment_id,
                f"trial-{trial.number}",
                parent_run_id=spec.parent_run_id,
                tags={
                    "msaflow.kind": "trial",
                    "optuna.study": spec.study,
                    "optuna.trial_number": str(trial.number),
                    "optuna.state": "RUNNING",
                    "model": spec.model,
                    "variant": cfg.variant,
                    "preset": spec.preset,
                },
            )
            trial.set_user_attr("mlflow_run_id", run_id)
            tr.log_params(uri, run_id, {**trial.params, "trial_number": trial.number})
            tr.log_config(uri, run_id, cfg)
        epochs_run = 0

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            nonlocal epochs_run
            epochs_run = epoch + 1
            if run_id:
                tr.log_metrics(
                    uri,
                    run_id,
                    {
                        k: v
                        for k, v in record.items()
                        if k.startswith("valid/") or k == "train/loss/total"
                    },
                    step=epoch,
                )
            value = record[spec.metric]
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {spec.metric}={value:.4f}")

        def close(state: str, status: str) -> None:
            trial.set_user_attr("epochs_run", epochs_run)
            if run_id:
                tr.set_tags(uri, run_id, {"optuna.state": state})
                tr.log_metrics(uri, run_id, {"epochs_run": epochs_run})
                tr.finish_run(uri, run_id, status)

        try:
            result = train_model(
                cfg,
                self.splits,
                task=spec.data_task,
                class_names=spec.class_names,
                callbacks=[on_epoch],
                evaluate_test=False,
            )
        except optuna.TrialPruned as exc:
            close("PRUNED", "KILLED")
            self.log(
                f"[{spec.study}] trial {trial.number} PRUNED after {epochs_run} epoch(s) ({exc})"
            )
            raise
        except BaseException as exc:
            trial.set_user_attr("epochs_run", epochs_run)
            if run_id:
                tr.set_tags(uri, run_id, {"optuna.state": "FAIL"})
                tr.fail_run(uri, run_id, exc)
            raise
        value = float(result.best_valid[spec.metric])
        trial.set_user_attr("best_epoch", result.best_epoch)
        if run_id:
            tr.log_metrics(uri, run_id, {"objective": value, "best_epoch": result.best_epoch})
        close("COMPLETE", "FINISHED")
        shown = " ".join(f"{k}={v:.4g}" for k, v in trial.params.items())
        self.log(
            f"[{spec.study}] trial {trial.number} COMPLETE {spec.metric}={value:.4f} "
            f"({epochs_run} epochs) {shown}"
        )
        return value


def run_worker(spec: StudySpec, worker_index: int = 0, log=None) -> dict[str, Any]:
    """Run trials until the study has ``spec.n_trials`` finished ones (or ``spec.timeout`` passes).

    Before each trial: stale RUNNING trials (dead workers) are failed and retried; when the
    remaining slots are all in flight elsewhere this worker waits for them (one may still fail).
    """
    from feature_store import load_dataset

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = load_study(spec, worker_index)
    _, splits = load_dataset(spec.data_path, splits=("train", "valid"))
    objective = Objective(spec, splits, log)
    deadline = time.monotonic() + spec.timeout if spec.timeout else None
    ran = 0
    while True:
        optuna.storages.fail_stale_trials(study)
        counts = count_states(study)
        done = counts["COMPLETE"] + counts["PRUNED"]
        if done >= spec.n_trials or (deadline is not None and time.monotonic() >= deadline):
            break
        if done + counts["RUNNING"] >= spec.n_trials and counts["WAITING"] == 0:
            time.sleep(spec.poll_seconds)
            continue
        study.optimize(
            objective, n_trials=1, catch=(FloatingPointError, SurplusTrial), gc_after_trial=False
        )
        ran += 1
    return {"worker": worker_index, "trials_run": ran, **count_states(study)}


# ------------------------------------------------------------------------------------------ results


def epochs_spent(study: optuna.Study) -> int:
    return sum(int(t.user_attrs.get("epochs_run", 0)) for t in study.get_trials(deepcopy=False))


def best_overrides(study: optuna.Study, space: dict[str, ParamSpec]) -> dict[str, dict[str, Any]]:
    best = study.best_trial
    split = split_params(best.params, space)
    return {k: v for k, v in split.items() if v}


def write_best(path: str | Path, study: optuna.Study, spec: StudySpec) -> Path:
    """``{model: {...}, train: {...}}`` as ``msaflow run --params`` reads it; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    best = study.best_trial
    header = (
        f"# best params of Optuna study {spec.study!r} ({spec.model}, {spec.metric}="
        f"{best.value:.6g}, trial {best.number})\n# use: msaflow run --model {spec.model} "
        f"--params {path}\n"
    )
    body = yaml.safe_dump(best_overrides(study, space_from_dict(spec.space)), sort_keys=True)
    atomic_write(path, header + body)
    return path


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.value is not None else float("nan"),
                "epochs_run": t.user_attrs.get("epochs_run", 0),
                "retry_of": t.system_attrs.get("failed_trial", ""),
                **t.params,
            }
        )
    return rows


def study_figures(study: optuna.Study) -> dict[str, Any]:
    """Optuna's matplotlib plots (history, importances, intermediate values), those that apply."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    figures: dict[str, Any] = {}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = [
        ("plots/optimization_history.png", ovm.plot_optimization_history, 1),
        ("plots/intermediate_values.png", ovm.plot_intermediate_values, 1),
        ("plots/param_importances.png", ovm.plot_param_importances, 2),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn, need in plots:
            if len(complete) < need:
                continue
            try:
                ax = fn(study)
            except (
                ValueError,
                RuntimeError,
                ZeroDivisionError,
            ):  # e.g. importances on a degenerate study
                continue
            ax = ax.flat[0] if hasattr(ax, "flat") else ax
            fig = ax.figure
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            figures[name] = fig
    return figures


def reconcile_child_runs(spec: StudySpec, study: optuna.Study) -> None:
    """A killed worker's child run is left RUNNING: mark it FAILED with the trial's final state."""
    if not (spec.tracking_uri and spec.experiment_id and spec.parent_run_id):
        return
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    runs = tr.client(spec.tracking_uri).search_runs(
        [spec.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{spec.parent_run_id}' "
        f"and tags.`msaflow.kind` = 'trial' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        number = int(run.data.tags.get("optuna.trial_number", -1))
        state = states.get(number)
        if state not in (None, "RUNNING", "WAITING"):
            tr.set_tags(spec.tracking_uri, run.info.run_id, {"optuna.state": state})
            tr.finish_run(
                spec.tracking_uri, run.info.run_id, "FAILED" if state == "FAIL" else "FINISHED"
            )


def finalize_study(spec: StudySpec, best_path: str | Path) -> dict[str, Any]:
    """Best params -> best.yaml and the parent run (params ``best.<name>``, plots, trial table)."""
    study = load_study(spec)
    counts = count_states(study)
    summary: dict[str, Any] = {
        "study": spec.study,
        "storage": mask_url(spec.storage),
        "metric": spec.metric,
        "direction": spec.direction,
        "counts": counts,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "epochs_spent": epochs_spent(study),
    }
    reconcile_child_runs(spec, study)
    if counts["COMPLETE"] == 0:
        summary.update(best_value=None, best_params=None, best_path=None)
        return summary
    best = study.best_trial
    path = write_best(best_path, study, spec)
    summary.update(
        best_value=best.value,
        best_trial=best.number,
        best_params=best_overrides(study, space_from_dict(spec.space)),
        best_path=str(path),
    )
    if spec.tracking_uri and spec.parent_run_id:
        uri, run_id = spec.tracking_uri, spec.parent_run_id
        tr.log_params(uri, run_id, {f"best.{k}": v for k, v in best.params.items()})
        tr.log_metrics(
            uri,
            run_id,
            {
                "best_value": best.value,
                "best_trial": best.number,
                "n_complete": counts["COMPLETE"],
                "n_pruned": counts["PRUNED"],
                "n_fail": counts["FAIL"],
                "epochs_spent": summary["epochs_spent"],
            },
            step=summary["finished"],
        )
        tr.set_tags(uri, run_id, {"optuna.best_trial": best.number})
        c = tr.client(uri)
        c.log_artifact(run_id, str(path))
        tr.log_table_artifacts(uri, run_id, trials_table(study), "trials")
        tr.log_figures(uri, run_id, study_figures(study))
    return summary


def default_best_path(study: str) -> Path:
    return msaflow_home() / "studies" / study / "best.yaml"
