"""``msaflow features text``: any labelled CSV -> a text-only store (sentiment scores or emotion
classes)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from msaflow.commands.features import app
from msaflow.feature_store.extract import DataError
from msaflow.feature_store.extract.text import TableColumns, mosi_transcripts_table, table_manifest

SECRET = "SECRET-CONTENT-42"  # a value in a bad row; no error may quote it

EMO = TableColumns(
    id=("Dialogue_ID", "Utterance_ID"), text="Utterance", label="Emotion", split=None
)


def _meld_like(tmp_path, name: str, rows: list[tuple], extra_cols: bool = True):
    cols = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"]
    df = pd.DataFrame(
        [(i + 1, text, "Joey", emo, "neutral", d, u) for i, (d, u, text, emo) in enumerate(rows)],
        columns=cols,
    )
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.fixture
def meld_like(tmp_path):
    """Three per-split CSVs in MELD's layout; dialogue/utterance numbering restarts in each file."""
    train = _meld_like(
        tmp_path,
        "train.csv",
        [
            (0, 0, "I am so happy", "joy"),
            (0, 1, "This is awful", "anger"),
            (0, 2, "   ", "joy"),
            (1, 0, "Oh wow really", "surprise"),
            (1, 1, "fine", "neutral"),
            (1, 2, "hm okay", SECRET),
        ],
    )
    dev = _meld_like(
        tmp_path, "dev.csv", [(0, 0, "okay then", "neutral"), (0, 1, "get out", "anger")]
    )
    test = _meld_like(
        tmp_path,
        "test.csv",
        [(0, 0, "yay", "joy"), (0, 1, "no way", "surprise"), (0, 2, "leave me", "anger")],
    )
    return {"train": train, "dev": dev, "test": test}


def test_emotion_split_files_classes_ids_and_skipped_rows(meld_like, tmp_path):
    t = table_manifest(
        meld_like,
        tmp_path / "m.csv",
        columns=EMO,
        data_kind="emotion",
        classes=["neutral", "joy", "surprise", "anger"],
    )
    assert (t.data_kind, t.label_kind, t.label_range) == ("emotion", "classification", (0.0, 3.0))
    assert t.class_names == ["neutral", "joy", "surprise", "anger"] and t.rows == {
        "train": 4,
        "valid": 2,
        "test": 3,
    }
    m = pd.read_csv(t.path, dtype={"id": str})
    # ids: columns joined with "_", prefixed by the split (the files restart their numbering)
    assert m["id"].tolist()[:4] == ["train_0_0", "train_0_1", "train_1_0", "train_1_1"]
    assert m.loc[m.split == "valid", "id"].tolist() == ["valid_0_0", "valid_0_1"]
    assert m.loc[m.id == "test_0_2", "label"].item() == 3.0  # anger: index 3 of --classes
    assert [f["id"] for f in t.failures] == ["train_0_2", "train_1_2"]  # empty text, unknown label
    assert (
        "line 4 is empty" in t.failures[0]["error"]
        and "line 7 has a value outside them" in t.failures[1]["error"]
    )
    assert all(SECRET not in f["error"] for f in t.failures)
    # default classes: the names found, sorted (the unknown one is a class then)
    t2 = table_manifest(meld_like, tmp_path / "m2.csv", columns=EMO, data_kind="emotion")
    assert (
        t2.class_names == sorted(["anger", "joy", "neutral", "surprise", SECRET])
        and len(t2.failures) == 1
    )


def test_sentiment_single_csv_bad_labels_splits_and_limit(tmp_path):
    src = tmp_path / "reviews.csv"
    pd.DataFrame(
        {
            "rid": ["a", "b", "c", "d", "e", "f", "g"],
            "body": ["good", "bad", "meh", "great", "awful", "ok", SECRET],
            "score": ["1.5", "nan", "7", "2", "-1", SECRET, "0.5"],
            "fold": ["train", "train", "train", "dev", "test", "test", "holdout"],
        }
    ).to_csv(src, index=False)
    cols = TableColumns(id=("rid",), text="body", label="score", split="fold")
    t = table_manifest(
        src, tmp_path / "m.csv", columns=cols, data_kind="sentiment", label_range=(-3, 3)
    )
    assert t.rows == {"train": 1, "valid": 1, "test": 1} and t.class_names is None
    why = {f["id"]: f["error"] for f in t.failures}
    assert set(why) == {"b", "c", "f", "g"}
    assert "got NaN" in why["b"] and "outside the range" in why["c"] and "not a number" in why["f"]
    assert "train, valid, dev, val or test" in why["g"]
    assert all(SECRET not in e for e in why.values())
    assert table_manifest(src, tmp_path / "m3.csv", columns=cols, limit=3).rows == {
        "train": 1
    }  # first 3 rows


def test_table_errors_name_the_file_and_flag_never_the_contents(tmp_path, meld_like):
    src = tmp_path / "t.csv"
    pd.DataFrame(
        {
            "id": ["x", "y", "x"],
            "text": ["a", "b", "c"],
            "label": [0, 1, 2],
            "split": ["train"] * 3,
            SECRET: [1, 2, 3],
        }
    ).to_csv(src, index=False)
    with pytest.raises(DataError, match=r"line 4 repeats the id of line 2") as e:
        table_manifest(src, tmp_path / "m.csv")
    assert str(src) in str(e.value)
    with pytest.raises(
        DataError, match=r"--text-col: expected a column named 'Utterance' \(the header has 5"
    ) as e:
        table_manifest(src, tmp_path / "m.csv", columns=TableColumns(text="Utterance"))
    assert SECRET not in str(e.value)
    with pytest.raises(DataError, match="--split-files"):
        table_manifest({"training": src}, tmp_path / "m.csv")
    with pytest.raises(DataError, match="class names other than avg, macro, weighted"):
        table_manifest(
            {"train": meld_like["dev"]},
            tmp_path / "m.csv",
            columns=EMO,
            data_kind="emotion",
            classes=["anger", "weighted"],
        )  # f1_weighted would be overwritten by a class's F1
    with pytest.raises(DataError, match="at least two distinct class names"):
        table_manifest(
            {"train": meld_like["dev"]},
            tmp_path / "m.csv",
            columns=EMO,
            data_kind="emotion",
            classes=["anger"],
        )


def test_mosi_table_keeps_the_mosi_ids_and_splits(tmp_path):
    src = tmp_path / "mosi_label.csv"
    pd.DataFrame(
        {
            "video_id": ["v1", "v1", "v2"],
            "clip_id": ["1", "2", "1"],
            "text": ["a b", "", "c"],
            "label": [1.0, 2.0, -0.4],
            "mode": ["train", "valid", "dev"],
        }
    ).to_csv(src, index=False)
    t = mosi_transcripts_table(src, tmp_path / "m.csv")
    m = pd.read_csv(t.path, dtype=str)
    assert m["id"].tolist() == ["v1$_$1", "v2$_$1"] and m["split"].tolist() == ["train", "valid"]
    assert m["video_id"].tolist() == ["v1", "v2"] and [f["id"] for f in t.failures] == ["v1$_$2"]


def test_cli_emotion_store_trains_unimodal_and_mmcl_says_why_not(
    prefect_harness, minilm, meld_like, tmp_path
):
    from msaflow.feature_store import load_dataset, read_manifest
    from msaflow.models.mmcl import MMCL, MMCLConfig
    from msaflow.tasks.config import resolve_run_config
    from msaflow.tasks.train import train_model

    out = tmp_path / "meld-like"
    files = ",".join(f"{k}={v}" for k, v in meld_like.items())
    args = [
        "text",
        "--split-files",
        files,
        "--task",
        "emotion",
        "--id-col",
        "Dialogue_ID,Utterance_ID",
        "--text-col",
        "Utterance",
        "--label-col",
        "Emotion",
        "--classes",
        "neutral,joy,surprise,anger",
        "--video-col",
        "Dialogue_ID",
        "--out",
        str(out),
        "--json",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads(
        res.stdout
    )  # one plain JSON document: the encoder's progress bar is on stderr
    assert result["splits"] == {"train": 4, "valid": 2, "test": 3}
    assert [f["id"] for f in result["failures"]] == ["train_0_2", "train_1_2"]
    assert SECRET not in res.output
    m = read_manifest(out)
    assert (m.data_kind, m.label_kind, m.num_classes) == ("emotion", "classification", 4)
    assert m.class_names == ["neutral", "joy", "surprise", "anger"] and m.label_range == (0.0, 3.0)
    assert m.modalities == {"text": {"dim": 384, "seq_len": 50}} and len(m.config["failures"]) == 2
    manifest, splits = load_dataset(out)
    test = splits["test"]
    by_id = dict(zip(test.ids, test.class_labels, strict=True))
    assert by_id == {"test_0_0": 1, "test_0_1": 2, "test_0_2": 3}
    assert np.array_equal(test.labels, test.class_labels.astype(np.float32))
    assert set(splits["valid"].video_ids) == {"valid_0"}

    # unimodal text trains on it and reports the emotion metrics for all 4 classes
    cfg = resolve_run_config(
        "unimodal",
        "text",
        "quick",
        train_overrides={"epochs": 1, "seed": 1},
        input_spec=manifest.input_spec(),
        data_kind="emotion",
        class_names=manifest.class_names,
    )
    r = train_model(cfg, splits, data_kind="emotion", class_names=manifest.class_names)
    for k in ("acc", "f1_weighted", "acc_avg", "f1_avg", "f1_anger", "acc_neutral"):
        assert np.isfinite(r.test[f"test/{k}"])
    # MMCL pairs every modality with the other two: on a text-only store it refuses, saying what to
    # use
    with pytest.raises(
        ValueError, match="no audio, vision features.*--model unimodal --variants text"
    ):
        MMCL(MMCLConfig(**manifest.input_spec()))

    # --out safety as in features extract; the same store again is replaced in place
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, [*args[:-3], "--out", str(foreign)])
    assert res.exit_code == 2 and "--force" in res.stderr and "Traceback" not in res.output
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_cli_usage_errors_exit_2(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["text", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--csv" in res.output
    res = runner.invoke(
        app, ["text", "--csv", "a.csv", "--task", "topic", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "sentiment, emotion" in res.output
    res = runner.invoke(app, ["text", "--split-files", "train", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "SPLIT=FILE" in res.output
    res = runner.invoke(
        app, ["text", "--csv", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]
    )
    assert (
        res.exit_code == 2
        and "an existing CSV file" in res.stderr
        and not (tmp_path / "o").exists()
    )


@pytest.mark.real_data
def test_real_meld_converts_all_rows_with_seven_emotions(meld_dir, tmp_path):
    files = {s: meld_dir / f"{s}_sent_emo.csv" for s in ("train", "dev", "test")}
    t = table_manifest(files, tmp_path / "m.csv", columns=EMO, data_kind="emotion")
    assert t.rows == {"train": 9989, "valid": 1109, "test": 2610} and not t.failures
    assert t.class_names == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    sent = table_manifest(
        files,
        tmp_path / "s.csv",
        columns=TableColumns(id=EMO.id, text="Utterance", label="Sentiment", split=None),
        data_kind="emotion",
        limit=50,
    )
    assert sent.class_names == ["negative", "neutral", "positive"] and sent.rows == {
        "train": 50,
        "valid": 50,
        "test": 50,
    }
