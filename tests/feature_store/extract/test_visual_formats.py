"""The visual extractor on each real-world facial-file layout, written here to match its documented
format.

OpenFace 2.x column order follows its wiki (Output-Format) and RecorderCSV: frame, face_id,
timestamp, confidence, success, gaze, gaze angles, eye landmarks, pose, 2-D/3-D landmarks, shape
parameters, AU intensities, AU presences; values and names separated by ", ". OpenFace 1.x has no
face_id, no gaze angles and no AU07. iMotions FACET exports are tab-separated with '#' metadata
lines before the header and Timestamp in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msaflow.feature_store.extract import DataError, Utterance
from msaflow.feature_store.extract.visual import (
    AU_COLUMNS,
    FACET_AUS,
    FACET_COLUMNS,
    FACET_EMOTIONS,
    OPENFACE_COLUMNS,
    POSE_COLUMNS,
    VisualConfig,
    extract_visual_batch,
    pool_to_words,
    read_visual_csv,
)

GAZE = [f"gaze_{e}_{a}" for e in (0, 1) for a in "xyz"]
EYE_LMK = [f"eye_lmk_{c}_{i}" for c in "xyXYZ" for i in range(56)]
LMK = [f"{c}_{i}" for c in "xyXYZ" for i in range(68)]
PDM = ["p_scale", "p_rx", "p_ry", "p_rz", "p_tx", "p_ty"] + [f"p_{i}" for i in range(34)]
AU1_R = [
    f"AU{n}_r"
    for n in (
        "01",
        "02",
        "04",
        "05",
        "06",
        "09",
        "10",
        "12",
        "14",
        "15",
        "17",
        "20",
        "23",
        "25",
        "26",
        "45",
    )
]
AU1_C = [
    f"AU{n}_c"
    for n in (
        "01",
        "02",
        "04",
        "05",
        "06",
        "09",
        "10",
        "12",
        "14",
        "15",
        "17",
        "20",
        "23",
        "25",
        "26",
        "28",
        "45",
    )
]

OF2_FULL = (
    ["frame", "face_id", "timestamp", "confidence", "success"]
    + GAZE
    + ["gaze_angle_x", "gaze_angle_y"]
    + EYE_LMK
    + POSE_COLUMNS
    + LMK
    + PDM
    + AU_COLUMNS
)
OF2_AUS = ["frame", "face_id", "timestamp", "confidence", "success"] + AU_COLUMNS
OF2_POSE_AUS = (
    ["frame", "face_id", "timestamp", "confidence", "success"] + POSE_COLUMNS + AU_COLUMNS
)
OF1 = (
    ["frame", "timestamp", "confidence", "success"]
    + GAZE
    + POSE_COLUMNS
    + LMK[:136]
    + AU1_R
    + AU1_C
)


def write_rows(path: Path, columns: list[str], rows: list[dict], sep: str = ", ") -> Path:
    """Every column not in a row's dict gets the row's ``value`` (feature columns) or 0."""
    lines = [sep.join(columns)]
    for r in rows:
        lines.append(sep.join(str(r.get(c, r.get("value", 0))) for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


def frames(n: int, fps: float = 30.0, **extra) -> list[dict]:
    return [
        {
            "frame": i + 1,
            "face_id": 0,
            "timestamp": f"{i / fps:.3f}",
            "confidence": 0.98,
            "success": 1,
            "value": float(i),
            **extra,
        }
        for i in range(n)
    ]


def test_openface2_all_outputs(tmp_path):
    path = write_rows(tmp_path / "full.csv", OF2_FULL, frames(12))
    out = read_visual_csv(path)
    assert str(out["kind"]) == "openface"
    assert out["names"].tolist() == OPENFACE_COLUMNS  # 49: landmarks and p_* are not features
    assert out["features"].shape == (12, 49) and out["features"][5] == pytest.approx(
        np.full(49, 5.0)
    )
    for profile, d in (("openface-aus", 35), ("openface-aus-pose", 41), ("openface-full", 49)):
        assert read_visual_csv(path, VisualConfig(profile))["features"].shape == (12, d)
    assert read_visual_csv(path, VisualConfig("openface-aus"))["names"].tolist() == AU_COLUMNS


def test_openface2_aus_only(tmp_path):
    path = write_rows(tmp_path / "aus.csv", OF2_AUS, frames(6))
    assert read_visual_csv(path)["names"].tolist() == AU_COLUMNS  # -aus: no gaze, no pose
    res = extract_visual_batch(
        [Utterance("a", None, None, None, path, 0.0, "train")],
        VisualConfig("openface-aus-pose"),
        cache_dir=tmp_path / "c",
    )
    assert res["entries"] == {}
    err = res["failures"][0]["error"]
    assert (
        "aus.csv" in err
        and "profile openface-aus-pose" in err
        and "missing 6" in err
        and "pose_Tx" in err
    )


def test_openface2_pose_and_aus(tmp_path):
    out = read_visual_csv(write_rows(tmp_path / "pa.csv", OF2_POSE_AUS, frames(6)))
    assert out["names"].tolist() == POSE_COLUMNS + AU_COLUMNS and out["features"].shape == (6, 41)


def test_face_landmark_vid_multi_keeps_one_face_per_frame(tmp_path):
    rows = []
    for i in range(6):
        t = f"{i / 30:.3f}"
        # face 0: confident, small; face 1: same confidence, larger (p_scale); face 2: less
        # confident
        rows.append(
            {
                "frame": i + 1,
                "face_id": 0,
                "timestamp": t,
                "confidence": 0.9,
                "success": 1,
                "p_scale": 1.0,
                "value": 100.0,
            }
        )
        rows.append(
            {
                "frame": i + 1,
                "face_id": 1,
                "timestamp": t,
                "confidence": 0.9,
                "success": 1,
                "p_scale": 2.5,
                "value": 200.0,
            }
        )
        rows.append(
            {
                "frame": i + 1,
                "face_id": 2,
                "timestamp": t,
                "confidence": 0.5 if i else 0.99,
                "success": 1 if i else 0,
                "p_scale": 9.0,
                "value": 300.0,
            }
        )
    rows.append(
        {
            "frame": 7,
            "face_id": 2,
            "timestamp": "0.200",
            "confidence": 0.99,
            "success": 1,
            "p_scale": 0.5,
            "value": 300.0,
        }
    )  # the most confident face this frame
    out = read_visual_csv(write_rows(tmp_path / "multi.csv", OF2_FULL, rows))
    assert out["features"].shape == (7, 49)  # one row per frame
    assert out["features"][:6, 0].tolist() == [200.0] * 6  # ties -> the larger p_scale;
    assert out["features"][6, 0] == 300.0  # a failed face never wins
    # Without p_scale the 2-D landmark bounding box ranks the faces.
    cols = ["frame", "face_id", "timestamp", "confidence", "success"] + LMK[:136] + AU_COLUMNS
    small = {f"{c}_{k}": (k % 3) for c in "xy" for k in range(68)}
    big = {f"{c}_{k}": 10 * (k % 3) for c in "xy" for k in range(68)}
    rows = [
        {
            "frame": 1,
            "face_id": 0,
            "timestamp": "0.0",
            "confidence": 0.9,
            "success": 1,
            "value": 1.0,
            **big,
        },
        {
            "frame": 1,
            "face_id": 1,
            "timestamp": "0.0",
            "confidence": 0.9,
            "success": 1,
            "value": 2.0,
            **small,
        },
    ]
    out = read_visual_csv(write_rows(tmp_path / "multi_lmk.csv", cols, rows))
    assert out["features"].shape == (1, 35) and out["features"][0, 0] == 1.0


def test_openface1_output(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "face_id"} for r in frames(9)]
    path = write_rows(tmp_path / "of1.csv", OF1, rows)
    out = read_visual_csv(path)
    assert out["names"].tolist() == GAZE + POSE_COLUMNS + AU1_R + AU1_C  # no gaze angles, no AU07
    assert out["features"].shape == (9, 45)
    res = extract_visual_batch(
        [Utterance("o", None, None, None, path, 0.0, "train")],
        VisualConfig("openface-full"),
        cache_dir=tmp_path / "c",
    )
    assert "gaze_angle_x" in res["failures"][0]["error"]  # the profile names what is missing


@pytest.mark.parametrize("sep", [", ", ",", " , "])
def test_header_with_or_without_spaces(tmp_path, sep):
    out = read_visual_csv(write_rows(tmp_path / "s.csv", OF2_POSE_AUS, frames(4), sep=sep))
    assert out["names"].tolist() == POSE_COLUMNS + AU_COLUMNS
    assert out["times"].tolist() == pytest.approx([0, 1 / 30, 2 / 30, 0.1], abs=1e-3)
    assert out["features"][3] == pytest.approx(np.full(41, 3.0))


def test_success_zero_frames_are_masked(tmp_path):
    rows = frames(6)
    for r in rows[2:4]:
        r.update(success=0, confidence=0.1, value=0.0)  # OpenFace writes zeros there
    out = read_visual_csv(write_rows(tmp_path / "f.csv", OF2_AUS, rows))
    assert out["valid"].tolist() == [True, True, False, False, True, True]
    words, counts, _ = pool_to_words(out, timings=[("a", 0.0, 0.2), ("b", 0.06, 0.12)])
    assert words[0] == pytest.approx(
        np.full(35, (0 + 1 + 4 + 5) / 4)
    )  # failed frames never averaged in
    assert counts.tolist() == [4, 0] and not words[1].any()


def _imotions(path: Path, n: int = 8, no_face: tuple[int, ...] = (3,), t0: int = 51230) -> Path:
    meta = [
        "#Study name\tmsaflow",
        "#Respondent Name\tR01",
        "#Respondent Gender\tFEMALE",
        "#Export date\t2016-06-10",
        "#iMotions version\t6.1.4617.0",
    ]
    cols = (
        [
            "StudyName",
            "Name",
            "Timestamp",
            "MediaTime",
            "FrameNo",
            "FrameTime",
            "NoOfFaces",
            "FaceRect X",
            "FaceRect Y",
            "FaceRect Width",
            "FaceRect Height",
        ]
        + [c for e in FACET_EMOTIONS for c in (f"{e} Evidence", f"{e} Intensity")]
        + [f"AU{n} Evidence" for n in FACET_AUS]
        + ["Yaw Degrees", "Pitch Degrees", "Roll Degrees"]
    )
    lines = meta + ["\t".join(cols)]
    for i in range(n):
        feat = (
            [""] * (len(cols) - 11 - 3)
            if i in no_face
            else [f"{0.5 * i:.2f}"] * (len(cols) - 11 - 3)
        )
        faces = "0" if i in no_face else "1"
        lines.append(
            "\t".join(
                [
                    "msaflow",
                    "R01",
                    str(t0 + 33 * i),
                    str(33 * i),
                    str(i),
                    f"10:00:{i:02d}.000",
                    faces,
                    "120",
                    "80",
                    "200",
                    "200",
                ]
                + feat
                + ["1.5", "-2", "0.3"]
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_imotions_facet_export(tmp_path):
    out = read_visual_csv(_imotions(tmp_path / "facet.txt"))
    assert str(out["kind"]) == "facet"
    names = out["names"].tolist()
    assert names[:32] == FACET_COLUMNS and names[32:] == [f"{e} Intensity" for e in FACET_EMOTIONS]
    assert out["times"].tolist() == pytest.approx(
        [0.033 * i for i in range(8)]
    )  # ms, from the first row
    assert out["valid"].tolist() == [i != 3 for i in range(8)]  # NoOfFaces 0 / empty cells
    assert out["features"][2] == pytest.approx(np.full(44, 1.0))
    prof = read_visual_csv(tmp_path / "facet.txt", VisualConfig("facet"))
    assert prof["names"].tolist() == FACET_COLUMNS and prof["features"].shape == (8, 32)


def test_manifest_with_different_column_sets_is_an_error(tmp_path):
    full = write_rows(tmp_path / "full.csv", OF2_FULL, frames(4))
    aus = write_rows(tmp_path / "aus.csv", OF2_AUS, frames(4))
    utts = [
        Utterance(f"u{i}", None, None, None, p, 0.0, "train")
        for i, p in enumerate([full, full, aus])
    ]
    with pytest.raises(DataError) as info:
        extract_visual_batch(utts, cache_dir=tmp_path / "c")
    msg = str(info.value)
    assert str(aus) in msg and str(full) in msg  # names two files
    assert (
        "lacks 14: gaze_0_x..gaze_angle_y (8), pose_Tx..pose_Rz (6)" in msg
    )  # and the columns that differ
    assert "--visual-profile openface-aus" in msg and "\n" not in msg
    res = extract_visual_batch(utts, VisualConfig("openface-aus"), cache_dir=tmp_path / "c")
    assert (
        len(res["entries"]) == 3 and res["feature_names"] == AU_COLUMNS
    )  # a profile takes the subset
    assert res["manifest_config"]["profile"] == "openface-aus"
    facet = _imotions(tmp_path / "f.txt")
    with pytest.raises(DataError, match="it is a facet file, .*full.csv is an openface file"):
        extract_visual_batch(
            utts[:2] + [Utterance("f", None, None, None, facet, 0.0, "train")],
            cache_dir=tmp_path / "c",
        )


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="openface-aus-pose"):
        VisualConfig("openface-everything")
    assert VisualConfig(kind="openface").profile == "openface-full"  # the old --visual-kind values
    assert (
        VisualConfig(kind="auto").profile == "auto"
        and VisualConfig(kind="facet").profile == "facet"
    )
