"""A study's results: the best params (``best.yaml``, and on the parent run with the trial table
and Optuna's plots), and the child runs a killed worker left RUNNING."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from msaflow.atomic import atomic_write
from msaflow.models.spec import ParamSpec
from msaflow.settings import msaflow_home
from msaflow.tasks import tracking as tr
from msaflow.tasks.tuning.space import space_from_dict, split_params
from msaflow.tasks.tuning.study import StudySpec, count_states, load_study, mask_url


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
