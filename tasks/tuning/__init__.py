"""Optuna tuning, Prefect-free: search space, storage, study, objective and the worker loop.

One study per (model, dataset, metric) lives in an RDB storage (SQLite by default, any SQLAlchemy
URL such as PostgreSQL for workers on several machines). Each worker runs an ordinary optimize loop
until the study holds ``n_trials`` finished (COMPLETE + PRUNED) trials, so ``n_trials`` is the
study's total whatever the number of workers or restarts. A killed worker's RUNNING trial goes stale
(heartbeat), becomes FAIL and is retried once as a WAITING trial with the same params.

Every trial calls ``tasks.train.train_model`` on train/valid only (``evaluate_test=False``), reports
the validation metric each epoch, may be pruned, and is one MLflow child run (``trial-<n>``) of the
study's parent run (``tune/<study>``), written through ``MlflowClient`` with explicit run ids.

The package, by job: ``space`` (the search space), ``study`` (storage, sampler, pruner, the study
and its ``StudySpec``), ``objective`` (a trial, and the worker loop) and ``results`` (best params,
the trial table, plots). Every name is re-exported here: ``import tasks.tuning as tu`` is the way
in.
"""

from __future__ import annotations

from msaflow.tasks.tuning.objective import Objective, SurplusTrial, run_worker
from msaflow.tasks.tuning.results import (
    best_overrides,
    default_best_path,
    epochs_spent,
    finalize_study,
    reconcile_child_runs,
    study_figures,
    trials_table,
    write_best,
)
from msaflow.tasks.tuning.space import (
    OPTIONAL,
    SPACES,
    ParamSpec,
    load_search_space,
    space_from_dict,
    space_to_dict,
    split_params,
    suggest,
    validate_space,
)
from msaflow.tasks.tuning.study import (
    FINISHED,
    StudySpec,
    count_states,
    create_or_load_study,
    default_storage_url,
    load_study,
    make_pruner,
    make_sampler,
    make_storage,
    mask_url,
    metric_direction,
    worker_seed,
)

__all__ = [
    "FINISHED",
    "OPTIONAL",
    "SPACES",
    "Objective",
    "ParamSpec",
    "StudySpec",
    "SurplusTrial",
    "best_overrides",
    "count_states",
    "create_or_load_study",
    "default_best_path",
    "default_storage_url",
    "epochs_spent",
    "finalize_study",
    "load_search_space",
    "load_study",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "mask_url",
    "metric_direction",
    "reconcile_child_runs",
    "run_worker",
    "space_from_dict",
    "space_to_dict",
    "split_params",
    "study_figures",
    "suggest",
    "trials_table",
    "validate_space",
    "worker_seed",
    "write_best",
]
