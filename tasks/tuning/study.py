"""The study: the metric's direction, the storage (an RDB whose heartbeat fails a dead worker's
trial), the sampler and pruner, the ``StudySpec`` every worker gets, and creating, resuming and
loading the study under its identity checks."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from msaflow.settings import msaflow_home
from msaflow.tasks.config import ConfigError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
    data_kind: str
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
        from msaflow.tasks.config import resolve_run_config

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
