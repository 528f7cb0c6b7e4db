"""``msaflow data ingest --task``: MulT's IEMOCAP layout (labels N x 4 x 2) as a 4-class emotion
store."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from msaflow.feature_store import DataError, ingest, load_dataset, read_manifest
from msaflow.feature_store.ingest import MULT_IEMOCAP_CLASSES


def _pairs(classes: np.ndarray) -> np.ndarray:
    """MulT's IEMOCAP labels: (N, 4, 2), [1, 0] for each absent emotion and [0, 1] for the present
    one."""
    out = np.zeros((len(classes), 4, 2), np.float32)
    out[:, :, 0] = 1
    out[np.arange(len(classes)), classes] = [0, 1]
    return out


@pytest.fixture
def iemocap_pickle(tmp_path):
    def make(mutate=None):
        rng = np.random.default_rng(3)
        data, classes = {}, {}
        for s, n in (("train", 12), ("valid", 4), ("test", 5)):
            classes[s] = np.arange(n) % 4
            data[s] = {
                "text": rng.standard_normal((n, 6, 300)).astype(np.float32),
                "audio": rng.standard_normal((n, 6, 5)).astype(np.float32),
                "vision": rng.standard_normal((n, 6, 7)).astype(np.float32),
                "labels": _pairs(classes[s]),
            }  # MulT's IEMOCAP pickle has no ids
        if mutate:
            mutate(data)
        path = tmp_path / "iemocap_data.pkl"
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
        return path, classes

    return make


def test_mult_iemocap_ingests_as_four_class_emotion_like_sim_iemocap(iemocap_pickle, tmp_path):
    from msaflow.feature_store import synthesize

    path, classes = iemocap_pickle()
    m = ingest("mult", path, tmp_path / "store", data_kind="emotion")
    sim = synthesize("iemocap", tmp_path / "sim", seed=0, scale=0.01)
    shape = ("data_kind", "label_kind", "num_classes", "class_names", "label_range")
    assert {k: getattr(m, k) for k in shape} == {k: getattr(sim, k) for k in shape}
    assert m.class_names == ["neutral", "happy", "sad", "angry"] == MULT_IEMOCAP_CLASSES
    _, splits = load_dataset(tmp_path / "store")
    for s, want in classes.items():
        assert splits[s].class_labels.tolist() == want.tolist()
        assert np.array_equal(splits[s].labels, want.astype(np.float32))
    assert (
        ingest("mult", path, tmp_path / "store", data_kind="emotion").content_hash == m.content_hash
    )  # no-op


def test_rows_without_exactly_one_emotion_are_refused_with_counts(iemocap_pickle, tmp_path):
    def two_and_none(data):
        data["train"]["labels"][0, 1] = [0, 1]  # row 0: neutral and happy
        data["train"]["labels"][1, 1] = [1, 0]  # row 1 (was happy): no emotion

    path, _ = iemocap_pickle(two_and_none)
    with pytest.raises(
        DataError,
        match=r"train\.labels: expected exactly one positive emotion per row .*"
        r"1 of 12 rows have none and 1 have several",
    ):
        ingest("mult", path, tmp_path / "store", data_kind="emotion")
    assert not (tmp_path / "store").exists()


def test_wrong_label_shape_and_task_format_mismatch_are_clear(
    iemocap_pickle, mult_pickle, tmp_path
):
    sentiment_path, _ = mult_pickle  # labels (N, 1, 1)
    with pytest.raises(
        DataError, match=r"MulT's IEMOCAP labels, shape \(N=10, 4, 2\).*got \(10, 1, 1\)"
    ):
        ingest("mult", sentiment_path, tmp_path / "a", data_kind="emotion")
    path, _ = iemocap_pickle()
    with pytest.raises(DataError, match="emotion only with --format mult"):
        ingest("mmsa", path, tmp_path / "b", data_kind="emotion")
    with pytest.raises(DataError, match="task: expected one of sentiment, emotion, depression"):
        ingest("mult", path, tmp_path / "c", data_kind="topic")
    with pytest.raises(
        DataError, match="one sentiment score per row"
    ):  # an IEMOCAP file as sentiment
        ingest("mult", path, tmp_path / "d")


def test_depression_task_uses_the_phq_range(mult_pickle, tmp_path):
    path, data = mult_pickle
    with pytest.raises(
        DataError, match=r"labels in \[0.0, 27.0\]"
    ):  # sentiment scores are not PHQ-9
        ingest("mult", path, tmp_path / "s", data_kind="depression")
    for split in data.values():
        split["labels"] = (np.abs(split["labels"]) * 9).astype(np.float32)
    path = tmp_path / "phq.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    m = ingest("mult", path, tmp_path / "store", data_kind="depression")
    assert (m.data_kind, m.label_kind, m.label_range) == ("depression", "regression", (0.0, 27.0))
    assert m.config["task"] == "depression"


def test_cli_ingest_task_emotion_then_unimodal_and_mmcl_train(iemocap_pickle, tmp_path):
    from msaflow.commands.data import app
    from msaflow.tasks.config import resolve_run_config
    from msaflow.tasks.train import train_model

    path, _ = iemocap_pickle()
    out = tmp_path / "iemocap"
    res = CliRunner().invoke(
        app, ["ingest", str(path), "--out", str(out), "--format", "mult", "--task", "emotion"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["task"] == "emotion" and read_manifest(out).num_classes == 4
    res = CliRunner().invoke(
        app,
        [
            "ingest",
            str(path),
            "--out",
            str(tmp_path / "x"),
            "--format",
            "mmsa",
            "--task",
            "emotion",
        ],
    )
    assert (
        res.exit_code == 2
        and "emotion only with --format mult" in res.output
        and "Traceback" not in res.output
    )
    manifest, splits = load_dataset(out)
    for model, variant in (("unimodal", "text"), ("mmcl", "full")):
        cfg = resolve_run_config(
            model,
            variant,
            "quick",
            train_overrides={"epochs": 1, "seed": 1},
            input_spec=manifest.input_spec(),
            data_kind="emotion",
            class_names=manifest.class_names,
        )
        r = train_model(cfg, splits, data_kind="emotion", class_names=manifest.class_names)
        assert {f"test/f1_{c}" for c in MULT_IEMOCAP_CLASSES} <= set(r.test) and np.isfinite(
            r.test["test/f1_avg"]
        )
