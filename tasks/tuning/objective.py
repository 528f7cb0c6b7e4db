"""The objective and the worker loop: a trial is one ``train_model`` call on train/valid and one
MLflow child run; a worker runs trials until the study holds its target count."""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from msaflow.devices import lease_device, on_device, resolve
from msaflow.tasks import tracking as tr
from msaflow.tasks.progress import report as report_progress
from msaflow.tasks.tuning.space import space_from_dict, suggest
from msaflow.tasks.tuning.study import StudySpec, count_states, load_study


class SurplusTrial(RuntimeError):
    """A trial started after the study already had its target count in flight; failed at once."""


class Objective:
    """One trial = one ``train_model`` call on train/valid, one MLflow child run, per-epoch
    reports."""

    def __init__(self, spec: StudySpec, splits: dict[str, Any], log=None) -> None:
        self.spec = spec
        self.splits = splits
        self.space = space_from_dict(spec.space)
        self.mode = "min" if spec.direction == "minimize" else "max"
        self.log = log or report_progress

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
        from msaflow.tasks.config import resolve_run_config
        from msaflow.tasks.train import train_model

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
            # concurrent trials (tune --workers K) each hold their own GPU, as pipeline runs do;
            # a trial is a training run: its CPU, memory (and GPU) figures, as train_run's
            with (
                lease_device(cfg.train.device) as device,
                on_device(device),
                tr.system_metrics(
                    uri,
                    run_id,
                    bool(run_id) and cfg.train.system_metrics,
                    cfg.train.system_metrics_interval,
                ),
            ):
                if run_id is not None:
                    tr.set_tags(uri, run_id, {"msaflow.device": resolve(device)})
                result = train_model(
                    cfg,
                    self.splits,
                    data_kind=spec.data_kind,
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
    from msaflow.feature_store import load_dataset

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
