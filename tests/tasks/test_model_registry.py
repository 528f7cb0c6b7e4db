"""Choosing and registering the best run: validation only, one version per run, and a registry
that fails costs a warning, never a result. (The flows register for real in
tests/flows/test_reproduce.py and tests/flows/test_tune.py.)"""

from __future__ import annotations

import logging
import math

import pytest
from mlflow.tracking import MlflowClient

from msaflow.tasks import tracking as tr
from msaflow.tasks.model_registry import pick_best, register_best, registered_name


def test_the_name_is_stable_and_has_nothing_mlflow_refuses():
    assert registered_name("reproduce-mmafnet-table2", "mmafnet") == (
        "msaflow-reproduce-mmafnet-table2-mmafnet"
    )
    assert registered_name("my exp/2: x", "tfn") == "msaflow-my-exp-2-x-tfn"


def test_best_is_chosen_on_validation_in_the_metrics_direction():
    rows = [
        {"run_name": "a", "valid/mae": 0.9, "valid/acc7": 0.30, "test/mae": 0.1},
        {"run_name": "b", "valid/mae": 0.7, "valid/acc7": 0.20, "test/mae": 0.9},
        {"run_name": "c", "valid/mae": math.nan, "valid/acc7": 0.40, "test/mae": 0.0},
    ]
    assert pick_best(rows, "valid/mae", "min") == (rows[1], 0.7)  # NaN never wins
    assert pick_best(rows, "valid/acc7", "max") == (rows[2], 0.40)
    tie = [{"run_name": "z", "valid/mae": 0.5}, {"run_name": "y", "valid/mae": 0.5}]
    assert pick_best(tie, "valid/mae", "min")[0]["run_name"] == "y"
    assert pick_best([{"run_name": "a"}], "valid/mae", "min") is None
    with pytest.raises(ValueError, match="validation"):
        pick_best(rows, "test/mae", "min")


def test_a_failing_registration_warns_and_loses_nothing(mlflow_uri, caplog):
    exp = tr.ensure_experiment(mlflow_uri, "reg")
    run_id = tr.start_run(mlflow_uri, exp, "mmafnet/full/seed1")  # no logged model
    tr.log_params(mlflow_uri, run_id, {"train.select_metric": "valid/mae"})
    rows = [
        {"run_id": run_id, "run_name": "mmafnet/full/seed1", "model": "mmafnet", "valid/mae": 1}
    ]
    with caplog.at_level(logging.WARNING, logger="msaflow.registry"):
        done = register_best(mlflow_uri, "reg", rows, kind="reproduce", parent_run_id=run_id)
    assert done == []
    assert "could not register 'msaflow-reg-mmafnet'" in caplog.text
    assert "no logged model" in caplog.text
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "RUNNING", "run untouched"
