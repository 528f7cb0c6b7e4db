"""Never delete what msaflow did not write; refuse leaking, non-finite and escaping stores.

Every refusal is checked the same way: exit code 2, one stderr line naming the file and the field,
no traceback, and the folder (and its parent) byte-for-byte as before.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import msaflow.feature_store.datatypes as datatypes
import msaflow.feature_store.schema as schema
from msaflow.commands.data import app
from msaflow.feature_store import (
    DataError,
    SplitData,
    load_split,
    read_manifest,
    validate_dataset,
    write_dataset,
)
from msaflow.feature_store.schema import clean_stale_temporaries

runner = CliRunner()


def _split(n: int = 5, prefix: str = "u", t: int = 3, seed: int = 0) -> SplitData:
    rng = np.random.default_rng(seed)
    return SplitData(
        ids=np.array([f"{prefix}{i}" for i in range(n)]),
        labels=rng.uniform(-3, 3, n).astype(np.float32),
        features={
            "text": rng.standard_normal((n, t, 3)).astype(np.float32),
            "audio": rng.standard_normal((n, t, 2)).astype(np.float32),
        },
        lengths={"text": np.full(n, t), "audio": np.full(n, t)},
    )


def _three() -> dict[str, SplitData]:
    return {
        "train": _split(6, "tr"),
        "valid": _split(3, "va", seed=1),
        "test": _split(3, "te", seed=2),
    }


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (and ``root`` itself) with its bytes: 'nothing written or
    deleted'."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root.parent)): (p.read_bytes() if p.is_file() else None)
        for p in [root, *sorted(root.rglob("*"))]
    }


def _user_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "thesis.tex").write_text("years of work")
    (root / "sub").mkdir()
    (root / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return root


def _refused(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# --------------------------------------------------------------------------------------------------
# --out never destroys a user's folder
# --------------------------------------------------------------------------------------------------
def test_synth_refuses_a_user_folder(tmp_path):
    user = _user_folder(tmp_path / "user")
    before, parent = _tree(user), sorted(os.listdir(tmp_path))
    res = runner.invoke(app, ["synth", "--profile", "mosi", "--scale", "0.02", "--out", str(user)])
    _refused(res, str(user), "out", "--force", "fresh path")
    assert _tree(user) == before and sorted(os.listdir(tmp_path)) == parent


def test_ingest_refuses_the_folder_holding_its_source(tmp_path, mult_pickle):
    path, _ = mult_pickle  # the source pickle sits in tmp_path, like the reported case
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "sub").mkdir()
    before = _tree(tmp_path)
    res = runner.invoke(app, ["ingest", str(path), "--format", "mult", "--out", str(tmp_path)])
    _refused(res, str(tmp_path), "out", "--force")
    assert _tree(tmp_path) == before


def test_force_adds_the_store_beside_user_files_and_replacing_keeps_them(tmp_path):
    user = _user_folder(tmp_path / "user")
    before = _tree(user)
    with pytest.raises(DataError, match="--force"):
        write_dataset(user, _three(), name="x", source="unit")
    write_dataset(user, _three(), name="first", source="unit", force=True)
    assert {k: v for k, v in _tree(user).items() if k in before} == before
    assert read_manifest(user).name == "first"
    # now a store of ours: replaced without --force, the user's files move into the new store
    write_dataset(user, {"train": _split(4, "n")}, name="second", source="unit")
    after = _tree(user)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == [
        "user/manifest.json",
        "user/train.parquet",
    ]  # old splits gone
    assert read_manifest(user).name == "second" and len(load_split(user, "train")) == 4
    assert sorted(os.listdir(tmp_path)) == ["user"]  # no temporaries or .old left


def test_synth_force_cli_keeps_user_files(tmp_path):
    user = _user_folder(tmp_path / "user")
    before = _tree(user)
    res = runner.invoke(
        app, ["synth", "--profile", "mosi", "--scale", "0.02", "--out", str(user), "--force"]
    )
    assert res.exit_code == 0, res.output
    assert {k: v for k, v in _tree(user).items() if k in before} == before
    assert runner.invoke(app, ["validate", str(user)]).exit_code == 0


@pytest.mark.parametrize(
    "name, content",
    [
        (
            "manifest.json",
            b'{"hello": "not a store"}',
        ),  # a manifest that is not ours is a user file
        ("train.parquet", b"my own parquet"),
    ],
)
def test_force_never_overwrites_a_user_file(tmp_path, name, content):
    user = _user_folder(tmp_path / "user")
    (user / name).write_bytes(content)
    before = _tree(user)
    with pytest.raises(DataError, match="never overwrites") as info:
        write_dataset(user, _three(), name="x", source="unit", force=True)
    assert info.value.path == user and info.value.field == "out" and name in str(info.value)
    assert _tree(user) == before and sorted(os.listdir(tmp_path)) == ["user"]


def test_store_replacement_never_overwrites_an_unlisted_file(tmp_path):
    out = tmp_path / "s"
    write_dataset(out, {"train": _split(4, "a")}, name="old", source="unit")
    (out / "valid.parquet").write_bytes(b"the user's, not listed in the manifest")
    before = _tree(out)
    with pytest.raises(DataError, match="valid.parquet") as info:
        write_dataset(out, _three(), name="new", source="unit", force=True)
    assert info.value.field == "out" and _tree(out) == before


def test_a_file_as_target_is_refused(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    res = runner.invoke(app, ["synth", "--scale", "0.02", "--out", str(target)])
    _refused(res, str(target), "out")
    assert target.read_text() == "keep"


def test_corrupt_manifest_folder_is_not_treated_as_ours(tmp_path):
    user = _user_folder(tmp_path / "user")
    (user / "manifest.json").write_text("{broken")
    before = _tree(user)
    res = runner.invoke(app, ["synth", "--scale", "0.02", "--out", str(user), "--force"])
    _refused(res, str(user), "manifest.json")
    assert _tree(user) == before


# --------------------------------------------------------------------------------------------------
# Temporaries of killed writes
# --------------------------------------------------------------------------------------------------
_KILLED_WRITER = """
import sys, time
import numpy as np
import msaflow.feature_store.parquet_io as s

real = s._write_split
def slow(path, split):
    real(path, split)
    print("written", flush=True)
    time.sleep(120)
s._write_split = slow
n = 5
x = np.random.default_rng(0).standard_normal((n, 2, 3)).astype(np.float32)
split = s.SplitData(ids=np.array([f"k{i}" for i in range(n)]), labels=np.zeros(n, np.float32),
                    features={"text": x}, lengths={"text": np.full(n, 2)})
s.write_dataset(sys.argv[1], {"train": split}, name="killed", source="unit")
"""


def test_sigkill_mid_write_keeps_the_old_store_and_the_next_write_cleans_up(tmp_path):
    out = tmp_path / "s"
    write_dataset(out, {"train": _split(4, "old")}, name="old", source="unit")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(out)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline().strip() == b"written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".s.tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "train.parquet").is_file()
    assert read_manifest(out).name == "old" and len(load_split(out, "train")) == 4  # intact
    (tmp_path / ".s.tmp-mine").mkdir()  # not msaflow's naming: never touched
    write_dataset(out, {"train": _split(5, "new")}, name="new", source="unit")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.tmp-mine", "s"]
    assert read_manifest(out).name == "new"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_cleanup_spares_live_writers_and_user_files(tmp_path):
    out = tmp_path / "s"
    host, pid, tid = schema._writer_tag().rsplit("-", 2)
    live = tmp_path / f".s.tmp-{host}-{pid}-{threading.get_ident()}"  # this very thread: alive
    dead = tmp_path / f".s.tmp-{host}-{_dead_pid()}-1"
    other = tmp_path / f".other.tmp-{host}-{_dead_pid()}-1"  # another target's temporary
    for d in (live, dead, other):
        d.mkdir()
        (d / "train.parquet").write_bytes(b"partial")
    (dead / "thesis.tex").write_text("somebody put this here")
    handled = clean_stale_temporaries(out)
    assert handled == [dead]
    assert (live / "train.parquet").exists() and (other / "train.parquet").exists()
    assert sorted(os.listdir(dead)) == ["thesis.tex"]  # only msaflow's file names were deleted


def test_kill_between_the_renames_puts_the_old_store_back(tmp_path):
    out = tmp_path / "s"
    write_dataset(out, {"train": _split(4)}, name="old", source="unit")
    host = schema._writer_tag().split("-")[0]
    os.replace(out, tmp_path / f".s.old-{host}-{_dead_pid()}-1")  # the state a kill there leaves
    clean_stale_temporaries(out)
    assert read_manifest(out).name == "old" and sorted(os.listdir(tmp_path)) == ["s"]


# --------------------------------------------------------------------------------------------------
# Data checks: duplicate ids, leakage, non-finite features, confined manifest paths
# --------------------------------------------------------------------------------------------------
def test_duplicate_ids_within_a_split_are_an_error(tmp_path):
    s = _split(5)
    s.ids[3] = s.ids[1]
    with pytest.raises(DataError) as info:
        write_dataset(tmp_path / "s", {"train": s}, name="x", source="unit")
    assert (
        info.value.field == "train.id" and "1 ids" in str(info.value) and "'u1'" in str(info.value)
    )
    assert not (tmp_path / "s").exists()


def test_same_id_in_train_and_test_is_leakage(tmp_path):
    splits = _three()
    splits["test"].ids[0] = splits["train"].ids[2]
    with pytest.raises(DataError) as info:
        write_dataset(tmp_path / "s", splits, name="x", source="unit")
    msg = str(info.value)
    assert info.value.field == "test.id" and "leakage" in msg and "train" in msg and "'tr2'" in msg
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("leak", ["within", "across"])
def test_ingest_cli_refuses_duplicate_and_leaking_ids(tmp_path, mmsa_pickle, leak):
    def mutate(d):
        if leak == "within":
            d["train"]["id"][5] = d["train"]["id"][0]
        else:
            d["test"]["id"][1] = d["train"]["id"][0]

    path, _ = mmsa_pickle(mutate=mutate)
    before = _tree(tmp_path)
    res = runner.invoke(app, ["ingest", str(path), "--out", str(tmp_path / "store")])
    _refused(res, "train.id" if leak == "within" else "test.id", "03bSnISJMiM$_$0")
    assert _tree(tmp_path) == before


def test_opt_out_is_recorded_and_honoured_by_validate(tmp_path):
    splits = _three()
    splits["test"].ids[0] = splits["train"].ids[0]
    m = write_dataset(tmp_path / "s", splits, name="x", source="unit", allow_duplicate_ids=True)
    assert m.cleaning["allow_duplicate_ids"] is True
    validate_dataset(tmp_path / "s")
    # without the recorded opt-out, validate finds the leak (parquet checksums are untouched)
    mpath = tmp_path / "s" / "manifest.json"
    d = json.loads(mpath.read_text())
    d["cleaning"] = {}
    mpath.write_text(json.dumps(d))
    res = runner.invoke(app, ["validate", str(tmp_path / "s")])
    _refused(res, str(mpath), "test.id", "leakage", "'tr0'")


@pytest.mark.parametrize(
    "value, kind",
    [(np.nan, "NaN/inf"), (np.inf, "NaN/inf"), (-np.inf, "NaN/inf"), (3e38, "exceed")],
)
def test_validate_finds_non_finite_and_extreme_features(tmp_path, monkeypatch, value, kind):
    out = tmp_path / "s"
    splits = _three()
    splits["valid"].features["audio"][1, 2, 0] = value
    splits["valid"].features["audio"][2, 0, 1] = value
    with monkeypatch.context() as m:  # a store written before this check, or by other tools
        m.setattr(datatypes, "check_finite", lambda *a, **k: None)
        write_dataset(out, splits, name="x", source="unit")
    res = runner.invoke(app, ["validate", str(out)])
    err = _refused(res, str(out / "valid.parquet"), "valid.audio_feat", kind)
    assert ("2 are NaN/inf" if kind == "NaN/inf" else "2 exceed") in err


def test_writing_non_finite_features_is_an_error(tmp_path):
    splits = _three()
    splits["train"].features["text"][0, 0, 0] = np.inf
    with pytest.raises(DataError) as info:
        write_dataset(tmp_path / "s", splits, name="x", source="unit")
    assert info.value.field == "train.text_feat" and "1 are NaN/inf" in str(info.value)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("fname", ["../../x.parquet", "/etc/passwd", "sub/train.parquet", ".."])
def test_manifest_paths_are_confined_to_the_store(tmp_path, fname):
    out = tmp_path / "s"
    write_dataset(out, {"train": _split(4)}, name="x", source="unit")
    (tmp_path / "x.parquet").write_bytes((out / "train.parquet").read_bytes())
    mpath = out / "manifest.json"
    d = json.loads(mpath.read_text())
    d["files"]["train"]["file"] = fname
    mpath.write_text(json.dumps(d))
    with pytest.raises(DataError) as info:
        read_manifest(out)
    assert info.value.path == mpath and info.value.field == "files.train.file"
    for cmd in (["validate", str(out)], ["info", str(out)]):
        _refused(runner.invoke(app, cmd), str(mpath), "files.train.file")


def test_a_symlink_out_of_the_store_is_refused(tmp_path):
    out = tmp_path / "s"
    write_dataset(out, {"train": _split(4)}, name="x", source="unit")
    outside = tmp_path / "elsewhere.parquet"
    os.replace(out / "train.parquet", outside)
    (out / "train.parquet").symlink_to(outside)
    res = runner.invoke(app, ["validate", str(out)])
    _refused(res, str(out / "manifest.json"), "files.train.file")


def test_split_names_cannot_escape_the_store(tmp_path):
    with pytest.raises(DataError, match="plain split names"):
        write_dataset(tmp_path / "s", {"../evil": _split(3)}, name="x", source="unit")
    assert sorted(os.listdir(tmp_path)) == []


# --------------------------------------------------------------------------------------------------
# Output: plain JSON, no markup from user-controlled text
# --------------------------------------------------------------------------------------------------
def test_json_output_round_trips_long_names_with_markup(tmp_path):
    out = tmp_path / ("[bold]long-" + "x" * 90) / "store[/]"
    name = "[bold red]" + "n" * 100 + "[/]"
    m = write_dataset(out, _three(), name=name, source="[link=file:///etc]unit")
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["name"] == name and info["source"] == "[link=file:///etc]unit"
    assert info["content_hash"] == m.content_hash


def test_json_from_synth_and_ingest_is_plain(tmp_path, mult_pickle):
    out = tmp_path / ("[bold]" + "y" * 90)
    res = runner.invoke(app, ["synth", "--scale", "0.02", "--out", str(out)])
    assert res.exit_code == 0 and json.loads(res.stdout)["splits"]["train"] == 26
    path, _ = mult_pickle
    name = "[italic]" + "z" * 100
    res = runner.invoke(
        app, ["ingest", str(path), "--format", "mult", "--out", str(tmp_path / "m"), "--name", name]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["name"] == name and read_manifest(tmp_path / "m").name == name


def test_info_shows_markup_in_a_name_literally(tmp_path):
    write_dataset(tmp_path / "s", {"train": _split(3)}, name="[/]evil", source="[bold]src")
    res = runner.invoke(app, ["info", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "[/]evil" in res.stdout and "[bold]src" in res.stdout
    res = runner.invoke(app, ["validate", str(tmp_path / "s")])
    assert res.exit_code == 0 and "[/]evil" in res.stdout


def test_errors_show_markup_in_paths_on_one_line(tmp_path):
    missing = tmp_path / ("[bold]" + "w" * 120) / "[/]store"
    res = runner.invoke(app, ["info", str(missing)])
    _refused(res, str(missing), "manifest.json")


def test_ingest_name_option_reaches_the_manifest(tmp_path, mmsa_pickle):
    path, _ = mmsa_pickle()
    res = runner.invoke(
        app, ["ingest", str(path), "--out", str(tmp_path / "s"), "--name", "mosi-mine"]
    )
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "s").name == "mosi-mine"


def test_an_empty_folder_is_used_without_force(tmp_path):
    (tmp_path / "empty").mkdir()
    write_dataset(tmp_path / "empty", {"train": _split(3)}, name="x", source="unit")
    assert read_manifest(tmp_path / "empty").name == "x" and sorted(os.listdir(tmp_path)) == [
        "empty"
    ]


def test_ingest_force_keeps_the_source_and_user_files(tmp_path, mult_pickle):
    path, _ = mult_pickle
    (tmp_path / "sub").mkdir()
    before = _tree(tmp_path)
    res = runner.invoke(
        app, ["ingest", str(path), "--format", "mult", "--out", str(tmp_path), "--force"]
    )
    assert res.exit_code == 0, res.output
    assert {k: v for k, v in _tree(tmp_path).items() if k in before} == before
    validate_dataset(tmp_path)
