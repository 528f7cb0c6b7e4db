"""``--data utterances.csv``: extraction, training and evaluation in one pipeline flow run (issue
15.5).

Real Prefect (test harness), real MLflow (SQLite), real extractors (WAV tones, OpenFace CSVs, the
offline MiniLM text encoder) on a dozen utterances.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from msaflow.feature_store import DataError
from msaflow.flows.pipeline import pipeline
from msaflow.tasks.prepare import check_data, raw_inputs_task, raw_store_dir

EXTRACT_TASKS = {
    "read-extraction-manifest",
    "extract-text",
    "extract-audio",
    "extract-visual",
    "write-feature-store",
}


def write_raw_manifest(workdir: Path, n: int = 12) -> Path:
    """``n`` good utterances (as tests/test_readme.py's ``_raw_manifest``) plus a row with a NaN
    label and a row whose WAV is missing: both are reported and skipped."""
    import soundfile as sf

    from msaflow.feature_store.extract.visual import OPENFACE_COLUMNS

    raw = workdir / "raw"
    raw.mkdir(parents=True)
    rows = ["id,text,audio_path,visual_path,label,split"]
    for i in range(n):
        t = np.arange(8000) / 16000
        sf.write(
            str(raw / f"u{i}.wav"),
            (0.4 * np.sin(2 * np.pi * (150 + 10 * i) * t)).astype(np.float32),
            16000,
        )
        cols = ["frame", "face_id", "timestamp", "confidence", "success", *OPENFACE_COLUMNS]
        lines = [", ".join(cols)] + [
            ", ".join(
                [str(f + 1), "0", f"{f / 30:.3f}", "0.98", "1"]
                + [f"{0.01 * (f + i):.3f}"] * len(OPENFACE_COLUMNS)
            )
            for f in range(15)
        ]
        (raw / f"u{i}.csv").write_text("\n".join(lines) + "\n")
        split = "train" if i < n - 4 else ("valid" if i < n - 2 else "test")
        rows.append(
            f"u{i},this is utterance number {i},raw/u{i}.wav,raw/u{i}.csv,{(i % 7) - 3},{split}"
        )
    rows.append("badlabel,a row with no label,raw/u0.wav,raw/u0.csv,nan,train")
    rows.append("nofile,a row whose audio is missing,raw/gone.wav,raw/u0.csv,1,train")
    path = workdir / "utterances.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _flow_runs() -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:  # the sync client needs an explicit sort
        return {str(r.id): r for r in client.read_flow_runs(sort=FlowRunSort.ID_DESC, limit=200)}


def _new_flow_run(before: dict[str, object]):
    """The one flow run created since ``before``, its flow's name, and its task runs' names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    new = [r for i, r in _flow_runs().items() if i not in before]
    assert len(new) == 1, f"expected one flow run, got {[r.name for r in new]}"
    run = new[0]
    with get_client(sync_client=True) as client:
        flow_name = client.read_flow(run.flow_id).name
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            sort=TaskRunSort.ID_DESC,
            limit=200,
        )
    return run, flow_name, [t.name for t in tasks]


def _ran(expected: set[str], task_names: list[str]) -> bool:
    """Each expected task has a run (Prefect names a task's runs ``<task name>-<suffix>``)."""
    return all(any(n == e or n.startswith(e + "-") for n in task_names) for e in expected)


@pytest.mark.usefixtures("prefect_harness")
def test_raw_manifest_extract_train_evaluate_in_one_flow_run_then_skip(tmp_path, mlflow_uri):
    manifest = write_raw_manifest(tmp_path)
    kwargs = dict(
        data=str(manifest),
        model="mmafnet",
        variants=["full"],
        seeds=[1],
        epochs=1,
        experiment="raw",
        tracking_uri=mlflow_uri,
        train_overrides={"batch_size": 8},
    )
    before = _flow_runs()
    result = pipeline(**kwargs)
    assert not result["failures"]
    run, flow_name, task_names = _new_flow_run(before)
    assert flow_name == "pipeline" and run.state.is_completed() and run.parent_task_run_id is None
    assert _ran(
        EXTRACT_TASKS | {"hash-raw-inputs", "prepare-data", "train", "evaluate", "summarize"},
        task_names,
    ) and not any("features" in n for n in task_names), task_names

    ex = result["dataset"]["extraction"]
    assert (
        not ex["skipped"] and ex["written"] == 12 and ex["failures"] == 2
    )  # the NaN label, the missing WAV
    # 'nofile' has text and a visual file (u0's, so a cache hit) but no WAV
    assert ex["cache"] == {
        "text": {"hits": 0, "misses": 13},
        "audio": {"hits": 0, "misses": 12},
        "vision": {"hits": 1, "misses": 12},
    }
    store = raw_store_dir(manifest)
    assert result["dataset"]["path"] == str(store) and result["dataset"]["source"] == "extract"
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["msaflow.extraction"].startswith("extracted 12 utterances, 2 skipped")
    children = client.search_runs(
        [result["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{result['parent_run_id']}'",
    )
    assert [c.info.run_name for c in children] == ["mmafnet/full/seed1"]
    assert {"test/mae", "test/acc2_non0", "test/acc7"} <= set(children[0].data.metrics)

    # Unchanged files: no extraction task runs, the store is not rewritten, training comes from the
    # cache.
    mtime = (store / "manifest.json").stat().st_mtime_ns
    before = _flow_runs()
    again = pipeline(**kwargs)
    run, flow_name, task_names = _new_flow_run(before)
    assert flow_name == "pipeline" and _ran({"hash-raw-inputs", "train"}, task_names), task_names
    assert not any(n.startswith(e) for e in EXTRACT_TASKS for n in task_names), task_names
    assert again["dataset"]["extraction"]["skipped"] is True
    assert (store / "manifest.json").stat().st_mtime_ns == mtime
    assert again["dataset"]["manifest_hash"] == result["dataset"]["manifest_hash"]
    assert [r["cached"] for r in again["rows"]] == [True]
    assert (
        client.get_run(again["parent_run_id"]).data.tags["msaflow.extraction"]
        == "skipped (inputs unchanged)"
    )


def test_input_hash_follows_file_bytes_not_mtime(tmp_path):
    """The skip is keyed on content: a touched file keeps the hash, a changed WAV or CSV row changes
    it."""
    import os

    manifest = write_raw_manifest(tmp_path, n=4)
    options = {"max_words": 50}
    first = raw_inputs_task.fn(str(manifest), options)
    wav = tmp_path / "raw" / "u1.wav"
    os.utime(wav, (1, 1))
    assert raw_inputs_task.fn(str(manifest), options) == first
    data = bytearray(wav.read_bytes())
    data[-1] ^= 1
    wav.write_bytes(bytes(data))
    changed = raw_inputs_task.fn(str(manifest), options)
    assert changed != first
    manifest.write_text(manifest.read_text().replace("utterance number 2", "utterance number two"))
    assert raw_inputs_task.fn(str(manifest), options) not in (first, changed)
    assert raw_inputs_task.fn(str(manifest), {"max_words": 20}) != raw_inputs_task.fn(
        str(manifest), options
    )


def test_manifest_with_no_usable_row_fails_before_the_flow(tmp_path):
    manifest = write_raw_manifest(tmp_path, n=2)
    lines = manifest.read_text().splitlines()
    bad = [lines[0]] + [ln.replace("raw/u", "raw/missing-u") for ln in lines[1:3]] + lines[3:5]
    manifest.write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError) as info:
        check_data(str(manifest))
    message = str(info.value)
    assert message.startswith(
        f"{manifest}: rows: expected at least one usable utterance; all 4 rows fail"
    )
    assert "\n" not in message and "label" in message
    check_data(str(write_raw_manifest(tmp_path / "ok", n=2)))  # one usable row is enough
